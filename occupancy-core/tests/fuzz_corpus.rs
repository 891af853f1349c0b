//! The fuzz targets' smoke run for CI, without cargo-fuzz or a nightly toolchain (issue 8): every
//! committed corpus file under `fuzz/corpus/<target>/` goes through its target function, then a
//! few thousand byte strings from a fixed-seed generator (half random bytes, half made of protocol
//! pieces, so that both the parser's error paths and its happy paths run). The long coverage-guided
//! runs are `cargo +nightly fuzz run <target>` in `fuzz/` (see its README section).

use std::path::PathBuf;

use occupancy_core::testing::fuzz::{machine_ops, protocol_frame};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("readable corpus file");
            (p, data)
        })
        .collect()
}

/// xorshift64*: a fixed-seed source of bytes, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
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
    let files = corpus("protocol_frame");
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
    let files = corpus("machine_ops");
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
