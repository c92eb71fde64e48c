//! The runtime of the simulated NeuronCore, in the spirit of the Neuron runtime: load a
//! `.neff`, bind inputs, execute, read outputs, and profile the run.
//!
//! Central types: [`Model`] is a verified [`neuron_isa::Artifact`] (magic, version,
//! checksum, weight ranges, target configuration, kernel indices); [`Bindings`] holds
//! inputs already checked against their declared shape and dtype and encoded as HBM
//! bytes; [`Model::execute`] runs them on [`neuron_sim::Simulator`] and returns an
//! [`Execution`] with the outputs and the run's records ([`neuron_sim::RunStats`]); the
//! [`profile`] module turns those records into `flame.folded`, `flame.svg`, `trace.json`
//! and `summary.json`.
//!
//! Invariants: nothing a user supplies (artifact bytes, `.npy` files, input names) can
//! make the runtime panic, only return a [`RuntimeError`] naming the file, tensor or
//! field; a model is immutable once loaded and can be executed any number of times.
//!
//! ```
//! use ndarray::ArrayD;
//! use neuron_runtime::{Model, RunOptions};
//! # use neuron_isa::*;
//! # use std::collections::BTreeMap;
//! # fn tiny_artifact() -> Artifact {
//! #     // y = relu(x) for x: f32[128, 4], through SBUF.
//! #     let x = Ap::hbm_rows(TensorId(0), Dtype::F32, 0, 128, 4, 4);
//! #     let y = Ap::hbm_rows(TensorId(1), Dtype::F32, 0, 128, 4, 4);
//! #     let sb = |off| Ap::on_chip(Memory::Sbuf, Dtype::F32, 0, 128, off, 4);
//! #     let mut load = Instruction::new(Op::Dma { dst: sb(0), src: x });
//! #     load.signal = vec![SemId(0)];
//! #     let mut act = Instruction::new(Op::Activation {
//! #         dst: sb(16), src: sb(0), func: ActFunc::Relu,
//! #         scale: Operand::Imm(1.0), bias: None, accum: None,
//! #     });
//! #     act.wait = vec![SemWait { sem: SemId(0), count: 1 }];
//! #     act.signal = vec![SemId(1)];
//! #     let mut store = Instruction::new(Op::Dma { dst: y, src: sb(16) });
//! #     store.wait = vec![SemWait { sem: SemId(1), count: 1 }];
//! #     let t = |name: &str, kind| HbmTensor { name: name.into(), kind, shape: vec![128, 4], dtype: Dtype::F32 };
//! #     let program = Program {
//! #         streams: vec![
//! #             Stream { engine: Engine::Dma(0), instrs: vec![load, store] },
//! #             Stream { engine: Engine::Scalar, instrs: vec![act] },
//! #         ],
//! #         semaphores: 2,
//! #         tensors: vec![t("x", TensorKind::Input), t("y", TensorKind::Output)],
//! #         kernels: vec![],
//! #     };
//! #     Artifact { meta: ArtifactMeta {
//! #         model_name: "relu".into(), target: ChipConfig::trn1(), options: BTreeMap::new(),
//! #         batch_size: 1, model_flops: 0, seed: 0, index_bounds: BTreeMap::new(),
//! #         program, weights: vec![], training: None, kernel_estimates_ns: vec![],
//! #     }, blob: Default::default() }
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("relu.neff");
//! # tiny_artifact().write(&path)?;
//! // Load and verify the artifact.
//! let model = Model::load(&path)?;
//! assert_eq!(model.inputs()[0].shape, vec![128, 4]);
//!
//! // Bind every input (or call `generate_missing` to draw them from the seeded generator).
//! let x = ArrayD::from_shape_fn(vec![128, 4], |i| i[1] as f32 - 1.5);
//! let mut inputs = model.bind();
//! inputs.set_input("x", x)?;
//!
//! // Execute on the simulated NeuronCore and read the outputs.
//! let run = model.execute(&inputs, &RunOptions::default())?;
//! let y = run.outputs["y"].as_f32().ok_or("y is not f32")?;
//! assert_eq!(y[[5, 0]], 0.0);
//! assert_eq!(y[[5, 3]], 1.5);
//! println!("simulated latency: {:.3} us", run.stats.total_ns() / 1000.0);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod codec;
pub mod compare;
pub mod error;
pub mod execute;
pub mod host;
pub mod html;
pub mod inputs;
pub mod model;
pub mod npy;
pub mod outputs;
pub mod profile;
pub mod report;

pub use error::RuntimeError;
pub use execute::{Execution, RunOptions};
pub use host::HostTensor;
pub use inputs::{Bindings, seeded_input};
pub use model::{Model, TensorDesc};
pub use neuron_sim::{Rounding, RunStats};
pub use outputs::{sanitize_name, write_outputs};
pub use profile::summary::Summary;
pub use profile::{ProfileFiles, write_profile};
pub use report::Report;
