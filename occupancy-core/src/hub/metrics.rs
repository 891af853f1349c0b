//! What the Hub records through the [`metrics`] facade: counters of what happened, the latency of
//! each request, and gauges read on demand ([`Hub::record_gauges`](crate::Hub::record_gauges)).
//! The facade is a no-op until the application installs a recorder (a Prometheus exporter, say:
//! the documents and multi_node examples serve `GET /metrics`), so a Hub without one pays an
//! atomic load per call site.
//!
//! The names, kinds and labels are listed in the crate docs ("Metrics").

use std::time::Instant;

use metrics::{Key, Label, Level, Metadata, counter, gauge, histogram};

use crate::config::Ending;
use crate::error::Error;
use crate::machine::Stats;

const REQUESTS: &str = "occupancy_requests_total";
const DURATION: &str = "occupancy_request_duration_seconds";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The keys of a successful request of `op` and of its latency, built at compile time: the
/// `counter!` macro with a label that is not a literal builds its key on the heap at every call
/// (two allocations per request, about a third of a small room's join+leave in the Hub bench),
/// whether a recorder is installed or not.
macro_rules! op_keys {
    ($op:literal) => {{
        static OK: [Label; 2] = [
            Label::from_static_parts("op", $op),
            Label::from_static_parts("result", "ok"),
        ];
        static OP: [Label; 1] = [Label::from_static_parts("op", $op)];
        static OK_KEY: Key = Key::from_static_parts(REQUESTS, &OK);
        static OP_KEY: Key = Key::from_static_parts(DURATION, &OP);
        Some((&OK_KEY, &OP_KEY))
    }};
}

fn keys(op: &str) -> Option<(&'static Key, &'static Key)> {
    match op {
        "join" => op_keys!("join"),
        "leave" => op_keys!("leave"),
        "takeover" => op_keys!("takeover"),
        "watch" => op_keys!("watch"),
        "unwatch" => op_keys!("unwatch"),
        "update" => op_keys!("update"),
        "active" => op_keys!("active"),
        _ => None,
    }
}

/// A session's request ended with `r`, `started` at the call.
pub(super) fn request<T>(op: &'static str, started: Instant, r: &Result<T, Error>) {
    let seconds = started.elapsed().as_secs_f64();
    match (keys(op), r) {
        (Some((ok, duration)), Ok(_)) => metrics::with_recorder(|rec| {
            rec.register_counter(ok, &METADATA).increment(1);
            rec.register_histogram(duration, &METADATA).record(seconds);
        }),
        // Failures are rarer: the macros' keys (built per call) are fine there.
        (_, r) => {
            let result = r.as_ref().map_or_else(Error::code, |_| "ok");
            counter!(REQUESTS, "op" => op, "result" => result).increment(1);
            histogram!(DURATION, "op" => op).record(seconds);
        }
    }
}

pub(super) fn released() {
    counter!("occupancy_released_total").increment(1);
}

/// `occupancy_handover_seconds`: how long a hand-over took to reach the new holder's connection,
/// from the moment this Hub's registry took the `released` for delivery (just after the change
/// that released the room; with a shared backend, once the change reached this node) to the
/// moment the connection took it out of its notice queue to send it. It is what the Hub and the
/// application's connection task add to a hand-over (a busy runtime, a connection still writing
/// earlier frames), not the network's part. `released_at`: the moment the queue kept beside the
/// notice, `None` for other notices (nothing recorded).
///
/// Inlined into the connection's read of every notice, where most are not a `released`: only
/// the check stays on that path.
#[inline]
pub(super) fn handover(released_at: Option<Instant>) {
    if let Some(at) = released_at {
        handover_since(at);
    }
}

#[inline(never)]
fn handover_since(at: Instant) {
    histogram!("occupancy_handover_seconds").record(at.elapsed().as_secs_f64());
}

pub(super) fn displaced(reason: crate::notice::DisplacedReason) {
    counter!("occupancy_displaced_total", "reason" => reason.as_str()).increment(1);
}

pub(super) fn kicked() {
    counter!("occupancy_kicks_total").increment(1);
}

pub(super) fn forced_release() {
    counter!("occupancy_forced_releases_total").increment(1);
}

pub(super) fn slow_consumer() {
    counter!("occupancy_slow_consumers_total").increment(1);
}

pub(super) fn connected() {
    counter!("occupancy_connects_total").increment(1);
}

pub(super) fn disconnected(ending: Ending, n: usize) {
    let ending = match ending {
        Ending::Lost => "lost",
        Ending::Closed => "closed",
    };
    counter!("occupancy_disconnects_total", "ending" => ending).increment(n as u64);
}

pub(super) fn closed() {
    counter!("occupancy_closes_total").increment(1);
}

pub(super) fn resume(accepted: bool) {
    let result = if accepted { "accepted" } else { "refused" };
    counter!("occupancy_resumes_total", "result" => result).increment(1);
}

pub(super) fn graces_expired(n: usize) {
    counter!("occupancy_graces_expired_total").increment(n as u64);
}

pub(super) fn gauges(stats: &Stats, connections: usize) {
    gauge!("occupancy_rooms").set(stats.rooms as f64);
    gauge!("occupancy_occupants").set(stats.occupants as f64);
    gauge!("occupancy_watchers").set(stats.watchers as f64);
    gauge!("occupancy_sessions").set(stats.sessions as f64);
    gauge!("occupancy_sessions_in_grace").set(stats.sessions_in_grace as f64);
    gauge!("occupancy_connections").set(connections as f64);
}
