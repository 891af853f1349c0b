//! Test support (feature `testing`): the fuzz targets of this adapter as plain functions, called
//! by `fuzz/` (cargo-fuzz) and replayed by `tests/fuzz_corpus.rs` in an ordinary `cargo test`.
//! Not part of the stable API.

pub mod fuzz;
