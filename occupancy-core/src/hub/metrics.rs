//! What the Hub records through the [`metrics`] facade: counters of what happened, the latency of
//! each request, and gauges read on demand ([`Hub::record_gauges`](crate::Hub::record_gauges)).
//! The facade is a no-op until the application installs a recorder (a Prometheus exporter, say:
//! the documents and multi_node examples serve `GET /metrics`), so a Hub without one pays an
//! atomic load per call site.
//!
//! The names, kinds and labels are listed in the crate docs ("Metrics").

use std::time::Instant;

use metrics::{counter, gauge, histogram};

use crate::config::Ending;
use crate::error::Error;
use crate::machine::Stats;

/// A session's request ended with `r`, `started` at the call.
pub(super) fn request<T>(op: &'static str, started: Instant, r: &Result<T, Error>) {
    let result = match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    counter!("occupancy_requests_total", "op" => op, "result" => result).increment(1);
    histogram!("occupancy_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

pub(super) fn released() {
    counter!("occupancy_released_total").increment(1);
}

pub(super) fn displaced() {
    counter!("occupancy_displaced_total").increment(1);
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
