//! Chip TOML text -> config parser and validation. Must never panic; accepted configs must
//! validate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = neuron_isa::ChipConfig::from_toml_str(text, "fuzz.toml") {
        assert!(cfg.validate().is_ok());
    }
});
