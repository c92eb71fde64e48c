use super::backend_harness::*;
#[test]
fn tmp_dump() {
    let g = load_example(&std::env::var("EX").unwrap_or("mlp.json".into()));
    let mut o = Precision::Bf16.options();
    o.dump_dir = Some("/tmp/dump".into());
    let c = neuronc::driver::compile(&g, &o).unwrap();
    eprintln!("{}", c.summary);
}
