use super::backend_harness::*;
#[test]
fn tmp_dump() {
    let g = load_example(&std::env::var("EX").unwrap_or("mlp.json".into()));
    let prec = match std::env::var("PREC").as_deref() { Ok("int8") => Precision::Int8, Ok("fp32") => Precision::Fp32, Ok("fp16") => Precision::Fp16, _ => Precision::Bf16 };
    let mut o = prec.options();
    o.fuse = std::env::var("NOFUSE").is_err();
    o.dump_dir = Some("/tmp/dump".into());
    let c = neuronc::driver::compile(&g, &o);
    match c { Ok(c) => eprintln!("{}", c.summary), Err(e) => eprintln!("ERROR {e}") }
    if std::env::var("CHECK").is_ok() { compile_and_check_with(&g, {let mut o = prec.options(); o.fuse = std::env::var("NOFUSE").is_err(); o}, prec); }
}
