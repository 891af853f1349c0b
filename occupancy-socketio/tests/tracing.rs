//! Every event logged while a socket is served, the Hub's included, carries the
//! `occupancy_connection` span with the socket's session id and principal (absent when
//! anonymous). In its own test binary, with the subscriber installed for the test's thread before
//! anything is logged: tracing caches each callsite's interest across threads, and another test
//! logging without a subscriber first would turn these callsites off.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Client, hub, server};
use occupancy_core::Identity;
use occupancy_socketio::Handshake;
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The fields of a span or an event, as text.
#[derive(Default, Clone, Debug)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

/// One event: its message, its own fields, and the name and fields of each span it was logged
/// in (innermost first).
#[derive(Debug)]
struct Logged {
    message: String,
    fields: Fields,
    spans: Vec<(&'static str, Fields)>,
}

impl Logged {
    /// The fields of the one `occupancy_connection` span this event was logged in.
    fn connection(&self) -> &Fields {
        let conns: Vec<_> = self
            .spans
            .iter()
            .filter(|(name, _)| *name == "occupancy_connection")
            .collect();
        assert_eq!(conns.len(), 1, "one connection span: {self:?}");
        &conns[0].1
    }
}

/// Keeps each span's fields (also those recorded later) and every event with its spans'.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Logged>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut ext = span.extensions_mut();
        values.record(ext.get_mut::<Fields>().unwrap());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let spans = ctx
            .event_scope(event)
            .into_iter()
            .flatten()
            .map(|s| (s.name(), s.extensions().get::<Fields>().unwrap().clone()))
            .collect();
        self.0.lock().unwrap().push(Logged {
            message,
            fields,
            spans,
        });
    }
}

impl Capture {
    /// The events with this message that `f` picks, taken out of the capture.
    fn take(&self, message: &str, f: impl Fn(&Logged) -> bool) -> Vec<Logged> {
        let mut all = self.0.lock().unwrap();
        let (hits, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|e| e.message == message && f(e));
        *all = rest;
        hits
    }

    /// The one event with this message about `session`: the session its own fields name (the
    /// Hub's events name one), else its connection span's.
    fn one(&self, message: &str, session: &str) -> Logged {
        let mut hits = self.take(message, |e| {
            let about = e.fields.0.get("session");
            about
                .or_else(|| e.connection().0.get("session"))
                .map(String::as_str)
                == Some(session)
        });
        assert_eq!(hits.len(), 1, "one {message:?} of {session}: {hits:?}");
        hits.pop().unwrap()
    }
}

/// `principal` when the connection has one; no such field when it is anonymous.
fn assert_span(logged: &Logged, session: &str, principal: Option<&str>) {
    let span = logged.connection();
    assert_eq!(
        span.0.get("session").map(String::as_str),
        Some(session),
        "{logged:?}"
    );
    assert_eq!(
        span.0.get("principal").map(String::as_str),
        principal,
        "{logged:?}"
    );
}

// A current-thread runtime: the server's tasks (socketioxide's handlers, the adapter's workers)
// run on the test's thread, under its subscriber.
#[tokio::test]
async fn a_sockets_events_carry_its_session_and_principal() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let srv = server(
        hub(0),
        |b| b,
        |o| {
            o.identify(|h: &Handshake<'_>| {
                Ok(match h.auth.get("user").and_then(Value::as_str) {
                    Some(user) => Identity::user(user),
                    None => Identity::anonymous(),
                })
            })
        },
    )
    .await;
    let url = srv.ws_url();
    let mut ann = Client::connect_with(&url, Some(json!({"user": "ann"})), &[])
        .await
        .unwrap();
    let mut anon = Client::connect(&url).await;
    let session = |c: &Client| {
        let hello = c.events("occupancy:hello");
        hello[0]["session"].as_str().unwrap().to_owned()
    };
    ann.wait_for("occupancy:hello", |_| true).await;
    anon.wait_for("occupancy:hello", |_| true).await;
    let (a, b) = (session(&ann), session(&anon));
    assert_ne!(a, b);

    assert_eq!(
        ann.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    assert_eq!(
        anon.call("occupancy:join", json!("doc")).await["position"],
        1
    );
    // A refusal, logged by the Hub inside the request.
    let refused = anon
        .call(
            "occupancy:update",
            json!({"room": "other", "meta": {"x": 1}}),
        )
        .await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    // Ann leaves: the anonymous one is released, which the Hub logs while Ann's leave runs.
    ann.call("occupancy:leave", json!("doc")).await;
    anon.wait_for("occupancy:released", |_| true).await;
    // Ann's page closes: the worker's end is logged in its span.
    ann.disconnect();
    while capture
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.message != "socket worker ended")
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    assert_span(&capture.one("socket connected", &a), &a, Some("ann"));
    assert_span(&capture.one("joined", &a), &a, Some("ann"));
    assert_span(&capture.one("left", &a), &a, Some("ann"));
    assert_span(&capture.one("released", &b), &a, Some("ann"));
    assert_span(&capture.one("socket worker ended", &a), &a, Some("ann"));

    assert_span(&capture.one("socket connected", &b), &b, None);
    assert_span(&capture.one("joined", &b), &b, None);
    assert_span(&capture.one("refused", &b), &b, None);
    drop(anon);
}
