//! The bad-input catalog: every `tests/bad_inputs/*.case` file is one malformed or hostile
//! input (model.json, .npy, .neff, chip TOML, command line) run through `neuronc` or
//! `neuron-sim` in a fresh directory. Each case asserts the exit code (1 bad input, 2
//! usage, 0 for the inputs that must be accepted), that stderr contains the expected
//! substrings (the file, JSON path, node or tensor at fault), that nothing panicked, that
//! no message prints its cause twice (`X: X`), and that no file other than the declared
//! outputs was created or changed.
//!
//! Case format (written by `scripts/make_bad_inputs.py`): `tool:`, `args:` (split on
//! whitespace), `exit:`, `expect:` lines, `writes:` paths a run may create, then files:
//! `file NAME:` followed by text lines up to `end`; `file NAME: hex HEX`;
//! `file NAME: npy KEY=VALUE...` (a generated .npy: `descr`, `fortran`, `shape`, `data` =
//! zero-byte count, `bytes` = hex data, `header`, `hlen`, `version`); `file NAME: neff-of
//! MODEL [cut=N] [flip=OFFSET] [trail=N]` (MODEL compiled, then damaged); `dir NAME`.
//!
//! `neuronc` is run from the same target directory as `neuron-sim` (`cargo test
//! --workspace` builds both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Case {
    name: String,
    tool: String,
    args: Vec<String>,
    exit: i32,
    expect: Vec<String>,
    writes: Vec<String>,
    files: Vec<(String, FileSpec)>,
}

enum FileSpec {
    Bytes(Vec<u8>),
    Dir,
    Npy(BTreeMap<String, String>),
    NeffOf(String, BTreeMap<String, String>),
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn kv(words: &str) -> BTreeMap<String, String> {
    // Values may hold spaces inside parentheses or quotes: split on " key=".
    let mut out = BTreeMap::new();
    let mut rest = words.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').unwrap();
        let next = after
            .match_indices(' ')
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &after[i + 1..];
                let k = tail.split('=').next().unwrap_or("");
                !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && tail.contains('=')
                    && balanced(&after[..i])
            })
            .unwrap_or(after.len());
        out.insert(key.trim().to_string(), after[..next].to_string());
        rest = after[next..].trim();
    }
    out
}

fn balanced(s: &str) -> bool {
    s.matches('(').count() == s.matches(')').count()
        && s.matches('{').count() == s.matches('}').count()
        && s.matches('\'').count() % 2 == 0
}

fn parse(name: &str, text: &str) -> Case {
    let mut c = Case {
        name: name.to_string(),
        tool: String::new(),
        args: Vec::new(),
        exit: -1,
        expect: Vec::new(),
        writes: Vec::new(),
        files: Vec::new(),
    };
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(v) = line.strip_prefix("tool: ") {
            c.tool = v.to_string();
        } else if let Some(v) = line.strip_prefix("args:") {
            c.args = v.split_whitespace().map(String::from).collect();
        } else if let Some(v) = line.strip_prefix("exit: ") {
            c.exit = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("expect: ") {
            c.expect.push(v.to_string());
        } else if let Some(v) = line.strip_prefix("writes: ") {
            c.writes.push(v.to_string());
        } else if let Some(v) = line.strip_prefix("dir ") {
            c.files.push((v.to_string(), FileSpec::Dir));
        } else if let Some(v) = line.strip_prefix("file ") {
            let (fname, spec) = v.split_once(':').unwrap();
            let spec = spec.trim();
            let file = if spec.is_empty() {
                let mut body = Vec::new();
                for l in lines.by_ref() {
                    if l == "end" {
                        break;
                    }
                    body.push(l);
                }
                FileSpec::Bytes(body.join("\n").into_bytes())
            } else if let Some(h) = spec.strip_prefix("hex") {
                FileSpec::Bytes(hex(h))
            } else if let Some(a) = spec.strip_prefix("npy") {
                FileSpec::Npy(kv(a))
            } else if let Some(a) = spec.strip_prefix("neff-of ") {
                let (model, rest) = a.split_once(' ').unwrap_or((a, ""));
                FileSpec::NeffOf(model.to_string(), kv(rest))
            } else {
                panic!("{name}: unknown file spec '{spec}'");
            };
            c.files.push((fname.to_string(), file));
        } else if !line.trim().is_empty() && !line.starts_with('#') {
            panic!("{name}: unknown line '{line}'");
        }
    }
    assert!(
        !c.tool.is_empty() && c.exit >= 0,
        "{name}: tool and exit are required"
    );
    c
}

fn npy_bytes(spec: &BTreeMap<String, String>) -> Vec<u8> {
    let get = |k: &str, d: &str| spec.get(k).cloned().unwrap_or_else(|| d.to_string());
    let header = spec.get("header").cloned().unwrap_or_else(|| {
        format!(
            "{{'descr': '{}', 'fortran_order': {}, 'shape': {}, }}",
            get("descr", "<f4"),
            get("fortran", "False"),
            get("shape", "(2, 4)")
        )
    });
    let mut header = header.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.push(get("version", "1").parse().unwrap());
    out.push(0);
    let hlen: u16 = spec
        .get("hlen")
        .map_or(header.len() as u16, |v| v.parse().unwrap());
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(&header);
    match spec.get("bytes") {
        Some(h) => out.extend(hex(h)),
        None => out.extend(vec![0u8; get("data", "32").parse().unwrap()]),
    }
    out
}

fn neff_bytes(dir: &Path, model: &str, spec: &BTreeMap<String, String>) -> Vec<u8> {
    let g = neuronc::frontend::load_model(&dir.join(model)).unwrap();
    let c = neuronc::driver::compile(&g, &neuronc::options::CompileOptions::default()).unwrap();
    let mut b = c.artifact.to_bytes().unwrap();
    if let Some(n) = spec.get("cut") {
        let n: i64 = n.parse().unwrap();
        let keep = if n >= 0 { n } else { b.len() as i64 + n };
        b.truncate(keep as usize);
    }
    if let Some(off) = spec.get("flip") {
        let off: usize = off.parse().unwrap();
        b[off] ^= 0xff;
    }
    if let Some(n) = spec.get("trail") {
        b.extend(vec![0u8; n.parse().unwrap()]);
    }
    b
}

/// Every file under `dir` with its bytes (directories as `None`).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// A message that prints its cause twice (`X: X`, or `X: ... X` with the same clause).
fn repeated_cause(stderr: &str) -> Option<String> {
    for line in stderr.lines().filter(|l| l.starts_with("error:")) {
        let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
        for (i, a) in parts.iter().enumerate() {
            if a.len() >= 8 && parts[i + 1..].contains(a) {
                return Some(line.to_string());
            }
        }
    }
    None
}

fn run_case(c: &Case, bin_dir: &Path) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Artifacts last: they are compiled from the case's model files.
    let (neffs, plain): (Vec<_>, Vec<_>) = c
        .files
        .iter()
        .partition(|(_, s)| matches!(s, FileSpec::NeffOf(..)));
    for (name, spec) in plain.into_iter().chain(neffs) {
        let path = dir.join(name);
        match spec {
            FileSpec::Bytes(b) => std::fs::write(&path, b).unwrap(),
            FileSpec::Dir => std::fs::create_dir_all(&path).unwrap(),
            FileSpec::Npy(kv) => std::fs::write(&path, npy_bytes(kv)).unwrap(),
            FileSpec::NeffOf(model, kv) => {
                std::fs::write(&path, neff_bytes(dir, model, kv)).unwrap()
            }
        }
    }
    let before = snapshot(dir);
    let exe = bin_dir.join(format!("{}{}", c.tool, std::env::consts::EXE_SUFFIX));
    let out = Command::new(&exe)
        .args(&c.args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    let mut problems = Vec::new();
    if code != c.exit {
        problems.push(format!("exit {code}, expected {}", c.exit));
    }
    for e in &c.expect {
        if !stderr.contains(e.as_str()) {
            problems.push(format!("stderr lacks '{e}'"));
        }
    }
    if stderr.contains("panicked") {
        problems.push("panicked".into());
    }
    if let Some(line) = repeated_cause(&stderr) {
        problems.push(format!("message repeats its cause: {line}"));
    }
    let after = snapshot(dir);
    for (path, content) in &before {
        if after.get(path) != Some(content) {
            problems.push(format!("input {} was changed or removed", path.display()));
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        if !c.writes.iter().any(|w| path.starts_with(w)) {
            problems.push(format!(
                "created {} (not a declared output)",
                path.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} ({} {}): {}\n  stderr: {}",
            c.name,
            c.tool,
            c.args.join(" "),
            problems.join("; "),
            stderr.trim().replace('\n', "\n          ")
        ))
    }
}

#[test]
fn bad_input_catalog() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_inputs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    files.sort();
    let cases: Vec<Case> = files
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            parse(&name, &std::fs::read_to_string(p).unwrap())
        })
        .collect();
    assert!(cases.len() >= 150, "the catalog has {} cases", cases.len());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_neuron-sim"))
        .parent()
        .unwrap()
        .to_path_buf();
    let neuronc = bin_dir.join(format!("neuronc{}", std::env::consts::EXE_SUFFIX));
    assert!(
        neuronc.exists(),
        "{} is missing: build it first (cargo test --workspace builds it)",
        neuronc.display()
    );
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(c) = cases.get(i) else { break };
                    if let Err(e) = run_case(c, &bin_dir) {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn repeated_causes_are_detected() {
    assert!(repeated_cause("error: cannot read a.npy: No such file: No such file").is_some());
    assert!(repeated_cause("error: invalid model m.json: nodes[0]: unknown op").is_none());
}

fn bin(tool: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_neuron-sim"))
        .parent()
        .unwrap()
        .join(format!("{tool}{}", std::env::consts::EXE_SUFFIX))
}

/// `neuronc check big.json | head -1` and `neuronc disasm a.neff | head -1`: the reader
/// closes the pipe; the tool stops quietly with exit 0 (no panic, no message).
#[test]
fn closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..20_000 {
        let src = if i == 0 {
            "x".to_string()
        } else {
            format!("v{}", i - 1)
        };
        nodes.push(format!(
            r#"{{"name":"n{i}","op":"relu","inputs":["{src}"],"outputs":["v{i}"]}}"#
        ));
    }
    let model = dir.path().join("big.json");
    std::fs::write(
        &model,
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[2,2]}}],"nodes":[{}],"outputs":["v19999"]}}"#,
            nodes.join(",")
        ),
    )
    .unwrap();
    let mut child = Command::new(bin("neuronc"))
        .args(["check", model.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("x"), "{first}");
    // The reader is dropped here: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Every `--help` of both tools has an exit-status section and an example.
#[test]
fn every_help_has_exit_status_and_an_example() {
    for (tool, sub) in [
        ("neuronc", vec![]),
        ("neuronc", vec!["check"]),
        ("neuronc", vec!["run"]),
        ("neuronc", vec!["compile"]),
        ("neuronc", vec!["disasm"]),
        ("neuron-sim", vec![]),
        ("neuron-sim", vec!["run"]),
    ] {
        let out = Command::new(bin(tool))
            .args(&sub)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0));
        assert!(text.contains("Exit status:"), "{tool} {sub:?}: {text}");
        assert!(text.contains("Example"), "{tool} {sub:?}: {text}");
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in {tool} {sub:?} help"
        );
    }
}

/// The compile flags are one definition: the same bad value gets the same error (and exit
/// 2) from both tools.
#[test]
fn same_flag_same_error_in_both_tools() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    std::fs::write(
        &model,
        r#"{"inputs":[{"name":"x","shape":[2,2]}],"nodes":[{"name":"r","op":"relu","inputs":["x"],"outputs":["y"]}],"outputs":["y"]}"#,
    )
    .unwrap();
    let m = model.to_str().unwrap();
    for bad in [
        vec!["--auto-cast", "sometimes"],
        vec!["--auto-cast-type", "fp4"],
        vec!["-O7"],
        vec!["--target", "trn9"],
    ] {
        let a = Command::new(bin("neuronc"))
            .args(["compile", m, "-o"])
            .arg(dir.path().join("o.neff"))
            .args(&bad)
            .output()
            .unwrap();
        let b = Command::new(bin("neuron-sim"))
            .args(["run", m])
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(a.status.code(), Some(2), "{bad:?}");
        assert_eq!(b.status.code(), Some(2), "{bad:?}");
        // The first line (`error: ...`) is the same; clap's usage line names the command.
        let first = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(first(&a), first(&b), "{bad:?}");
    }
}
