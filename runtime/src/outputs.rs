//! Writing an execution's outputs as `.npy` files.

use crate::error::RuntimeError;
use crate::execute::Execution;
use crate::npy;
use std::path::{Path, PathBuf};

/// The file stem for output `name`: characters outside `[A-Za-z0-9._-]` become `_`
/// (so a name can never leave the directory), and the empty name becomes `_`.
pub fn sanitize_name(name: &str) -> String {
    // The same rule as `neuronc run --output-dir`, so both tools write the same files.
    let s = neuron_isa::host::sanitize_file_name(name);
    if s.is_empty() { "_".into() } else { s }
}

/// The files [`write_outputs`] writes for `exec` in `dir`, in output order: the shared
/// naming rule [`neuron_isa::host::output_file_names`].
pub fn output_paths(dir: &Path, exec: &Execution) -> Vec<(String, PathBuf)> {
    let names: Vec<&str> = exec.outputs.keys().map(String::as_str).collect();
    let files = neuron_isa::host::output_file_names(&names);
    names
        .iter()
        .zip(files)
        .map(|(n, f)| (n.to_string(), dir.join(f)))
        .collect()
}

/// Writes every output to `dir/<sanitized name>.npy` (creating `dir`) and returns the
/// (output name, file) pairs. Two names that sanitize alike get `-2`, `-3`, ... suffixes
/// in output-name order, so no output overwrites another.
pub fn write_outputs(dir: &Path, exec: &Execution) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("create directory", dir, e))?;
    let written = output_paths(dir, exec);
    for (name, path) in &written {
        npy::write_npy(path, &exec.outputs[name])?;
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
