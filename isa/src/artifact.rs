//! The `.neff` artifact: a compiled program with its target, options, weights and metadata.
//!
//! Layout of format version 3 (all integers little-endian; see `docs/artifact-format.md`):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `NEFFSIM\0` |
//! | 8..12 | format version (u32, currently [`FORMAT_VERSION`]) |
//! | 12..16 | header size (u32, 64) |
//! | 16..24 | metadata length M (u64) |
//! | 24..32 | weight blob length W (u64) |
//! | 32..36 | CRC-32 (IEEE) of the M metadata bytes |
//! | 36..40 | CRC-32 (IEEE) of the W weight bytes |
//! | 40..64 | reserved, zero |
//! | 64..64+M | metadata: [`ArtifactMeta`] encoded with postcard |
//! | 64+M..64+M+W | weight blob: raw little-endian tensor data, see [`WeightRange`] |
//!
//! Version 3 added [`ArtifactMeta::training`] (a compiled training step's interface) at the
//! end of the metadata; version 2 (the same header, metadata without that field) and
//! version 1 (one CRC-32 over the M + W bytes at 32..36, 36..64 reserved) are still read.
//! Separate checksums let a reader that needs no weight bytes (a timing-only run) read
//! and verify the header and metadata alone ([`Artifact::read_meta`]). Offsets and
//! lengths are 64-bit: artifacts are not capped at 4 GiB.

use crate::ap::TensorId;
use crate::config::ChipConfig;
use crate::program::Program;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The first 8 bytes of every artifact.
pub const MAGIC: [u8; 8] = *b"NEFFSIM\0";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 3;
/// Size of the fixed header in bytes.
pub const HEADER_SIZE: usize = 64;
/// Largest artifact this build will read (1 TiB): a header claiming more is refused
/// before anything is allocated. (Version 1 readers capped artifacts at 4 GiB.)
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 40;
/// Largest metadata section this build will read (1 GiB).
pub const MAX_META_BYTES: u64 = 1 << 30;

/// Where one weight tensor's bytes sit in the weight blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightRange {
    /// The HBM tensor the bytes initialise.
    pub tensor: TensorId,
    /// Byte offset in the blob.
    pub offset: u64,
    /// Byte length (must equal the tensor's size).
    pub len: u64,
}

impl WeightRange {
    /// Checks that the range lies inside a blob of `blob_len` bytes.
    fn check_in_blob(&self, blob_len: u64) -> Result<(), ArtifactError> {
        let end = self.offset.checked_add(self.len);
        if end.is_none_or(|e| e > blob_len) {
            return Err(ArtifactError::BadWeight {
                tensor: self.tensor,
                message: format!(
                    "bytes {}..{} fall outside the {}-byte blob",
                    self.offset,
                    self.offset.saturating_add(self.len),
                    blob_len
                ),
            });
        }
        Ok(())
    }
}

/// Everything in the artifact except the weight bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    /// The model's name.
    pub model_name: String,
    /// The chip the program was compiled for.
    pub target: ChipConfig,
    /// Compile options as given (e.g. `auto_cast = matmult`), for people and the profiler.
    pub options: BTreeMap<String, String>,
    /// Batch size of the model (for throughput figures).
    pub batch_size: u64,
    /// Model FLOPs of one execution (2 per multiply-add).
    pub model_flops: u64,
    /// The model's seed, for inputs the runtime draws when none are given.
    pub seed: u64,
    /// For integer inputs: exclusive upper bound of valid values (e.g. the row count of the
    /// table an index input gathers from); drawn inputs stay below it.
    pub index_bounds: BTreeMap<String, u64>,
    /// The program.
    pub program: Program,
    /// Weight tensor locations in the blob.
    pub weights: Vec<WeightRange>,
    /// For a compiled training step (`neuronc compile --train`): what a training loop needs
    /// to run it from the artifact alone (format version 3; `None` in older files).
    pub training: Option<TrainingMeta>,
    /// The compiler's predicted time of each kernel in ns, indexed like
    /// `program.kernels` (its tiling cost model's estimate); `None` where the model makes
    /// no prediction (format version 3; empty in older files).
    pub kernel_estimates_ns: Vec<Option<f64>>,
}

/// The metadata of format versions 1 and 2: [`ArtifactMeta`] without `training`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ArtifactMetaV2 {
    model_name: String,
    target: ChipConfig,
    options: BTreeMap<String, String>,
    batch_size: u64,
    model_flops: u64,
    seed: u64,
    index_bounds: BTreeMap<String, u64>,
    program: Program,
    weights: Vec<WeightRange>,
}

impl From<ArtifactMetaV2> for ArtifactMeta {
    fn from(m: ArtifactMetaV2) -> ArtifactMeta {
        ArtifactMeta {
            model_name: m.model_name,
            target: m.target,
            options: m.options,
            batch_size: m.batch_size,
            model_flops: m.model_flops,
            seed: m.seed,
            index_bounds: m.index_bounds,
            program: m.program,
            weights: m.weights,
            training: None,
            kernel_estimates_ns: Vec::new(),
        }
    }
}

/// A byte range of the weight blob that no HBM tensor owns (a training step's initial
/// state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRange {
    /// Byte offset in the blob.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// A named program input or output as the training loop sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoSignature {
    /// The graph value's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its graph dtype, as model.json spells it (`f32`, `i64`, ...).
    pub dtype: String,
}

/// State a training loop carries from one step to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedState {
    /// The input that reads it.
    pub name: String,
    /// The output that writes its next value.
    pub next: String,
    /// A trainable param (else optimizer state).
    pub is_param: bool,
    /// Its shape (the values are f32).
    pub shape: Vec<u64>,
    /// Its value before the first step, little-endian f32 in the blob; `None`: zeros.
    pub initial: Option<BlobRange>,
}

/// A compiled training step's interface: the `training` section, the data, labels and loss
/// output, and the carried state with its initial values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingMeta {
    /// The model.json `training` section, as JSON (the compiler parses it).
    pub spec_json: String,
    /// The inputs the data feeds, in declaration order.
    pub data_inputs: Vec<IoSignature>,
    /// The labels input.
    pub labels: IoSignature,
    /// The output the loss applies to (logits for cross entropy).
    pub output: IoSignature,
    /// Trainable params, then optimizer state.
    pub carried: Vec<CarriedState>,
    /// Number of trainable scalars.
    pub trainable_elements: u64,
    /// Bytes of forward activations kept for the backward pass.
    pub saved_activation_bytes: u64,
}

/// The weight bytes of an artifact: owned (what the compiler produces), or a range of
/// a read-only file map (what [`Artifact::read`] gives: the bytes are read from the page
/// cache on first touch, never copied). Dereferences to `[u8]`; clones share a map.
#[derive(Clone)]
pub struct Blob(BlobRepr);

#[derive(Clone)]
enum BlobRepr {
    Owned(Vec<u8>),
    Mapped {
        map: std::sync::Arc<crate::mmap::Mmap>,
        start: usize,
        len: usize,
    },
}

impl Blob {
    /// Whether the bytes are a file map (as opposed to owned memory).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, BlobRepr::Mapped { .. })
    }

    /// The bytes as an owned, growable vector: a mapped blob is copied out of its map
    /// first (copy on write); an owned one is returned as it is.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if let BlobRepr::Mapped { .. } = self.0 {
            self.0 = BlobRepr::Owned(self.to_vec());
        }
        match &mut self.0 {
            BlobRepr::Owned(v) => v,
            BlobRepr::Mapped { .. } => unreachable!("made owned above"),
        }
    }

    /// Bytes `start .. start + len` of `map`, or `None` if they are not all inside it.
    fn mapped(map: crate::mmap::Mmap, start: usize, len: usize) -> Option<Blob> {
        let end = start.checked_add(len)?;
        (end <= map.len()).then(|| {
            Blob(BlobRepr::Mapped {
                map: std::sync::Arc::new(map),
                start,
                len,
            })
        })
    }
}

impl Default for Blob {
    fn default() -> Blob {
        Blob(BlobRepr::Owned(Vec::new()))
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            BlobRepr::Owned(v) => v,
            // In range: checked by `Blob::mapped`.
            BlobRepr::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(BlobRepr::Owned(v))
    }
}

impl FromIterator<u8> for Blob {
    fn from_iter<I: IntoIterator<Item = u8>>(it: I) -> Blob {
        Blob(BlobRepr::Owned(it.into_iter().collect()))
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "Blob({} bytes, {how})", self.len())
    }
}

/// A loaded or to-be-written artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// Program and metadata.
    pub meta: ArtifactMeta,
    /// Weight bytes, addressed by [`ArtifactMeta::weights`].
    pub blob: Blob,
}

/// Why an artifact could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// I/O failure.
    #[error("cannot {action} artifact {path}: {cause}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// Fewer bytes than the header says.
    #[error("artifact is truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Not an artifact of this toolchain.
    #[error("not a .neff artifact: bad magic {found:02x?} (expected {MAGIC:02x?})")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// Written by a newer toolchain.
    #[error(
        "artifact format version {found} is not supported: this build reads versions 1 to {FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
    },
    /// Header fields are inconsistent or absurd.
    #[error("corrupt artifact header: {0}")]
    BadHeader(String),
    /// Payload does not match its checksum.
    #[error(
        "artifact checksum mismatch: header says {expected:#010x}, payload hashes to {found:#010x} (file corrupted)"
    )]
    Checksum {
        /// Stored CRC.
        expected: u32,
        /// Computed CRC.
        found: u32,
    },
    /// The metadata could not be decoded.
    #[error("cannot decode artifact metadata: {0}")]
    Decode(String),
    /// The metadata could not be encoded.
    #[error("cannot encode artifact metadata: {0}")]
    Encode(String),
    /// A training step's initial-state range is inconsistent.
    #[error("initial value of training state '{state}' is invalid: {message}")]
    BadTraining {
        /// The carried input.
        state: String,
        /// What is wrong.
        message: String,
    },
    /// A weight range falls outside the blob or disagrees with its tensor.
    #[error("weight range for tensor {tensor} is invalid: {message}")]
    BadWeight {
        /// The tensor.
        tensor: TensorId,
        /// What is wrong.
        message: String,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fields of a checked header.
#[derive(Debug, Clone, Copy)]
struct Header {
    version: u32,
    meta_len: u64,
    blob_len: u64,
    /// v1: CRC of metadata and blob together; v2: CRC of the metadata.
    crc_a: u32,
    /// v2: CRC of the blob.
    crc_b: u32,
}

impl Header {
    fn encode(meta_len: u64, blob_len: u64, meta_crc: u32, blob_crc: u32) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[16..24].copy_from_slice(&meta_len.to_le_bytes());
        h[24..32].copy_from_slice(&blob_len.to_le_bytes());
        h[32..36].copy_from_slice(&meta_crc.to_le_bytes());
        h[36..40].copy_from_slice(&blob_crc.to_le_bytes());
        h
    }

    /// Checks the header of a file of `file_len` bytes whose first bytes are `bytes`
    /// (at least the header, unless the file is shorter).
    fn parse(bytes: &[u8], file_len: u64) -> Result<Header, ArtifactError> {
        if bytes.len() < HEADER_SIZE {
            if bytes.len() >= 8 && bytes[..8] != MAGIC {
                return Err(ArtifactError::BadMagic {
                    found: bytes[..8].to_vec(),
                });
            }
            return Err(ArtifactError::Truncated {
                expected: HEADER_SIZE as u64,
                found: bytes.len() as u64,
            });
        }
        if bytes[..8] != MAGIC {
            return Err(ArtifactError::BadMagic {
                found: bytes[..8].to_vec(),
            });
        }
        let version = u32_at(bytes, 8);
        if version == 0 || version > FORMAT_VERSION {
            return Err(ArtifactError::UnsupportedVersion { found: version });
        }
        let header_size = u32_at(bytes, 12);
        if header_size as usize != HEADER_SIZE {
            return Err(ArtifactError::BadHeader(format!(
                "header size expected {HEADER_SIZE}, found {header_size}"
            )));
        }
        let reserved = if version == 1 { 36 } else { 40 };
        if let Some(pos) = bytes[reserved..HEADER_SIZE].iter().position(|&b| b != 0) {
            return Err(ArtifactError::BadHeader(format!(
                "reserved header byte {} is {:#04x}, expected 0",
                reserved + pos,
                bytes[reserved + pos]
            )));
        }
        let meta_len = u64_at(bytes, 16);
        let blob_len = u64_at(bytes, 24);
        let (limit, what) = if version == 1 {
            (4u64 << 30, "the version 1 limit of 4 GiB")
        } else {
            (MAX_ARTIFACT_BYTES, "the 1 TiB limit")
        };
        let total = (HEADER_SIZE as u64)
            .checked_add(meta_len)
            .and_then(|t| t.checked_add(blob_len))
            .filter(|t| *t <= limit)
            .ok_or_else(|| {
                ArtifactError::BadHeader(format!(
                    "metadata length {meta_len} + weight length {blob_len} exceeds {what} ({limit} bytes)"
                ))
            })?;
        if meta_len > MAX_META_BYTES {
            return Err(ArtifactError::BadHeader(format!(
                "metadata length {meta_len} exceeds the {MAX_META_BYTES}-byte limit"
            )));
        }
        if file_len < total {
            return Err(ArtifactError::Truncated {
                expected: total,
                found: file_len,
            });
        }
        if file_len > total {
            return Err(ArtifactError::BadHeader(format!(
                "file has {} bytes after the payload (expected {total} bytes in all)",
                file_len - total
            )));
        }
        Ok(Header {
            version,
            meta_len,
            blob_len,
            crc_a: u32_at(bytes, 32),
            crc_b: u32_at(bytes, 36),
        })
    }
}

fn check_crc(expected: u32, found: u32) -> Result<(), ArtifactError> {
    if expected == found {
        Ok(())
    } else {
        Err(ArtifactError::Checksum { expected, found })
    }
}

/// Decodes the metadata of a file of format `version`; every byte must be used (so a
/// version field flipped between 2 and 3 cannot go unnoticed).
fn decode_meta(version: u32, bytes: &[u8]) -> Result<ArtifactMeta, ArtifactError> {
    let err = |e: postcard::Error| ArtifactError::Decode(e.to_string());
    let (meta, rest) = if version < 3 {
        let (m, rest) = postcard::take_from_bytes::<ArtifactMetaV2>(bytes).map_err(err)?;
        (ArtifactMeta::from(m), rest)
    } else {
        postcard::take_from_bytes::<ArtifactMeta>(bytes).map_err(err)?
    };
    if !rest.is_empty() {
        return Err(ArtifactError::Decode(format!(
            "{} bytes after the end of the version {version} metadata (of {})",
            rest.len(),
            bytes.len()
        )));
    }
    Ok(meta)
}

/// Checks the training state ranges against a blob of `blob_len` bytes.
fn check_training(meta: &ArtifactMeta, blob_len: u64) -> Result<(), ArtifactError> {
    let Some(t) = &meta.training else {
        return Ok(());
    };
    for c in &t.carried {
        let Some(r) = c.initial else { continue };
        let bad = |message: String| ArtifactError::BadTraining {
            state: c.name.clone(),
            message,
        };
        let want = c
            .shape
            .iter()
            .try_fold(4u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {:?} overflows", c.shape)))?;
        if r.len != want {
            return Err(bad(format!(
                "shape {:?} needs {want} bytes of f32, range has {}",
                c.shape, r.len
            )));
        }
        if r.offset.checked_add(r.len).is_none_or(|e| e > blob_len) {
            return Err(bad(format!(
                "bytes {}..{} fall outside the {blob_len}-byte blob",
                r.offset,
                r.offset.saturating_add(r.len)
            )));
        }
    }
    Ok(())
}

impl ArtifactMeta {
    /// Checks every weight range against a blob of `blob_len` bytes and the tensor table
    /// (at most one range per tensor), and a training step's initial-state ranges against
    /// the blob: [`Artifact::check_weights`] without the bytes, for a writer that produces
    /// the blob piece by piece ([`ArtifactWriter`]).
    pub fn check_weights(&self, blob_len: u64) -> Result<(), ArtifactError> {
        check_training(self, blob_len)?;
        let mut seen = std::collections::BTreeSet::new();
        for w in &self.weights {
            if !seen.insert(w.tensor) {
                return Err(ArtifactError::BadWeight {
                    tensor: w.tensor,
                    message: "the tensor has more than one weight range (expected at most one)"
                        .into(),
                });
            }
            let Some(t) = self.program.tensors.get(w.tensor.0 as usize) else {
                return Err(ArtifactError::BadWeight {
                    tensor: w.tensor,
                    message: format!(
                        "no such tensor (the table has {})",
                        self.program.tensors.len()
                    ),
                });
            };
            if w.len != t.bytes() {
                return Err(ArtifactError::BadWeight {
                    tensor: w.tensor,
                    message: format!(
                        "tensor '{}' needs {} bytes, range has {}",
                        t.name,
                        t.bytes(),
                        w.len
                    ),
                });
            }
            w.check_in_blob(blob_len)?;
        }
        Ok(())
    }
}

impl Artifact {
    fn encoded_meta(&self) -> Result<Vec<u8>, ArtifactError> {
        encode_meta(&self.meta)
    }

    /// Encodes the artifact into bytes (format version [`FORMAT_VERSION`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ArtifactError> {
        let meta = self.encoded_meta()?;
        let header = Header::encode(
            meta.len() as u64,
            self.blob.len() as u64,
            crc32fast::hash(&meta),
            crc32fast::hash(&self.blob),
        );
        let mut out = Vec::with_capacity(HEADER_SIZE + meta.len() + self.blob.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.blob);
        Ok(out)
    }

    /// Decodes and verifies an artifact of version 1 or 2 (magic, version, sizes,
    /// checksums, weight ranges).
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let h = Header::parse(bytes, bytes.len() as u64)?;
        let payload = &bytes[HEADER_SIZE..];
        let (meta_bytes, blob) = payload.split_at(h.meta_len as usize);
        if h.version == 1 {
            check_crc(h.crc_a, crc32fast::hash(payload))?;
        } else {
            check_crc(h.crc_a, crc32fast::hash(meta_bytes))?;
            check_crc(h.crc_b, crc32fast::hash(blob))?;
        }
        let art = Artifact {
            meta: decode_meta(h.version, meta_bytes)?,
            blob: blob.to_vec().into(),
        };
        art.check_weights()?;
        Ok(art)
    }

    /// Checks every weight range against the blob and the tensor table (at most one range
    /// per tensor), and a training step's initial-state ranges against the blob.
    pub fn check_weights(&self) -> Result<(), ArtifactError> {
        self.meta.check_weights(self.blob.len() as u64)
    }

    /// The bytes of a blob range, if the artifact holds them.
    pub fn range_bytes(&self, r: BlobRange) -> Option<&[u8]> {
        let end = r.offset.checked_add(r.len)?;
        self.blob
            .get(usize::try_from(r.offset).ok()?..usize::try_from(end).ok()?)
    }

    /// The bytes of weight tensor `t`, if the artifact holds them.
    pub fn weight_bytes(&self, t: TensorId) -> Option<&[u8]> {
        let w = self.meta.weights.iter().find(|w| w.tensor == t)?;
        self.blob
            .get(w.offset as usize..(w.offset + w.len) as usize)
    }

    /// Writes the artifact to a file, streaming: metadata and blob go to the file as they
    /// are, without assembling the whole artifact in memory (an [`ArtifactWriter`] given
    /// the whole blob as one piece).
    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        let w = ArtifactWriter::create(path, &self.meta, self.blob.len() as u64)?;
        w.write_blob_at(0, &self.blob)?;
        w.finish()
    }

    /// Reads and verifies an artifact file (version 1 or 2), streaming it into memory:
    /// the sizes are checked against the file before anything is allocated.
    pub fn read(path: &Path) -> Result<Artifact, ArtifactError> {
        let (meta, h, f) = match Self::open_meta(path)? {
            Opened::Whole(art) => return Ok(art),
            Opened::Meta(meta, h, f) => (meta, h, f),
        };
        let io = |cause| ArtifactError::Io {
            action: "read",
            path: path.display().to_string(),
            cause,
        };
        // The blob is mapped, not read: its pages come from the page cache when touched
        // (the checksum below reads them once; nothing is copied or allocated).
        let map = crate::mmap::map_file(&f).map_err(io)?;
        let expected = HEADER_SIZE as u64 + h.meta_len + h.blob_len;
        let truncated = ArtifactError::Truncated {
            expected,
            found: map.len() as u64,
        };
        let start = usize::try_from(HEADER_SIZE as u64 + h.meta_len).ok();
        let len = usize::try_from(h.blob_len).ok();
        // The header was checked against the file's size; a file cut since is refused.
        let blob = match (start, len) {
            (Some(start), Some(len)) if map.len() as u64 >= expected => {
                Blob::mapped(map, start, len).ok_or(truncated)?
            }
            _ => return Err(truncated),
        };
        drop(f);
        check_crc(h.crc_b, crc32fast::hash(&blob))?;
        let art = Artifact { meta, blob };
        art.check_weights()?;
        Ok(art)
    }

    /// Reads and verifies only the header and metadata of an artifact file: the program
    /// without the weight bytes (what a timing-only run needs). Returns the metadata and
    /// the weight blob's length. A version 1 file has one checksum over everything, so it
    /// is read whole.
    pub fn read_meta(path: &Path) -> Result<(ArtifactMeta, u64), ArtifactError> {
        let (meta, h) = match Self::open_meta(path)? {
            Opened::Whole(art) => {
                let n = art.blob.len() as u64;
                return Ok((art.meta, n));
            }
            Opened::Meta(meta, h, _) => (meta, h),
        };
        for w in &meta.weights {
            w.check_in_blob(h.blob_len)?;
        }
        check_training(&meta, h.blob_len)?;
        Ok((meta, h.blob_len))
    }

    /// Opens `path` and checks its header against the file size. A version 2 or 3 file's
    /// metadata is read and verified, and the file is left positioned at the blob; a
    /// version 1 file is read and verified whole.
    fn open_meta(path: &Path) -> Result<Opened, ArtifactError> {
        use std::io::Read;
        let io = |cause| ArtifactError::Io {
            action: "read",
            path: path.display().to_string(),
            cause,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut head = Vec::with_capacity(HEADER_SIZE);
        (&mut f)
            .take(HEADER_SIZE as u64)
            .read_to_end(&mut head)
            .map_err(io)?;
        let h = Header::parse(&head, len)?;
        if h.version == 1 {
            // Bounded by the version 1 limit of 4 GiB, checked by `parse`.
            let mut all = head;
            f.read_to_end(&mut all).map_err(io)?;
            return Artifact::from_bytes(&all).map(Opened::Whole);
        }
        let mut meta_bytes = vec![0u8; h.meta_len as usize];
        f.read_exact(&mut meta_bytes).map_err(io)?;
        check_crc(h.crc_a, crc32fast::hash(&meta_bytes))?;
        Ok(Opened::Meta(decode_meta(h.version, &meta_bytes)?, h, f))
    }
}

/// What [`Artifact::open_meta`] found.
enum Opened {
    /// A version 1 artifact, read whole.
    Whole(Artifact),
    /// A version 2 or 3 artifact's metadata, its header, and the file positioned at the blob.
    Meta(ArtifactMeta, Header, std::fs::File),
}

/// The metadata section's bytes: `meta` encoded with postcard.
fn encode_meta(meta: &ArtifactMeta) -> Result<Vec<u8>, ArtifactError> {
    postcard::to_allocvec(meta).map_err(|e| ArtifactError::Encode(e.to_string()))
}

/// A `.neff` file written piece by piece, so a producer can encode the weight blob
/// straight into the file without holding it in memory (`neuronc compile` encodes its
/// weights this way, in parallel chunks).
///
/// [`ArtifactWriter::create`] writes the metadata and sizes the file; the blob's bytes
/// then arrive as pieces in any order, from any number of threads
/// ([`ArtifactWriter::write_blob_at`]: positioned writes, each piece's CRC-32 computed by
/// the thread that writes it); [`ArtifactWriter::finish`] combines the pieces' CRCs in
/// blob order and writes the header last. Until then the file starts with zeros, so a
/// write cut short leaves a file every reader refuses (bad magic). Bytes no piece covers
/// are zeros (alignment padding); a byte written twice is an error. The file is the one
/// [`Artifact::write`] gives for the same metadata and blob bytes.
pub struct ArtifactWriter {
    file: std::fs::File,
    path: String,
    meta_len: u64,
    meta_crc: u32,
    blob_len: u64,
    /// `(offset, len, crc)` of every piece written.
    pieces: std::sync::Mutex<Vec<(u64, u64, crc32fast::Hasher)>>,
}

impl ArtifactWriter {
    /// Creates (or truncates) `path` for an artifact with metadata `meta` and a blob of
    /// `blob_len` bytes, and writes the metadata. The weight ranges are not checked here
    /// (see [`ArtifactMeta::check_weights`]).
    pub fn create(
        path: &Path,
        meta: &ArtifactMeta,
        blob_len: u64,
    ) -> Result<ArtifactWriter, ArtifactError> {
        let io = |cause| ArtifactError::Io {
            action: "write",
            path: path.display().to_string(),
            cause,
        };
        let meta_bytes = encode_meta(meta)?;
        let meta_len = meta_bytes.len() as u64;
        let total = (HEADER_SIZE as u64)
            .checked_add(meta_len)
            .and_then(|t| t.checked_add(blob_len))
            .filter(|&t| t <= MAX_ARTIFACT_BYTES)
            .ok_or_else(|| {
                ArtifactError::Encode(format!(
                    "metadata of {meta_len} bytes and a weight blob of {blob_len} bytes exceed \
                     the {MAX_ARTIFACT_BYTES}-byte artifact limit"
                ))
            })?;
        let file = std::fs::File::create(path).map_err(io)?;
        file.set_len(total).map_err(io)?;
        write_all_at(&file, &meta_bytes, HEADER_SIZE as u64).map_err(io)?;
        Ok(ArtifactWriter {
            file,
            path: path.display().to_string(),
            meta_len,
            meta_crc: crc32fast::hash(&meta_bytes),
            blob_len,
            pieces: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Writes `bytes` at byte `offset` of the blob. Callable from several threads at once.
    pub fn write_blob_at(&self, offset: u64, bytes: &[u8]) -> Result<(), ArtifactError> {
        let len = bytes.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.blob_len) {
            return Err(ArtifactError::Encode(format!(
                "blob bytes {offset}..{} fall outside the {}-byte blob",
                offset.saturating_add(len),
                self.blob_len
            )));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(bytes);
        write_all_at(
            &self.file,
            bytes,
            HEADER_SIZE as u64 + self.meta_len + offset,
        )
        .map_err(|cause| ArtifactError::Io {
            action: "write",
            path: self.path.clone(),
            cause,
        })?;
        self.pieces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((offset, len, crc));
        Ok(())
    }

    /// Checks that no blob byte was written twice, combines the pieces' checksums (the
    /// bytes between pieces are zeros) and writes the header.
    pub fn finish(self) -> Result<(), ArtifactError> {
        let mut pieces = self
            .pieces
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pieces.sort_by_key(|p| p.0);
        let mut crc = crc32fast::Hasher::new();
        let mut at = 0u64;
        for (offset, len, piece) in pieces.iter().chain(std::iter::once(&(
            self.blob_len,
            0,
            crc32fast::Hasher::new(),
        ))) {
            if *offset < at {
                return Err(ArtifactError::Encode(format!(
                    "blob bytes {offset}..{} were written more than once (up to {at} was \
                     already written)",
                    offset + len
                )));
            }
            zeros_crc(&mut crc, offset - at);
            crc.combine(piece);
            at = offset + len;
        }
        let header = Header::encode(self.meta_len, self.blob_len, self.meta_crc, crc.finalize());
        write_all_at(&self.file, &header, 0).map_err(|cause| ArtifactError::Io {
            action: "write",
            path: self.path.clone(),
            cause,
        })
    }
}

/// Feeds `n` zero bytes to `crc`.
fn zeros_crc(crc: &mut crc32fast::Hasher, mut n: u64) {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        crc.update(&ZEROS[..k as usize]);
        n -= k;
    }
}

/// Writes all of `bytes` at byte `offset` of `file` (a positioned write: the file's
/// cursor is not used, so threads can write different places at once).
#[cfg(unix)]
fn write_all_at(file: &std::fs::File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Writes all of `bytes` at byte `offset` of `file` (a positioned write).
#[cfg(windows)]
fn write_all_at(file: &std::fs::File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, bytes, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dtype, HbmTensor, TensorKind};

    fn sample() -> Artifact {
        let program = Program {
            tensors: vec![HbmTensor {
                name: "w".into(),
                kind: TensorKind::Weight,
                shape: vec![4],
                dtype: Dtype::Bf16,
            }],
            ..Program::default()
        };
        Artifact {
            meta: ArtifactMeta {
                model_name: "m".into(),
                target: ChipConfig::trn1(),
                options: BTreeMap::new(),
                batch_size: 1,
                model_flops: 0,
                seed: 0,
                index_bounds: BTreeMap::new(),
                program,
                weights: vec![WeightRange {
                    tensor: TensorId(0),
                    offset: 0,
                    len: 8,
                }],
                training: None,
                kernel_estimates_ns: Vec::new(),
            },
            blob: (1..=8).collect(),
        }
    }

    /// The metadata as versions 1 and 2 encoded it (no `training` field).
    fn legacy_meta(m: &ArtifactMeta) -> Vec<u8> {
        assert!(m.training.is_none());
        postcard::to_allocvec(&ArtifactMetaV2 {
            model_name: m.model_name.clone(),
            target: m.target.clone(),
            options: m.options.clone(),
            batch_size: m.batch_size,
            model_flops: m.model_flops,
            seed: m.seed,
            index_bounds: m.index_bounds.clone(),
            program: m.program.clone(),
            weights: m.weights.clone(),
        })
        .unwrap()
    }

    /// The version 2 encoding, as the previous build wrote it.
    fn v2_bytes(a: &Artifact) -> Vec<u8> {
        let meta = legacy_meta(&a.meta);
        let mut out = Header::encode(
            meta.len() as u64,
            a.blob.len() as u64,
            crc32fast::hash(&meta),
            crc32fast::hash(&a.blob),
        )
        .to_vec();
        out[8..12].copy_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&a.blob);
        out
    }

    /// The version 1 encoding (one CRC over metadata and blob), as older builds wrote it.
    fn v1_bytes(a: &Artifact) -> Vec<u8> {
        let meta = legacy_meta(&a.meta);
        let mut h = crc32fast::Hasher::new();
        h.update(&meta);
        h.update(&a.blob);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        out.extend_from_slice(&(a.blob.len() as u64).to_le_bytes());
        out.extend_from_slice(&h.finalize().to_le_bytes());
        out.resize(HEADER_SIZE, 0);
        out.extend_from_slice(&meta);
        out.extend_from_slice(&a.blob);
        out
    }

    fn training_sample() -> Artifact {
        let mut a = sample();
        a.blob.to_mut().extend_from_slice(&[0; 8]);
        let sig = |name: &str| IoSignature {
            name: name.into(),
            shape: vec![2],
            dtype: "f32".into(),
        };
        a.meta.training = Some(TrainingMeta {
            spec_json: "{}".into(),
            data_inputs: vec![sig("x")],
            labels: sig("y"),
            output: sig("z"),
            carried: vec![CarriedState {
                name: "w".into(),
                next: "w/next".into(),
                is_param: true,
                shape: vec![2],
                initial: Some(BlobRange { offset: 8, len: 8 }),
            }],
            trainable_elements: 2,
            saved_activation_bytes: 0,
        });
        a
    }

    #[test]
    fn v3_carries_the_training_interface_and_checks_its_ranges() {
        let a = training_sample();
        let bytes = a.to_bytes().unwrap();
        assert_eq!(u32_at(&bytes, 8), 3);
        let back = Artifact::from_bytes(&bytes).unwrap();
        assert_eq!(back, a);
        assert_eq!(
            back.range_bytes(BlobRange { offset: 8, len: 8 }),
            Some(&[0u8; 8][..])
        );
        // A range past the blob, or of the wrong size, is refused by name.
        for (offset, len, want) in [(12, 8, "outside the 16-byte blob"), (8, 4, "needs 8 bytes")] {
            let mut bad = a.clone();
            if let Some(t) = &mut bad.meta.training {
                t.carried[0].initial = Some(BlobRange { offset, len });
            }
            let e = Artifact::from_bytes(&bad.to_bytes().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("training state 'w'") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn v3_round_trips_and_v2_and_v1_still_read() {
        let a = sample();
        let dir = std::env::temp_dir().join(format!("neff-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p2 = dir.join("a2.neff");
        a.write(&p2).unwrap();
        let bytes = std::fs::read(&p2).unwrap();
        assert_eq!(bytes, a.to_bytes().unwrap(), "streaming write = to_bytes");
        assert_eq!(u32_at(&bytes, 8), 3);
        let mapped = Artifact::read(&p2).unwrap();
        assert_eq!(mapped, a);
        assert!(
            mapped.blob.is_mapped(),
            "a v3 file's weights are mapped, not copied"
        );
        assert_eq!(
            mapped.weight_bytes(TensorId(0)),
            Some(&[1u8, 2, 3, 4, 5, 6, 7, 8][..])
        );
        assert_eq!(Artifact::from_bytes(&bytes).unwrap(), a);
        // Truncated files are refused with the sizes, never mapped past their end.
        for cut in [1, 4, 8] {
            std::fs::write(&p2, &bytes[..bytes.len() - cut]).unwrap();
            let e = Artifact::read(&p2).unwrap_err();
            assert!(matches!(e, ArtifactError::Truncated { .. }), "{e}");
            assert!(e.to_string().contains(&bytes.len().to_string()), "{e}");
        }
        std::fs::write(&p2, &bytes).unwrap();
        // The previous build's version 2 files (metadata without `training`) still read.
        let old = v2_bytes(&a);
        assert_ne!(old, bytes);
        assert_eq!(Artifact::from_bytes(&old).unwrap(), a);
        let pv2 = dir.join("v2.neff");
        std::fs::write(&pv2, &old).unwrap();
        assert_eq!(Artifact::read(&pv2).unwrap(), a);
        assert_eq!(Artifact::read_meta(&pv2).unwrap(), (a.meta.clone(), 8));
        let p1 = dir.join("a1.neff");
        std::fs::write(&p1, v1_bytes(&a)).unwrap();
        assert_eq!(Artifact::read(&p1).unwrap(), a);
        assert_eq!(Artifact::read_meta(&p1).unwrap(), (a.meta.clone(), 8));

        // A corrupt weight byte: the metadata alone still reads, the whole file does not.
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&p2, &bad).unwrap();
        assert_eq!(Artifact::read_meta(&p2).unwrap(), (a.meta.clone(), 8));
        assert!(matches!(
            Artifact::read(&p2),
            Err(ArtifactError::Checksum { .. })
        ));
        // A corrupt metadata byte fails both.
        let mut bad = bytes;
        bad[HEADER_SIZE] ^= 1;
        std::fs::write(&p2, &bad).unwrap();
        assert!(Artifact::read_meta(&p2).is_err());
        // Version 4 is refused by name.
        bad[8] = 4;
        let e = Artifact::from_bytes(&bad).unwrap_err().to_string();
        assert!(
            e.contains("version 4") && e.contains("versions 1 to 3"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn v1_keeps_its_4_gib_limit_v2_does_not() {
        let a = sample();
        let mut b = a.to_bytes().unwrap();
        b[24..32].copy_from_slice(&(5u64 << 30).to_le_bytes());
        // A v2 header may claim 5 GiB: refused only because the file is shorter.
        assert!(matches!(
            Artifact::from_bytes(&b),
            Err(ArtifactError::Truncated { .. })
        ));
        let mut v1 = v1_bytes(&a);
        v1[24..32].copy_from_slice(&(5u64 << 30).to_le_bytes());
        let e = Artifact::from_bytes(&v1).unwrap_err().to_string();
        assert!(e.contains("4 GiB"), "{e}");
    }
    #[test]
    fn pieces_written_in_any_order_give_the_write_bytes() {
        // A 300-byte blob with zero padding 100..128 (never written), written as pieces out
        // of order from several threads: the file is the one `write` gives.
        let mut a = sample();
        let blob: Vec<u8> = (0..300u32)
            .map(|i| {
                if (100..128).contains(&i) {
                    0
                } else {
                    (i * 7 + 1) as u8
                }
            })
            .collect();
        a.blob = blob.clone().into();
        let dir = std::env::temp_dir().join(format!("neff-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let whole = dir.join("whole.neff");
        a.write(&whole).unwrap();
        let pieces = dir.join("pieces.neff");
        let w = ArtifactWriter::create(&pieces, &a.meta, 300).unwrap();
        let cuts = [(200u64, 300u64), (0, 37), (128, 200), (37, 100)];
        std::thread::scope(|s| {
            for &(from, to) in &cuts {
                let (w, blob) = (&w, &blob);
                s.spawn(move || {
                    w.write_blob_at(from, &blob[from as usize..to as usize])
                        .unwrap()
                });
            }
        });
        w.finish().unwrap();
        let bytes = std::fs::read(&pieces).unwrap();
        assert_eq!(bytes, std::fs::read(&whole).unwrap());
        assert_eq!(bytes, a.to_bytes().unwrap());
        assert_eq!(Artifact::read(&pieces).unwrap(), a);

        // A piece past the blob, or a byte written twice, is refused by its range.
        let w = ArtifactWriter::create(&pieces, &a.meta, 300).unwrap();
        let e = w.write_blob_at(290, &[0; 11]).unwrap_err().to_string();
        assert!(e.contains("290..301") && e.contains("300-byte blob"), "{e}");
        w.write_blob_at(0, &blob[..50]).unwrap();
        w.write_blob_at(40, &blob[40..60]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("40..60") && e.contains("more than once"), "{e}");
        // Until `finish`, the file has no header: a reader refuses it.
        let w = ArtifactWriter::create(&pieces, &a.meta, 300).unwrap();
        w.write_blob_at(0, &blob).unwrap();
        assert!(matches!(
            Artifact::read(&pieces),
            Err(ArtifactError::BadMagic { .. })
        ));
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
