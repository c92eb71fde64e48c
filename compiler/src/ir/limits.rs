//! Size limits, checked before anything is allocated.

/// Largest number of elements any single tensor may have: 2^28 (268,435,456).
///
/// That is 1 GiB of f32 and 2 GiB in the f64 reference mode. Shapes are
/// checked with overflow-checked multiplication against this limit when a
/// value is declared or inferred, before any data is allocated.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 28;

/// Largest rank (number of dimensions) a tensor may have.
pub const MAX_RANK: usize = 8;

/// Why a shape was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeLimitError {
    /// More than [`MAX_RANK`] dimensions.
    Rank(usize),
    /// A dimension of size zero (v1 tensors are never empty).
    ZeroDim(usize),
    /// The element count is above [`MAX_TENSOR_ELEMENTS`] (or overflows).
    TooManyElements,
}

impl std::fmt::Display for ShapeLimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeLimitError::Rank(r) => {
                write!(f, "rank {r} is above the limit of {MAX_RANK} dimensions")
            }
            ShapeLimitError::ZeroDim(axis) => {
                write!(f, "dimension {axis} is 0 (tensors may not be empty)")
            }
            ShapeLimitError::TooManyElements => write!(
                f,
                "tensor has more than the limit of {MAX_TENSOR_ELEMENTS} elements"
            ),
        }
    }
}

/// The element count of `shape`, or `None` if the product overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks a shape against [`MAX_RANK`], [`MAX_TENSOR_ELEMENTS`] and the
/// no-empty-tensors rule, returning the element count.
pub fn check_shape(shape: &[usize]) -> Result<usize, ShapeLimitError> {
    if shape.len() > MAX_RANK {
        return Err(ShapeLimitError::Rank(shape.len()));
    }
    if let Some(axis) = shape.iter().position(|&d| d == 0) {
        return Err(ShapeLimitError::ZeroDim(axis));
    }
    match checked_numel(shape) {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(n),
        _ => Err(ShapeLimitError::TooManyElements),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(check_shape(&[]), Ok(1));
        assert_eq!(check_shape(&[2, 3]), Ok(6));
        assert_eq!(check_shape(&[2, 0]), Err(ShapeLimitError::ZeroDim(1)));
        assert_eq!(
            check_shape(&[usize::MAX, 2]),
            Err(ShapeLimitError::TooManyElements)
        );
        assert_eq!(
            check_shape(&[1 << 14, 1 << 15]),
            Err(ShapeLimitError::TooManyElements)
        );
        assert_eq!(check_shape(&[1 << 14, 1 << 14]), Ok(1 << 28));
        assert_eq!(check_shape(&[1; 9]), Err(ShapeLimitError::Rank(9)));
    }
}

/// The host memory available to this process in bytes (`MemAvailable` of
/// `/proc/meminfo`), or `None` where that is unknown (then nothing is refused).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A buffer that cannot fit in the host's memory.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} need {needed} bytes ({:.2} GiB) but only {available} bytes ({:.2} GiB) of host memory are available",
    *needed as f64 / (1u64 << 30) as f64,
    *available as f64 / (1u64 << 30) as f64
)]
pub struct HostMemoryError {
    /// What would be allocated (e.g. `the encoded weights`).
    pub what: String,
    /// Bytes needed.
    pub needed: u64,
    /// Bytes available.
    pub available: u64,
}

/// Refuses, before allocating, `needed` bytes for `what` when they exceed the memory the
/// host has available (see [`available_memory`]).
pub fn check_host_memory(needed: u64, what: &str) -> Result<(), HostMemoryError> {
    check_memory(needed, available_memory(), what)
}

/// [`check_host_memory`] against a given `available` byte count (`None`: unknown, nothing
/// is refused).
pub fn check_memory(
    needed: u64,
    available: Option<u64>,
    what: &str,
) -> Result<(), HostMemoryError> {
    match available {
        Some(available) if needed > available => Err(HostMemoryError {
            what: what.to_string(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}
