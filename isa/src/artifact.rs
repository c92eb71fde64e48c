//! The `.neff` artifact: a compiled program with its target, options, weights and metadata.
//!
//! Layout (all integers little-endian; see `docs/artifact-format.md`):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `NEFFSIM\0` |
//! | 8..12 | format version (u32, currently [`FORMAT_VERSION`]) |
//! | 12..16 | header size (u32, 64) |
//! | 16..24 | metadata length M (u64) |
//! | 24..32 | weight blob length W (u64) |
//! | 32..36 | CRC-32 (IEEE) of the M + W bytes after the header |
//! | 36..64 | reserved, zero |
//! | 64..64+M | metadata: [`ArtifactMeta`] encoded with postcard |
//! | 64+M..64+M+W | weight blob: raw little-endian tensor data, see [`WeightRange`] |

use crate::ap::TensorId;
use crate::config::ChipConfig;
use crate::program::Program;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The first 8 bytes of every artifact.
pub const MAGIC: [u8; 8] = *b"NEFFSIM\0";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_SIZE: usize = 64;
/// Largest artifact this build will read (4 GiB): refused before allocating.
pub const MAX_ARTIFACT_BYTES: u64 = 4 << 30;

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
}

/// A loaded or to-be-written artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// Program and metadata.
    pub meta: ArtifactMeta,
    /// Weight bytes, addressed by [`ArtifactMeta::weights`].
    pub blob: Vec<u8>,
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

impl Artifact {
    /// Encodes the artifact into bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ArtifactError> {
        let meta =
            postcard::to_allocvec(&self.meta).map_err(|e| ArtifactError::Encode(e.to_string()))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&meta);
        hasher.update(&self.blob);
        let crc = hasher.finalize();
        let mut out = Vec::with_capacity(HEADER_SIZE + meta.len() + self.blob.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.blob.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.resize(HEADER_SIZE, 0);
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.blob);
        Ok(out)
    }

    /// Decodes and verifies an artifact (magic, version, sizes, checksum, weight ranges).
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
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
        if let Some(pos) = bytes[36..HEADER_SIZE].iter().position(|&b| b != 0) {
            return Err(ArtifactError::BadHeader(format!(
                "reserved header byte {} is {:#04x}, expected 0",
                36 + pos,
                bytes[36 + pos]
            )));
        }
        let meta_len = u64_at(bytes, 16);
        let blob_len = u64_at(bytes, 24);
        let total = (HEADER_SIZE as u64)
            .checked_add(meta_len)
            .and_then(|t| t.checked_add(blob_len))
            .filter(|t| *t <= MAX_ARTIFACT_BYTES)
            .ok_or_else(|| {
                ArtifactError::BadHeader(format!(
                    "metadata length {meta_len} + weight length {blob_len} exceeds the {MAX_ARTIFACT_BYTES}-byte limit"
                ))
            })?;
        if (bytes.len() as u64) < total {
            return Err(ArtifactError::Truncated {
                expected: total,
                found: bytes.len() as u64,
            });
        }
        if (bytes.len() as u64) > total {
            return Err(ArtifactError::BadHeader(format!(
                "file has {} bytes after the payload (expected {total} bytes in all)",
                bytes.len() as u64 - total
            )));
        }
        let payload = &bytes[HEADER_SIZE..];
        let expected = u32_at(bytes, 32);
        let found = crc32fast::hash(payload);
        if expected != found {
            return Err(ArtifactError::Checksum { expected, found });
        }
        let (meta_bytes, blob) = payload.split_at(meta_len as usize);
        let meta: ArtifactMeta =
            postcard::from_bytes(meta_bytes).map_err(|e| ArtifactError::Decode(e.to_string()))?;
        let art = Artifact {
            meta,
            blob: blob.to_vec(),
        };
        art.check_weights()?;
        Ok(art)
    }

    /// Checks every weight range against the blob and the tensor table (at most one range
    /// per tensor).
    pub fn check_weights(&self) -> Result<(), ArtifactError> {
        let mut seen = std::collections::BTreeSet::new();
        for w in &self.meta.weights {
            if !seen.insert(w.tensor) {
                return Err(ArtifactError::BadWeight {
                    tensor: w.tensor,
                    message: "the tensor has more than one weight range (expected at most one)"
                        .into(),
                });
            }
            let Some(t) = self.meta.program.tensors.get(w.tensor.0 as usize) else {
                return Err(ArtifactError::BadWeight {
                    tensor: w.tensor,
                    message: format!(
                        "no such tensor (the table has {})",
                        self.meta.program.tensors.len()
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
            let end = w.offset.checked_add(w.len);
            if end.is_none_or(|e| e > self.blob.len() as u64) {
                return Err(ArtifactError::BadWeight {
                    tensor: w.tensor,
                    message: format!(
                        "bytes {}..{} fall outside the {}-byte blob",
                        w.offset,
                        w.offset.saturating_add(w.len),
                        self.blob.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The bytes of weight tensor `t`, if the artifact holds them.
    pub fn weight_bytes(&self, t: TensorId) -> Option<&[u8]> {
        let w = self.meta.weights.iter().find(|w| w.tensor == t)?;
        self.blob
            .get(w.offset as usize..(w.offset + w.len) as usize)
    }

    /// Writes the artifact to a file.
    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|cause| ArtifactError::Io {
            action: "write",
            path: path.display().to_string(),
            cause,
        })
    }

    /// Reads and verifies an artifact file.
    pub fn read(path: &Path) -> Result<Artifact, ArtifactError> {
        let io = |cause| ArtifactError::Io {
            action: "read",
            path: path.display().to_string(),
            cause,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::BadHeader(format!(
                "file is {len} bytes, above the {MAX_ARTIFACT_BYTES}-byte limit"
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Artifact::from_bytes(&bytes)
    }
}
