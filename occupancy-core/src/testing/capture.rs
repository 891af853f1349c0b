//! A tracing [`Layer`] that captures every event with the fields of the spans it was logged in,
//! for tests that check what a server logs and under which span (feature `testing`). The axum
//! and Socket.IO adapters use it to check that each connection's events carry its
//! `occupancy_connection` span with its session and principal.
//!
//! Install it for the test's thread before anything is logged (tracing caches each callsite's
//! interest across threads, and a callsite first hit without a subscriber stays off):
//!
//! ```
//! use occupancy_core::testing::capture::Capture;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let capture = Capture::default();
//! let _guard =
//!     tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
//! tracing::info!(session = "s1", "joined");
//! assert_eq!(capture.take("joined", |_| true).len(), 1);
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The fields of a span or an event, as text.
#[derive(Default, Clone, Debug)]
pub struct Fields(pub BTreeMap<String, String>);

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
pub struct Logged {
    /// The event's message.
    pub message: String,
    /// The event's own fields (without the message).
    pub fields: Fields,
    /// Each span the event was logged in, innermost first: its name and fields.
    pub spans: Vec<(&'static str, Fields)>,
}

impl Logged {
    /// The fields of the one `occupancy_connection` span this event was logged in.
    pub fn connection(&self) -> &Fields {
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
pub struct Capture(pub Arc<Mutex<Vec<Logged>>>);

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
    pub fn take(&self, message: &str, f: impl Fn(&Logged) -> bool) -> Vec<Logged> {
        let mut all = self.0.lock().unwrap();
        let (hits, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|e| e.message == message && f(e));
        *all = rest;
        hits
    }

    /// The one event with this message about `session`: the session its own fields name (the
    /// Hub's events name one), else its connection span's.
    pub fn one(&self, message: &str, session: &str) -> Logged {
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
pub fn assert_span(logged: &Logged, session: &str, principal: Option<&str>) {
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
