//! int8 quantization: symmetric per-output-channel weights ([`weights`]) and per-tensor
//! activation scales from a calibration run ([`calibrate`]).
//!
//! Symmetric means no zero point: `real = q * scale` with `q` in `[-127, 127]` and
//! `scale = max|x| / 127`, so the int32 accumulation of a matmul is dequantized by one
//! multiply per output (activation scale times the output channel's weight scale), which
//! folds into the ScalarE activation that evicts PSUM.

pub mod calibrate;
pub mod weights;

pub use calibrate::{activation_scales, calibration_inputs};
pub use weights::{QuantizedWeight, quantize_symmetric, quantize_symmetric_axis};
