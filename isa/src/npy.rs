//! The one `.npy` reader and writer of the toolchain (`neuronc` and `neuron-sim` both use
//! it, through their own tensor types).
//!
//! Reading: format versions 1.0, 2.0 and 3.0; element types float32, float64, int8,
//! uint8, int32, int64 and bool, either byte order; C order only (a Fortran-order file is
//! refused with the fix: `np.ascontiguousarray`). Everything the header claims is checked
//! before any element is allocated: the rank (at most [`MAX_NPY_RANK`]), the element count
//! (at most [`MAX_NPY_ELEMENTS`], overflow-checked) and that the data after the header is
//! exactly `count x item size` bytes (a short file is "truncated", a long one has
//! "trailing bytes").
//!
//! Writing: always version 1.0, little-endian, C order (`fortran_order: False`), the header
//! padded to a multiple of 64 bytes as numpy does.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest element count a `.npy` file may claim: 2^28, the compiler's tensor limit.
pub const MAX_NPY_ELEMENTS: usize = 1 << 28;
/// Largest rank a `.npy` file may claim.
pub const MAX_NPY_RANK: usize = 8;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The elements of an array, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// float32 (`<f4`).
    F32(Vec<f32>),
    /// float64 (`<f8`).
    F64(Vec<f64>),
    /// int8 (`|i1`).
    I8(Vec<i8>),
    /// uint8 (`|u1`).
    U8(Vec<u8>),
    /// int32 (`<i4`).
    I32(Vec<i32>),
    /// int64 (`<i8`).
    I64(Vec<i64>),
    /// bool (`|b1`).
    Bool(Vec<bool>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I8(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numpy type descriptor (little-endian).
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I8(_) => "|i1",
            NpyData::U8(_) => "|u1",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
            NpyData::Bool(_) => "|b1",
        }
    }
}

/// A C-order array as stored in a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements, row-major; `data.len()` is the product of `shape`.
    pub data: NpyData,
}

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, read or created.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// `read`, `create` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a supported `.npy` array.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
}

/// Reads a `.npy` file (see the module documentation for what is accepted).
pub fn read_npy(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes).map_err(|message| NpyError::Format {
        path: path.to_path_buf(),
        message,
    })
}

/// Writes `a` as a `.npy` file (version 1.0, little-endian, C order).
pub fn write_npy(path: &Path, a: &NpyArray) -> Result<(), NpyError> {
    let bytes = to_npy_bytes(a).map_err(|message| NpyError::Format {
        path: path.to_path_buf(),
        message,
    })?;
    let mut f = std::fs::File::create(path).map_err(|source| NpyError::Io {
        action: "create",
        path: path.to_path_buf(),
        source,
    })?;
    f.write_all(&bytes).map_err(|source| NpyError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises `a` as `.npy` bytes; refuses an array whose element count is not its
/// shape's product.
pub fn to_npy_bytes(a: &NpyArray) -> Result<Vec<u8>, String> {
    let n = a.shape.iter().try_fold(1usize, |x, &d| x.checked_mul(d));
    if n != Some(a.data.len()) {
        return Err(format!(
            "cannot write: shape {:?} does not hold {} elements",
            a.shape,
            a.data.len()
        ));
    }
    let shape = match a.shape.as_slice() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        a.data.descr()
    );
    // magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    let hlen = u16::try_from(header.len()).map_err(|_| "cannot write: header too long")?;
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &a.data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::U8(v) => out.extend_from_slice(v),
        NpyData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::Bool(v) => v.iter().for_each(|&x| out.push(u8::from(x))),
    }
    Ok(out)
}

/// Parses `.npy` bytes; the error says what is wrong and what was expected.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.is_empty() {
        return Err("empty file: expected a .npy array (which starts with \\x93NUMPY)".into());
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        if MAGIC.starts_with(bytes) {
            return Err(format!(
                "truncated header: the file ends after {} bytes, inside the \\x93NUMPY magic",
                bytes.len()
            ));
        }
        return Err("not a .npy file: it does not start with the \\x93NUMPY magic".into());
    }
    let truncated = |what: &str, need: usize| {
        format!(
            "truncated header: the file has {} bytes, its {what} needs {need}",
            bytes.len()
        )
    };
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err(truncated("version field", 8)),
    };
    let (len_size, utf8) = match major {
        1 => (2usize, false),
        2 => (4, false),
        3 => (4, true),
        _ => {
            return Err(format!(
                "unsupported .npy format version {major}.{minor}: expected 1.0, 2.0 or 3.0"
            ));
        }
    };
    let Some(len_bytes) = bytes.get(8..8 + len_size) else {
        return Err(truncated("header length field", 8 + len_size));
    };
    let hlen = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let start = 8 + len_size;
    let end = start.saturating_add(hlen);
    let Some(header) = bytes.get(start..end) else {
        return Err(format!(
            "truncated header: it claims {hlen} bytes, the file has {} after the length field",
            bytes.len() - start
        ));
    };
    let header = if utf8 {
        std::str::from_utf8(header).map_err(|_| "header is not valid UTF-8".to_string())?
    } else {
        std::str::from_utf8(header)
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or("header is not ASCII (format 1.0/2.0 headers are ASCII)")?
    };
    let dict = parse_header(header)?;
    let (descr, fortran, shape) = dict;
    if fortran {
        return Err(
            "expected a C-order array, found fortran_order: True (save it with np.ascontiguousarray)"
                .into(),
        );
    }
    if shape.len() > MAX_NPY_RANK {
        return Err(format!(
            "shape {shape:?} has rank {}, above the limit of {MAX_NPY_RANK}",
            shape.len()
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |x, &d| x.checked_mul(d))
        .filter(|&n| n <= MAX_NPY_ELEMENTS)
        .ok_or_else(|| {
            format!(
                "shape {shape:?} refused before reading: more than the limit of {MAX_NPY_ELEMENTS} elements"
            )
        })?;
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let big = descr.starts_with('>');
    let size = match code {
        "f4" | "i4" => 4,
        "f8" | "i8" => 8,
        "i1" | "u1" | "b1" => 1,
        _ => {
            return Err(format!(
                "unsupported element type '{descr}': expected float32 (f4), float64 (f8), int8 (i1), uint8 (u1), int32 (i4), int64 (i8) or bool (b1)"
            ));
        }
    };
    let data = &bytes[end..];
    let need = count * size;
    if data.len() < need {
        return Err(format!(
            "truncated data: shape {shape:?} of '{descr}' needs {need} bytes after the header, the file has {}",
            data.len()
        ));
    }
    if data.len() > need {
        return Err(format!(
            "trailing bytes: shape {shape:?} of '{descr}' needs {need} bytes after the header, the file has {} ({} extra)",
            data.len(),
            data.len() - need
        ));
    }
    macro_rules! words {
        ($t:ty, $n:literal) => {
            data.chunks_exact($n)
                .map(|c| {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    if big {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    }
                })
                .collect()
        };
    }
    let data = match code {
        "f4" => NpyData::F32(words!(f32, 4)),
        "f8" => NpyData::F64(words!(f64, 8)),
        "i4" => NpyData::I32(words!(i32, 4)),
        "i8" => NpyData::I64(words!(i64, 8)),
        "i1" => NpyData::I8(data.iter().map(|&b| b as i8).collect()),
        "u1" => NpyData::U8(data.to_vec()),
        _ => {
            if let Some(i) = data.iter().position(|&b| b > 1) {
                return Err(format!(
                    "bool element {i} is the byte {}, expected 0 or 1",
                    data[i]
                ));
            }
            NpyData::Bool(data.iter().map(|&b| b == 1).collect())
        }
    };
    Ok(NpyArray { shape, data })
}

/// Parses the header dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> Result<(String, bool, Vec<usize>), String> {
    let bad = |what: &str| format!("malformed header ({what}): {:?}", text.trim_end());
    let s = text.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| bad("expected a {...} dict"))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or_else(|| bad("expected a quoted key"))?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| bad("expected ':' after a key"))?
            .trim_start();
        let after = match key {
            "descr" => {
                let (v, a) = quoted(after).ok_or_else(|| {
                    bad("'descr' must be a type string such as '<f4' (structured types are not supported)")
                })?;
                descr = Some(v.to_string());
                a
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else {
                    return Err(bad("'fortran_order' must be True or False"));
                }
            }
            "shape" => {
                let body = after
                    .strip_prefix('(')
                    .ok_or_else(|| bad("'shape' must be a tuple"))?;
                let close = body
                    .find(')')
                    .ok_or_else(|| bad("unclosed 'shape' tuple"))?;
                let mut dims = Vec::new();
                for d in body[..close].split(',') {
                    let d = d.trim().trim_end_matches('L');
                    if d.is_empty() {
                        continue;
                    }
                    dims.push(d.parse::<usize>().map_err(|_| {
                        bad(&format!(
                            "shape dimension '{d}' is not a non-negative integer"
                        ))
                    })?);
                }
                shape = Some(dims);
                &body[close + 1..]
            }
            other => return Err(bad(&format!("unknown key '{other}'"))),
        };
        let after = after.trim_start();
        rest = match after.strip_prefix(',') {
            Some(a) => a.trim_start(),
            None if after.is_empty() => after,
            None => return Err(bad("expected ',' between entries")),
        };
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        (None, _, _) => Err(bad("missing 'descr'")),
        (_, None, _) => Err(bad("missing 'fortran_order'")),
        (_, _, None) => Err(bad("missing 'shape'")),
    }
}

/// A leading `'...'` or `"..."` string and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((&body[..end], &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize], data: NpyData) -> NpyArray {
        NpyArray {
            shape: shape.to_vec(),
            data,
        }
    }

    #[test]
    fn round_trips_every_type() {
        for a in [
            arr(&[2, 2], NpyData::F32(vec![1.5, -2.0, 3.0, 4.0])),
            arr(&[1], NpyData::F64(vec![1.5])),
            arr(&[], NpyData::I64(vec![-7])),
            arr(&[2], NpyData::I32(vec![7, -1])),
            arr(&[2], NpyData::I8(vec![7, -1])),
            arr(&[2], NpyData::U8(vec![7, 255])),
            arr(&[1, 2], NpyData::Bool(vec![true, false])),
        ] {
            let b = to_npy_bytes(&a).unwrap();
            // numpy's alignment: data starts on a 64-byte boundary.
            assert_eq!(
                (b.len() - a.data.len() * a.data.descr()[2..].parse::<usize>().unwrap()) % 64,
                0
            );
            assert_eq!(parse_npy(&b).unwrap(), a);
        }
    }

    #[test]
    fn header_claims_are_checked_before_allocation() {
        let hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000000), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
        b.extend_from_slice(hdr.as_bytes());
        let e = parse_npy(&b).unwrap_err();
        assert!(e.contains("refused before reading"), "{e}");
    }

    #[test]
    fn names_each_fault() {
        assert!(parse_npy(b"").unwrap_err().contains("empty file"));
        assert!(
            parse_npy(b"\x93NU")
                .unwrap_err()
                .contains("truncated header")
        );
        assert!(parse_npy(b"PK\x03\x04").unwrap_err().contains("not a .npy"));
        let good = to_npy_bytes(&arr(&[2], NpyData::F32(vec![1.0, 2.0]))).unwrap();
        assert!(
            parse_npy(&good[..20])
                .unwrap_err()
                .contains("truncated header")
        );
        assert!(
            parse_npy(&good[..good.len() - 1])
                .unwrap_err()
                .contains("truncated data")
        );
        let mut long = good.clone();
        long.push(0);
        assert!(parse_npy(&long).unwrap_err().contains("trailing bytes"));
        let fortran = String::from_utf8_lossy(&good).replace("False", "True ");
        assert!(parse_npy(fortran.as_bytes()).is_err());
        let mut f16 = good.clone();
        let pos = f16.windows(3).position(|w| w == b"<f4").unwrap();
        f16[pos + 2] = b'2';
        assert!(
            parse_npy(&f16)
                .unwrap_err()
                .contains("unsupported element type")
        );
    }

    #[test]
    fn reads_big_endian() {
        let hdr = "{'descr': '>i4', 'fortran_order': False, 'shape': (1,), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
        b.extend_from_slice(hdr.as_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        assert_eq!(parse_npy(&b).unwrap().data, NpyData::I32(vec![7]));
    }
}
