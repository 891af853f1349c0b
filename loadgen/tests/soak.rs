//! The soak's CI run (issue 8): one minute of `loadgen soak` — 300 protocol v1 clients joining,
//! leaving, taking over, watching, dropping their connections abruptly and resuming — against
//! the documents demo's app (`examples/support`, the code `cargo run --example documents`
//! serves) in this process, with the state machine checking its invariants after every
//! operation. `loadgen soak` itself checks what each client is told, audits everyone's places
//! against the server, and requires every counter back at zero after the grace; this test runs it
//! and requires it to pass. The 10-minute, 5,000-client run is in the README.
//!
//! `SOAK_SECS` and `SOAK_CLIENTS` change the length and the crowd.

#[path = "../../examples/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use occupancy::{Config, Hub};

#[test]
fn one_minute_churn_soak_against_the_documents_app() {
    let secs: u64 = std::env::var("SOAK_SECS").map_or(60, |s| s.parse().expect("SOAK_SECS"));
    let clients: usize =
        std::env::var("SOAK_CLIENTS").map_or(300, |s| s.parse().expect("SOAK_CLIENTS"));
    let grace = Duration::from_secs(2);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let hub = Hub::builder()
            .config({
                let mut c = Config::default();
                c.check_invariants = true;
                c.grace = grace;
                c
            })
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = support::app(hub);
        tokio::spawn(async move {
            axum::serve(occupancy::axum::nodelay(listener), app)
                .await
                .unwrap();
        });
        addr
    });

    let out = std::env::temp_dir().join(format!("occupancy-soak-{}.json", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["soak", "--url", &format!("ws://{addr}/occupancy")])
        .args(["--clients", &clients.to_string()])
        .args(["--rooms", "100"])
        .args(["--secs", &secs.to_string()])
        .args(["--think-ms", "1000"])
        .args(["--grace-ms", &grace.as_millis().to_string()])
        .args(["--pid", &std::process::id().to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run loadgen soak");
    let log = String::from_utf8_lossy(&run.stderr);
    eprintln!("{log}");
    assert!(run.status.success(), "the soak failed:\n{log}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("the soak's JSON")).unwrap();
    let _ = std::fs::remove_file(&out);
    let c = &report["counters"];
    // The run did what it is for: real churn, resumes both in and after the grace, an audit.
    for k in [
        "requests",
        "notices",
        "resumed_in_grace",
        "refused_after_grace",
        "audit_rooms",
    ] {
        assert!(
            c[k].as_u64().unwrap() > 0,
            "{k} = 0: the soak did not exercise it"
        );
    }
    let end = &report["stats_at_end"];
    assert!(end["invariant_checks"].as_u64().unwrap() > 1000);
    for k in [
        "sessions",
        "rooms",
        "occupants",
        "watchers",
        "live_connections",
        "invariant_violations",
    ] {
        assert_eq!(end[k], 0, "{k} after everyone left");
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}
