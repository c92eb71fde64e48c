//! Conventions shared by the host-side tools (`neuronc run --reference` and `neuron-sim
//! run`), so both draw the same inputs and write the same files.

/// Exclusive upper bound of generated integer inputs that feed no gather (whose bound would
/// be the table's row count, recorded in [`crate::ArtifactMeta::index_bounds`]).
pub const INT_INPUT_RANGE: u64 = 8;

/// The file name stem for a value name: characters outside `[A-Za-z0-9._-]` become `_`.
pub fn sanitize_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_file_name("a/b:c d.x-1"), "a_b_c_d.x-1");
    }
}
