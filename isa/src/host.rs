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

/// The output-naming rule of both tools: output `names[i]` is written to
/// `<stem>.npy`, where the stem is [`sanitize_file_name`] of the name (`_` for the empty
/// name), and names that sanitize alike get `-2`, `-3`, ... in byte order of the names
/// (so the files do not depend on the order a tool lists its outputs in, and no output
/// overwrites another). The result is in the order of `names`.
pub fn output_file_names<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].as_ref().cmp(names[b].as_ref()));
    let mut used = std::collections::BTreeSet::new();
    let mut files = vec![String::new(); names.len()];
    for i in order {
        let mut stem = sanitize_file_name(names[i].as_ref());
        if stem.is_empty() {
            stem = "_".into();
        }
        let mut candidate = stem.clone();
        let mut n = 2;
        while !used.insert(candidate.clone()) {
            candidate = format!("{stem}-{n}");
            n += 1;
        }
        files[i] = format!("{candidate}.npy");
    }
    files
}

/// Whether `a` and `b` name the same existing file (after resolving `.`, `..` and
/// symbolic links). A path that does not exist yet is never an input.
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The "nothing lost" rule of both tools: no output of a run may be written over a file
/// the same run reads (model, weights, `--input`/`--calibrate` arrays, chip TOML). Returns
/// the first (output, input) pair that collides.
pub fn find_clobber<'a>(
    outputs: &'a [std::path::PathBuf],
    inputs: &'a [std::path::PathBuf],
) -> Option<(&'a std::path::Path, &'a std::path::Path)> {
    outputs.iter().find_map(|o| {
        inputs
            .iter()
            .find(|i| same_file(o, i))
            .map(|i| (o.as_path(), i.as_path()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_never_collide() {
        assert_eq!(
            output_file_names(&["a_b", "a/b", "", "x"]),
            ["a_b-2.npy", "a_b.npy", "_.npy", "x.npy"]
        );
    }

    #[test]
    fn clobber_is_found_through_dot_paths() {
        let dir = std::env::temp_dir().join(format!("neuron-isa-clobber-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("p.npy");
        std::fs::write(&input, b"x").unwrap();
        let out = dir.join(".").join("p.npy");
        let fresh = dir.join("q.npy");
        assert!(find_clobber(std::slice::from_ref(&fresh), std::slice::from_ref(&input)).is_none());
        assert!(find_clobber(&[fresh, out], &[input]).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_file_name("a/b:c d.x-1"), "a_b_c_d.x-1");
    }
}
