//! The `axum_frames` fuzz target's smoke run for CI, without cargo-fuzz or a nightly toolchain
//! (issue 8): every committed corpus file under `fuzz/corpus/axum_frames/` goes through
//! `occupancy_axum::testing::fuzz::frames`, then fixed-seed generated inputs (random bytes, and
//! bursts built to fill the rate and violation buckets). The long coverage-guided run is
//! `cargo +nightly fuzz run axum_frames` in `fuzz/` (see the README's fuzzing section).

use std::path::PathBuf;

use occupancy_axum::testing::fuzz::frames;
use occupancy_core::testing::fuzz::{Rng, corpus};

/// The committed corpus of `target` in the repository's `fuzz/corpus/`.
fn corpus_of(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    corpus(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target),
    )
}

/// An input made of whole steps of the target's format: mostly requests, with bursts (repeat),
/// clock steps, the other session's joins and leaves, and now and then a bad frame.
fn steps(rng: &mut Rng) -> Vec<u8> {
    let mut out = vec![rng.next() as u8];
    for _ in 0..rng.below(40) {
        let op = match rng.below(10) {
            0..=4 => rng.below(6) as u8,                 // a request
            5 => 8,                                      // around the size limit
            6 => 13,                                     // clock step
            7 => 14,                                     // repeat the last frame
            8 => 15,                                     // the other session
            _ => [6, 9, 10, 11, 12][rng.below(5)] as u8, // raw text, binary, ping, pong, close
        };
        out.push(op);
        match op {
            // A request: op, room, ref and meta selectors (below 0x40: not broken).
            0..=5 => (0..4).for_each(|_| out.push((rng.next() as u8) & 0x3f)),
            // The same plus the size: from just under the limit to well over it.
            8 => {
                (0..4).for_each(|_| out.push((rng.next() as u8) & 0x3f));
                out.push(rng.next() as u8);
            }
            // Raw text: its length, then printable bytes.
            6 => {
                let n = rng.below(48);
                out.push(n as u8);
                (0..n).for_each(|_| out.push(b' ' + rng.below(95) as u8));
            }
            13..=15 => out.push(rng.next() as u8),
            _ => {}
        }
    }
    out
}

#[test]
fn axum_frames_corpus_and_generated_inputs() {
    let files = corpus_of("axum_frames");
    assert!(!files.is_empty(), "no committed corpus for axum_frames");
    for (path, data) in &files {
        eprintln!("{}", path.display());
        frames(data);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..750 {
        frames(&rng.bytes(256));
        frames(&steps(&mut rng));
    }
}
