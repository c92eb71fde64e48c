//! The simulator's integration tests: one binary, one module per area.

mod deferred;
mod disasm;
mod driver;
mod exec_dma;
mod exec_helpers;
mod exec_tensor;
mod exec_vector;
mod fuzz_artifacts;
mod fuzz_programs;
mod handwritten;
mod numerics;
mod prog_builder;
mod races;
mod timing_cost;
mod timing_dma;
mod timing_sync;
