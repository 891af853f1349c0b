//! Runs the Node test suite (`tests/socketio-node`, the real npm `socket.io-client` v4) against
//! an in-process server on a free loopback port: the article's flows and bugs over WebSocket,
//! polling and polling-then-upgrade, and a dead client detected by short ping settings.
//!
//! Needs `node` (18+) and the suite's dependencies: `npm ci --prefix tests/socketio-node`. Without
//! them these tests fail (they do not skip): CI installs them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{hub, server};

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/socketio-node")
}

async fn run_node(file: &str, url: &str) {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/socket.io-client/package.json")
            .exists(),
        "{} has no node_modules/socket.io-client: run `npm ci --prefix tests/socketio-node` \
         (from the repository root) before `cargo test`",
        dir.display()
    );
    let child = tokio::process::Command::new("node")
        .arg(file)
        .arg(url)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(180), child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("could not run `node` (Node.js 18+ must be on PATH): {e}"),
        Err(_) => panic!("node {file} did not finish within 180 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {file} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The summary lines of node:test, for the log.
    for line in stdout.lines().filter(|l| l.starts_with("# ")) {
        println!("{file}: {line}");
    }
    assert!(
        stdout.contains("# fail 0"),
        "no test summary from node {file}:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_socket_io_client_article_flows_and_bugs() {
    let srv = server(hub(0), |b| b, |o| o).await;
    run_node("article.test.mjs", &srv.http_url()).await;
    srv.until("every socket gone", |s| s.sessions == 0 && s.rooms == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_socket_io_client_dead_client_detected_by_pings() {
    let srv = server(
        hub(0),
        |b| {
            b.ping_interval(Duration::from_millis(200))
                .ping_timeout(Duration::from_millis(200))
        },
        |o| o,
    )
    .await;
    run_node("liveness.test.mjs", &srv.http_url()).await;
    srv.until("every socket gone", |s| s.sessions == 0 && s.rooms == 0)
        .await;
}
