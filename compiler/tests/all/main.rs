//! The one integration-test binary of `neuronc` (one link instead of many).

mod backend_cli;
mod backend_harness;
mod backend_kinds;
mod backend_perf;
mod backend_program;
mod cli;
mod compile_e2e;
mod diff_fuzz;
mod framework_export;
mod fused_vs_unfused;
mod fusion;
mod gather;
mod goldens;
mod model_errors;
mod passes;
mod precision;
mod reference_ops;
