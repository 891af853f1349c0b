//! Tracing levels of the Hub: per-call events are debug, a slow-consumer kick is a warning. In its
//! own test binary so that no other test registers the same callsites concurrently (tracing caches
//! per-callsite interest across threads).

use std::time::Duration;

use occupancy_core::{Error, Hub, Meta};

const ROOM: &str = "document-1";

mod recorder {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    /// Records (level, message) of every event.
    #[derive(Clone, Default)]
    pub struct Recorder(pub Arc<Mutex<Vec<(Level, String)>>>);

    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), m.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

/// Per-call events are debug (joins, leaves, hand-overs, expiries, refusals); a slow-consumer kick
/// is a warning.
#[tokio::test(start_paused = true)]
async fn tracing_is_quiet_per_call() {
    let rec = recorder::Recorder::default();
    let _guard = tracing::subscriber::set_default(rec.clone());
    let hub = Hub::builder()
        .grace(Duration::from_secs(1))
        .notice_buffer(4)
        .build()
        .unwrap();
    let (a, mut an) = hub.connect(Some("a".into()), Meta::empty()).await.unwrap();
    let (b, mut bn) = hub.connect(Some("b".into()), Meta::empty()).await.unwrap();
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    b.takeover(ROOM).await.unwrap();
    let _ = a.join("", None).await;
    while an.try_recv().is_some() {}
    while bn.try_recv().is_some() {}
    b.disconnect().await;
    tokio::time::sleep(Duration::from_secs(2)).await; // expiry: a is released
    a.watch("w").await.unwrap();
    a.leave(ROOM).await.unwrap();
    {
        let events = rec.0.lock().unwrap();
        let loud: Vec<_> = events
            .iter()
            .filter(|(l, _)| *l <= tracing::Level::INFO)
            .collect();
        assert!(loud.is_empty(), "info or louder per call: {loud:?}");
        for what in [
            "joined",
            "took over",
            "released",
            "grace ended",
            "refused",
            "left",
        ] {
            assert!(
                events.iter().any(|(_, m)| m == what),
                "no debug event {what:?}: {events:?}"
            );
        }
    }
    // Overflow a's buffer of 4 (a no longer reads; presences of one room replace each other, so
    // a watches more rooms than the buffer holds and each changes): a warning.
    let mut others = Vec::new();
    for i in 0..8 {
        let room = format!("w{i}");
        if a.is_live() {
            let _ = a.watch(&room).await;
        }
        let (s, _n) = hub
            .connect(Some(format!("u{i}")), Meta::empty())
            .await
            .unwrap();
        s.join(&room, None).await.unwrap();
        others.push(s);
    }
    assert_eq!(an.close_reason(), Some(Error::SlowConsumer { capacity: 4 }));
    let events = rec.0.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|(l, m)| *l == tracing::Level::WARN && m.contains("slow consumer")),
        "{events:?}"
    );
}
