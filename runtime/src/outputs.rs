//! Writing an execution's outputs as `.npy` files.

use crate::error::RuntimeError;
use crate::execute::Execution;
use crate::npy;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The file stem for output `name`: characters outside `[A-Za-z0-9._-]` become `_`
/// (so a name can never leave the directory), and the empty name becomes `_`.
pub fn sanitize_name(name: &str) -> String {
    // The same rule as `neuronc run --output-dir`, so both tools write the same files.
    let s = neuron_isa::host::sanitize_file_name(name);
    if s.is_empty() { "_".into() } else { s }
}

/// Writes every output to `dir/<sanitized name>.npy` (creating `dir`) and returns the
/// (output name, file) pairs. Two names that sanitize alike get `-2`, `-3`, ... suffixes
/// in output-name order, so no file is overwritten.
pub fn write_outputs(dir: &Path, exec: &Execution) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("create directory", dir, e))?;
    let mut used = BTreeSet::new();
    let mut written = Vec::new();
    for (name, value) in &exec.outputs {
        let stem = sanitize_name(name);
        let mut candidate = stem.clone();
        let mut n = 2;
        while !used.insert(candidate.clone()) {
            candidate = format!("{stem}-{n}");
            n += 1;
        }
        let path = dir.join(format!("{candidate}.npy"));
        npy::write_npy(&path, value)?;
        written.push((name.clone(), path));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize_name("out/logits:0"), "out_logits_0");
        assert_eq!(sanitize_name("a.b-c_d"), "a.b-c_d");
        assert_eq!(sanitize_name("../x"), ".._x");
        assert_eq!(sanitize_name(""), "_");
        assert_eq!(sanitize_name("é y"), "__y");
    }
}
