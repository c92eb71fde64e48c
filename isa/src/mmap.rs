//! Read-only memory maps of weight files: a `.neff` artifact's blob
//! ([`crate::Artifact::read`]) and a model's safetensors weights, so loading a model
//! reads its weight bytes from the page cache on first touch instead of copying them
//! into freshly allocated (and zeroed) memory.
//!
//! The one place in the workspace that allows `unsafe`: mapping a file is unsafe by
//! contract, because another process truncating or rewriting the file while it is
//! mapped would change (or unmap) memory the program treats as immutable. The tools
//! never write a file they have mapped; a user who overwrites a `.neff` or weights file
//! while a run is reading it can crash that run (SIGBUS), as with any mapped loader.
//! Every length the mapped bytes are trusted for is checked against the map first.
#![allow(unsafe_code)]

use std::fs::File;

pub use memmap2::Mmap;

/// Maps the whole of `file` read-only.
pub fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and the toolchain never writes a file it has mapped;
    // see the module documentation for what a concurrent writer could do.
    unsafe { Mmap::map(file) }
}
