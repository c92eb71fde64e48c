//! .neff bytes -> artifact reader -> verifier -> timing-only simulation. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(art) = neuron_isa::Artifact::from_bytes(data) else {
        return;
    };
    let cfg = &art.meta.target;
    if cfg.validate().is_err() || neuron_isa::verify_program(&art.meta.program, cfg).is_err() {
        return;
    }
    let opts = neuron_sim::SimOptions {
        timing_only: true,
        ..neuron_sim::SimOptions::default()
    };
    if let Ok(mut sim) = neuron_sim::Simulator::new(&art.meta.program, cfg, opts) {
        let _ = sim.run();
    }
});
