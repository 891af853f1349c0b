//! The fuzz targets' smoke run for CI, without cargo-fuzz or a nightly toolchain (issue 8): every
//! committed corpus file under `fuzz/corpus/<target>/` goes through its target function, then a
//! few thousand byte strings from a fixed-seed generator (half random bytes, half made of protocol
//! pieces, so that both the parser's error paths and its happy paths run). The long coverage-guided
//! runs are `cargo +nightly fuzz run <target>` in `fuzz/` (see its README section).

use std::path::PathBuf;

use occupancy_core::testing::fuzz::{Rng, corpus, machine_ops, protocol_frame};

/// The committed corpus of `target` in the repository's `fuzz/corpus/`.
fn corpus_of(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    corpus(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target),
    )
}

/// A frame glued from protocol pieces: mostly well-formed JSON objects, some slightly broken.
fn frame(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&str] = &[
        r#""op":"join""#,
        r#""op":"leave""#,
        r#""op":"takeover""#,
        r#""op":"watch""#,
        r#""op":"unwatch""#,
        r#""op":"ping""#,
        r#""op":"fly""#,
        r#""op":7"#,
        r#""room":"doc-1""#,
        r#""room":"""#,
        r#""room":"a\u0000b""#,
        r#""room":"ééééééééééééééééééééé""#,
        r#""room":5"#,
        r#""ref":1"#,
        r#""ref":-9223372036854775808"#,
        r#""ref":18446744073709551615"#,
        r#""ref":1.5"#,
        r#""ref":"abc""#,
        r#""ref":null"#,
        r#""meta":{"name":"Ann"}"#,
        r#""meta":null"#,
        r#""meta":[1]"#,
        r#""meta":{"big":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        r#""x":{"y":[true,false,null]}"#,
    ];
    let mut s = String::from("{");
    for i in 0..rng.below(5) {
        if i > 0 {
            s.push(',');
        }
        s.push_str(PIECES[rng.below(PIECES.len())]);
    }
    s.push('}');
    let mut bytes = s.into_bytes();
    if rng.below(8) == 0 && !bytes.is_empty() {
        // Break it a little.
        let i = rng.below(bytes.len());
        bytes[i] = rng.next() as u8;
    }
    bytes
}

#[test]
fn protocol_frame_corpus_and_random_frames() {
    let files = corpus_of("protocol_frame");
    assert!(!files.is_empty(), "no committed corpus for protocol_frame");
    for (path, data) in &files {
        eprintln!("{}", path.display());
        protocol_frame(data);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2_000 {
        protocol_frame(&rng.bytes(64));
        protocol_frame(&frame(&mut rng));
    }
}

#[test]
fn machine_ops_corpus_and_random_streams() {
    let files = corpus_of("machine_ops");
    assert!(!files.is_empty(), "no committed corpus for machine_ops");
    for (path, data) in &files {
        eprintln!("{}", path.display());
        machine_ops(data);
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..2_000 {
        machine_ops(&rng.bytes(256));
    }
}
