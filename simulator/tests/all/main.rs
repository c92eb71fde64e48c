//! The simulator's integration tests: one binary, one module per area.

mod numerics;
mod exec_dma;
mod exec_helpers;
mod exec_tensor;
mod exec_vector;
mod disasm;
mod prog_builder;
mod races;
mod timing_cost;
mod timing_dma;
mod timing_sync;
mod driver;
mod handwritten;
