//! Browser end-to-end test of the documents demo: serves the example's app (the same
//! `examples/support` code `cargo run --example documents` runs) on a free port of 127.0.0.1, then
//! runs `node tests/browser/e2e.mjs`, which drives Debian's headless Chromium through
//! playwright-core: two pages on one document, a reload that keeps its place, the holder's page
//! closing and the other page then holding, a take over, and on a second server with a 1.5 s idle
//! timeout: a holder typing keeps the document, one who stops loses it. Screenshots go to
//! `target/tmp/browser-e2e/`.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`), Node.js, and
//! `npm ci --prefix tests/browser`. Missing any of them is a failure, not a skip.
#![cfg(feature = "axum")]

#[path = "../examples/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(240);
/// The idle timeout of the second server (the idle scenario).
const IDLE: Duration = Duration::from_millis(1500);

#[test]
fn documents_page_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "headless Chromium is missing at {chromium}: run `apt-get install -y chromium` (CI's .ci/run does)"
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        node_ok,
        "Node.js is missing: run `apt-get install -y nodejs npm` (CI's .ci/run does)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (CI's .ci/run does)"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, idle_addr) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A long grace for lost connections: a closed tab must be handed over after the close
        // grace (2 s) instead, which the page test checks.
        let hub = occupancy::Hub::builder()
            .grace(Duration::from_secs(60))
            .build()
            .unwrap();
        let app = support::app(hub);
        tokio::spawn(async move {
            axum::serve(occupancy::axum::nodelay(listener), app)
                .await
                .unwrap();
        });
        // A second server with a short idle timeout, for the idle scenario.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle_addr = listener.local_addr().unwrap();
        let hub = occupancy::Hub::builder()
            .idle_timeout(IDLE)
            .build()
            .unwrap();
        let app = support::app(hub);
        tokio::spawn(async move {
            axum::serve(occupancy::axum::nodelay(listener), app)
                .await
                .unwrap();
        });
        (addr, idle_addr)
    });

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-e2e");
    let mut child = Command::new("node")
        .arg(root.join("tests/browser/e2e.mjs"))
        .arg(format!("http://{addr}"))
        .arg(&shots)
        .arg(format!("http://{idle_addr}"))
        .arg(IDLE.as_millis().to_string())
        .env("CHROMIUM", &chromium)
        .current_dir(root)
        .spawn()
        .expect("could not start node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser test did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the browser test failed ({status}); its output is above, screenshots in {}",
        shots.display()
    );
    drop(rt);
}
