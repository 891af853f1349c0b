//! What the Hub records through the `metrics` facade, read back with metrics-util's debugging
//! recorder: one scenario, every counter it should move, by the names and labels the crate docs
//! list ("Metrics").

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use occupancy_core::{Ending, Error, Hub, Meta, NoticeKind, ResumeToken};
use serde_json::json;

type Snapshot = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The counters and gauges of a snapshot, as `name{label=value,...}` → value (a histogram's
/// value: how many samples it has).
fn read(snapshot: &Snapshot) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshot {
        let (kind, key) = (key.kind(), key.key());
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
            (MetricKind::Counter, DebugValue::Counter(n)) => *n as f64,
            (MetricKind::Gauge, DebugValue::Gauge(g)) => g.into_inner(),
            (MetricKind::Histogram, DebugValue::Histogram(h)) => h.len() as f64,
            other => panic!("unexpected {other:?}"),
        };
        out.insert(name, v);
    }
    out
}

/// The samples of the histogram `name` (without labels).
fn samples(snapshot: &Snapshot, name: &str) -> Vec<f64> {
    snapshot
        .iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Histogram(h) if key.key().name() == name => {
                Some(h.iter().map(|v| v.into_inner()).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {name}"))
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
        let (a, mut an) = hub
            .connect(Some("ann".into()), Meta::empty())
            .await
            .unwrap();
        let (b, mut bn) = hub
            .connect(Some("bob".into()), Meta::empty())
            .await
            .unwrap();
        a.join("doc", None).await.unwrap();
        b.join("doc", None).await.unwrap();
        b.takeover("doc").await.unwrap(); // Ann displaced, Bob released
        b.leave("doc").await.unwrap(); // Ann released
        // Each reads everything it was told: occupied, displaced and presence notices besides
        // the two `released`, which alone are timed (when taken from the queue).
        let mut told = 0;
        while an.try_recv().is_some() || bn.try_recv().is_some() {
            told += 1;
        }
        assert!(told > 2, "{told} notices");
        let status = Meta::from_value(json!({ "status": "editing" })).unwrap();
        a.update("doc", status.clone()).await.unwrap();
        assert_eq!(b.update("doc", status).await.err(), Some(Error::NotMember));
        a.active("doc").await.unwrap();
        // Carol joins behind Ann; the application forces a release, then kicks Carol.
        let (c, _cn) = hub
            .connect(Some("carol".into()), Meta::empty())
            .await
            .unwrap();
        c.join("doc", None).await.unwrap();
        hub.release("doc").await.unwrap();
        assert!(hub.kick(c.id()).await.unwrap());
        assert!(hub.resume(ResumeToken(7)).await.is_err());
        b.disconnect_as(Ending::Closed).await;
        hub.record_gauges().await.unwrap();
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let m = read(&snapshot);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from {m:#?}"))
    };
    assert_eq!(get("occupancy_requests_total{op=join,result=ok}"), 3.0);
    assert_eq!(get("occupancy_requests_total{op=active,result=ok}"), 1.0);
    assert_eq!(get("occupancy_requests_total{op=takeover,result=ok}"), 1.0);
    assert_eq!(get("occupancy_requests_total{op=leave,result=ok}"), 1.0);
    assert_eq!(get("occupancy_requests_total{op=update,result=ok}"), 1.0);
    assert_eq!(
        get("occupancy_requests_total{op=update,result=not_member}"),
        1.0
    );
    assert_eq!(
        get("occupancy_request_duration_seconds{op=join}"),
        3.0,
        "one sample per join"
    );
    assert_eq!(
        get("occupancy_released_total"),
        4.0,
        "take over, leave, release, kick"
    );
    let handovers = samples(&snapshot, "occupancy_handover_seconds");
    assert_eq!(
        handovers.len(),
        2,
        "one sample per hand-over: {handovers:?}"
    );
    assert!(
        handovers.iter().all(|s| (0.0..10.0).contains(s)),
        "seconds: {handovers:?}"
    );
    assert_eq!(get("occupancy_displaced_total{reason=takeover}"), 1.0);
    assert_eq!(get("occupancy_displaced_total{reason=server}"), 1.0);
    assert_eq!(get("occupancy_forced_releases_total"), 1.0);
    assert_eq!(get("occupancy_kicks_total"), 1.0);
    assert_eq!(get("occupancy_connects_total"), 3.0);
    assert_eq!(get("occupancy_resumes_total{result=refused}"), 1.0);
    assert_eq!(get("occupancy_disconnects_total{ending=closed}"), 1.0);
    assert_eq!(get("occupancy_rooms"), 1.0);
    assert_eq!(get("occupancy_sessions"), 2.0);
    assert_eq!(get("occupancy_sessions_in_grace"), 1.0);
    assert_eq!(get("occupancy_connections"), 1.0);
}

/// A hand-over is timed when the connection takes its `released` from the queue: not while it
/// waits there, and not for a connection that was closed meanwhile.
#[test]
fn a_hand_over_is_timed_when_its_released_is_taken() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Histograms are drained by each snapshot: the samples recorded since the last one.
    let taken = || {
        let snapshot = snapshotter.snapshot().into_vec();
        let timed = snapshot
            .iter()
            .any(|(k, ..)| k.key().name() == "occupancy_handover_seconds");
        if timed {
            samples(&snapshot, "occupancy_handover_seconds").len()
        } else {
            0
        }
    };
    rt.block_on(async {
        let hub = Hub::new();
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, mut bn) = hub.connect(None, Meta::empty()).await.unwrap();
        let (c, mut cn) = hub.connect(None, Meta::empty()).await.unwrap();
        for s in [&a, &b, &c] {
            s.join("doc", None).await.unwrap();
        }
        a.leave("doc").await.unwrap(); // b released
        while cn.try_recv().is_some() {} // c is told only presence
        assert_eq!(taken(), 0, "queued, not taken yet");
        let mut kinds = Vec::new();
        while let Some(n) = bn.try_recv() {
            kinds.push(n.kind);
        }
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, NoticeKind::Released { .. }))
        );
        assert_eq!(taken(), 1);

        // c is released, and its connection ends before it reads: the notice is never taken.
        b.leave("doc").await.unwrap();
        c.disconnect().await;
        assert!(cn.recv().await.is_none());
        assert_eq!(taken(), 0);
    });
}
