//! The runtime's integration tests: one binary (one link), one module per area.

// Tests may unwrap (clippy.toml allows it inside #[test] functions); the shared helpers
// of this test binary are test code too.
#![allow(clippy::unwrap_used)]

mod bad_inputs;
mod bench_cli;
mod checks;
mod cli;
mod common;
mod compare;
mod execute;
mod insights;
mod load;
mod profile;
mod report;
mod sweep;
mod train;
