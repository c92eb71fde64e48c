//! The one integration-test binary of `neuronc` (one link instead of many).

mod cli;
mod goldens;
mod model_errors;
mod reference_ops;
mod passes;
mod fusion;
mod backend_harness;
mod compile_e2e;
mod precision;
mod backend_dump_tmp;
