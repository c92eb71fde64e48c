//! model.json text -> frontend -> (if valid) compile for trn1. Must never panic: invalid
//! models are errors naming the JSON path or node; valid ones compile or are refused.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = neuronc::frontend::parse_model(text, std::path::Path::new(".")) {
        let _ = neuronc::driver::compile(&g, &neuronc::options::CompileOptions::default());
    }
});
