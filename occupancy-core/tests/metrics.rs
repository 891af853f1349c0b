//! What the Hub records through the `metrics` facade, read back with metrics-util's debugging
//! recorder: one scenario, every counter it should move, by the names and labels the crate docs
//! list ("Metrics").

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use occupancy_core::{Ending, Error, Hub, Meta, ResumeToken};
use serde_json::json;

/// The counters and gauges of a snapshot, as `name{label=value,...}` → value.
fn read(
    snapshot: Vec<(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>,
) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshot {
        let (kind, key) = key.into_parts();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = if labels.is_empty() {
            key.name().to_string()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        let v = match (kind, value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => n as f64,
            (MetricKind::Gauge, DebugValue::Gauge(g)) => g.into_inner(),
            (MetricKind::Histogram, DebugValue::Histogram(h)) => h.len() as f64,
            other => panic!("unexpected {other:?}"),
        };
        out.insert(name, v);
    }
    out
}

#[test]
fn the_hub_counts_requests_hand_overs_resumes_and_endings() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The test's own thread, and a current-thread runtime on it: everything records here.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hub = Hub::new();
        let (a, _an) = hub
            .connect(Some("ann".into()), Meta::empty())
            .await
            .unwrap();
        let (b, _bn) = hub
            .connect(Some("bob".into()), Meta::empty())
            .await
            .unwrap();
        a.join("doc", None).await.unwrap();
        b.join("doc", None).await.unwrap();
        b.takeover("doc").await.unwrap(); // Ann displaced, Bob released
        b.leave("doc").await.unwrap(); // Ann released
        let status = Meta::from_value(json!({ "status": "editing" })).unwrap();
        a.update("doc", status.clone()).await.unwrap();
        assert_eq!(b.update("doc", status).await.err(), Some(Error::NotMember));
        assert!(hub.resume(ResumeToken(7)).await.is_err());
        b.disconnect_as(Ending::Closed).await;
        hub.record_gauges().await.unwrap();
    });
    let m = read(snapshotter.snapshot().into_vec());
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from {m:#?}"))
    };
    assert_eq!(get("occupancy_requests_total{op=join,result=ok}"), 2.0);
    assert_eq!(get("occupancy_requests_total{op=takeover,result=ok}"), 1.0);
    assert_eq!(get("occupancy_requests_total{op=leave,result=ok}"), 1.0);
    assert_eq!(get("occupancy_requests_total{op=update,result=ok}"), 1.0);
    assert_eq!(
        get("occupancy_requests_total{op=update,result=not_member}"),
        1.0
    );
    assert_eq!(
        get("occupancy_request_duration_seconds{op=join}"),
        2.0,
        "one sample per join"
    );
    assert_eq!(get("occupancy_released_total"), 2.0);
    assert_eq!(get("occupancy_displaced_total"), 1.0);
    assert_eq!(get("occupancy_connects_total"), 2.0);
    assert_eq!(get("occupancy_resumes_total{result=refused}"), 1.0);
    assert_eq!(get("occupancy_disconnects_total{ending=closed}"), 1.0);
    assert_eq!(get("occupancy_rooms"), 1.0);
    assert_eq!(get("occupancy_sessions"), 2.0);
    assert_eq!(get("occupancy_sessions_in_grace"), 1.0);
    assert_eq!(get("occupancy_connections"), 1.0);
}
