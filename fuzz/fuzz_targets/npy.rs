//! .npy bytes -> the one .npy reader. Must never panic or allocate more than the file
//! holds; whatever it accepts must write back to bytes it reads identically.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = neuron_isa::npy::parse_npy(data) {
        let bytes = neuron_isa::npy::to_npy_bytes(&a).expect("an array read back must write");
        let b = neuron_isa::npy::parse_npy(&bytes).expect("written bytes must read");
        // NaN payloads compare unequal; compare the bytes of both writes instead.
        assert_eq!(neuron_isa::npy::to_npy_bytes(&b).ok(), Some(bytes));
    }
});
