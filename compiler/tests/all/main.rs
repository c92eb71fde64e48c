//! The one integration-test binary of `neuronc` (one link instead of many).

mod autodiff;
mod backend_cli;
mod backend_dma;
mod backend_harness;
mod backend_kinds;
mod backend_perf;
mod backend_program;
mod cli;
mod compile_e2e;
mod conv_chip;
mod diff_fuzz;
mod flash_attention;
mod framework_export;
mod fused_vs_unfused;
mod fusion;
mod gather;
mod goldens;
mod model_errors;
mod onnx;
mod onnx_conformance;
mod passes;
mod precision;
mod reference_ops;
mod scale;
mod training;
mod zoo;
