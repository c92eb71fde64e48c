//! The seed's training example: a 784-512-10 perceptron with a ReLU (MNIST-shaped).
//! Input: `x` `[B, 784]`. Output: `logits` `[B, 10]`.

use super::builder::Builder;
use super::{Resolved, ZooError};
use crate::ir::DType;

/// Builds the MLP.
pub fn build(name: &str, r: &Resolved) -> Result<Builder, ZooError> {
    let mut b = Builder::new(name);
    let x = b.input("x", &[r.batch, 784], DType::F32)?;
    let h = b.linear("fc1", &x, 784, 512, true)?;
    let h = b.op("relu", "relu", &[&h])?;
    let logits = b.linear("fc2", &h, 512, 10, true)?;
    b.output(&logits);
    Ok(b)
}
