//! The hand-off between the state lock and delivery: notices leave the state machine while its
//! lock is held (in the order the changes happened) and reach the sessions after it is released.
//!
//! Why: delivering under the state lock made every other room wait for a crowded room's fan-out
//! (10,000 presences after a hand-over), and on one core the new holder's connection task could
//! not even write its `released` until that fan-out was done (DESIGN.md "Cost rules": no delivery
//! under a state lock, urgent first).
//!
//! How, with nothing but two standard locks per lane:
//! - Rooms are spread over [`LANES`] lanes by a keyed hash of the room id. Under the state lock,
//!   a change's notices are appended to their room's lane (a `std` mutex around a queue): each
//!   lane's queue is therefore in state order, and each room's notices are in version order.
//! - After the state lock is released, the caller takes the lane's delivery lock (a fair tokio
//!   mutex) and delivers everything queued in the lane — its own notices and any queued before
//!   them — in chunks of [`CHUNK`], yielding to the runtime between chunks. When it returns, its
//!   notices have been delivered: either an earlier holder of the delivery lock delivered them,
//!   or it did. Deliveries of one lane never overlap, so no session sees a room's versions out
//!   of order.
//! - Urgent first: the machine puts a change's `released` / `displaced` / `occupied` before its
//!   presences; when a fan-out is queued, those leading urgent notices are delivered as a chunk
//!   of their own, and the yield after it lets the new holder's connection task write
//!   `released` before any presence of the fan-out is delivered (on a single core too). Another
//!   room waits for this fan-out only if it shares the lane (1 in [`LANES`]).
//! - A caller whose future is dropped while it holds work to deliver hands that work to a spawned
//!   task, so a cancelled request never strands another session's `released`.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::NoticeSink;
use crate::machine::Machine;
use crate::notice::{Notice, NoticeKind};

/// How many lanes rooms are spread over.
pub(crate) const LANES: usize = 1024;

/// How many notices are delivered between two yields to the runtime.
pub(crate) const CHUNK: usize = 256;

#[derive(Default)]
struct Lane {
    /// Notices waiting for delivery, in state order (pushed under the state lock).
    queued: Mutex<VecDeque<Notice>>,
    /// Held while delivering this lane; guards the deliverer's buffer, which is swapped with
    /// `queued` so that neither allocates in steady state.
    delivering: tokio::sync::Mutex<VecDeque<Notice>>,
}

impl Lane {
    fn queued(&self) -> MutexGuard<'_, VecDeque<Notice>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lanes of one backend. See the module docs.
pub(crate) struct Relay {
    lanes: Box<[Lane]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            lanes: (0..LANES).map(|_| Lane::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// The lanes a call queued notices in (what it must deliver after the state lock is released),
/// in the order they were first touched. Almost always one (no allocation); a batch touching
/// many rooms may fill several.
#[derive(Debug, Default)]
pub(crate) enum Touched {
    /// Nothing queued.
    #[default]
    None,
    /// One lane.
    One(u16),
    /// Several lanes.
    Many(Vec<u16>),
}

impl Touched {
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Touched::None)
    }

    fn add(&mut self, lane: u16) {
        match self {
            Touched::None => *self = Touched::One(lane),
            Touched::One(l) if *l == lane => {}
            Touched::One(l) => *self = Touched::Many(vec![*l, lane]),
            Touched::Many(v) => {
                if !v.contains(&lane) {
                    v.push(lane);
                }
            }
        }
    }

    fn as_slice(&self) -> &[u16] {
        match self {
            Touched::None => &[],
            Touched::One(l) => std::slice::from_ref(l),
            Touched::Many(v) => v,
        }
    }
}

impl Relay {
    /// Runs `f` on the machine behind `lock`, queues the notices it produced in their lanes
    /// while still holding the lock (so in state order), then delivers them after releasing it.
    /// How both in-memory backends change state. Without a `sink` (not attached to a Hub yet)
    /// the notices are dropped.
    ///
    /// `room` is the room a request is about (join, leave, take over, watch, unwatch): its lane
    /// is delivered too even when the change made no notice, so that notices queued for that
    /// room by an earlier change (whose caller has released the lock but not yet delivered) reach
    /// their sessions before this call returns — a `leave` that tells nobody must still not
    /// answer before the presence a change before it sent the leaver.
    pub(crate) async fn run<R>(
        self: &Arc<Self>,
        lock: &Mutex<Machine>,
        sink: Option<&Arc<dyn NoticeSink>>,
        room: Option<&str>,
        f: impl FnOnce(&mut Machine) -> R,
    ) -> R {
        let mut touched = Touched::default();
        if let Some(room) = room {
            touched.add(self.lane_of(room) as u16);
        }
        let r = {
            // A panic inside the machine would be a bug; its state is still consistent enough.
            let mut m = lock.lock().unwrap_or_else(|p| p.into_inner());
            let r = f(&mut m);
            m.run_enabled_checks();
            if m.has_notices() {
                match sink {
                    Some(_) => self.queue_from(&mut m, &mut touched),
                    None => m.drain_notices().for_each(drop),
                }
            }
            r
        };
        if let Some(sink) = sink
            && !touched.is_empty()
        {
            self.deliver(touched, sink).await;
        }
        r
    }

    /// Queues the machine's pending notices in their rooms' lanes. Call while holding the state
    /// lock. The common case — one room's change into an idle lane — swaps buffers with the
    /// machine's outbox instead of moving each notice.
    pub(crate) fn queue_from(&self, m: &mut Machine, touched: &mut Touched) {
        if let Some(first) = m.peek_notice() {
            let room = first.room.as_str().as_ptr();
            if m.notices_all_about(room) {
                let lane = self.lane_of(first.room.as_str());
                let mut q = self.lanes[lane].queued();
                if q.is_empty() {
                    m.swap_notices(&mut q);
                    touched.add(lane as u16);
                    return;
                }
            }
        }
        self.queue(m.drain_notices(), touched);
    }

    /// Queues notices in their rooms' lanes. Call while holding the state lock, with the
    /// notices in the order the machine produced them.
    pub(crate) fn queue(&self, notices: impl Iterator<Item = Notice>, touched: &mut Touched) {
        // Consecutive notices are almost always of one room: hash and lock once per run.
        // The notices of one change share one room id allocation: compare addresses (only
        // compared, never followed), and hash a room's name only when it changes.
        let mut current: Option<(usize, MutexGuard<'_, VecDeque<Notice>>)> = None;
        let mut last_room: *const u8 = std::ptr::null();
        for n in notices {
            let room = n.room.as_str().as_ptr();
            if room != last_room {
                let lane = self.lane_of(n.room.as_str());
                if current.as_ref().map(|(l, _)| *l) != Some(lane) {
                    drop(current.take());
                    current = Some((lane, self.lanes[lane].queued()));
                    touched.add(lane as u16);
                }
                last_room = room;
            }
            if let Some((_, q)) = current.as_mut() {
                q.push_back(n);
            }
        }
    }

    /// Delivers everything queued in the touched lanes (see the module docs), in the order they
    /// were touched (a resume tells its rooms in join order). Returns once the caller's own
    /// notices have reached the sink.
    pub(crate) async fn deliver(self: &Arc<Self>, touched: Touched, sink: &Arc<dyn NoticeSink>) {
        let mut guard = Pending {
            relay: self,
            sink,
            touched,
            done: 0,
        };
        while let Some(&lane) = guard.touched.as_slice().get(guard.done) {
            self.deliver_lane(lane as usize, sink).await;
            guard.done += 1;
        }
    }

    async fn deliver_lane(&self, lane: usize, sink: &Arc<dyn NoticeSink>) {
        let lane = &self.lanes[lane];
        // Uncontended (the common case): no lock future at all.
        let mut buf = match lane.delivering.try_lock() {
            Ok(guard) => guard,
            Err(_) => lane.delivering.lock().await,
        };
        loop {
            let more = {
                let mut q = lane.queued();
                if q.len() <= CHUNK {
                    // Everything at once, by swapping buffers: no copy, no allocation.
                    std::mem::swap(&mut *q, &mut *buf);
                    false
                } else {
                    // A fan-out: its urgent notices (the machine puts them first) go out on their
                    // own, so the new holder's `released` is written before any presence frame.
                    let urgent = q
                        .iter()
                        .take(CHUNK)
                        .take_while(|n| !matches!(n.kind, NoticeKind::Presence(_)))
                        .count();
                    buf.extend(q.drain(..if urgent > 0 { urgent } else { CHUNK }));
                    true
                }
            };
            if buf.is_empty() {
                return;
            }
            sink.deliver(&mut buf.drain(..));
            if buf.capacity() > 4 * CHUNK {
                // After a crowded room's fan-out: do not keep its buffer for ever.
                buf.shrink_to(CHUNK);
            }
            // Anything queued after the swap is delivered by whoever queued it: it waits for
            // this lock and drains the lane itself.
            if !more {
                return;
            }
            // Let the sessions just woken (the new holder first) write before the rest.
            tokio::task::yield_now().await;
        }
    }

    fn lane_of(&self, room: &str) -> usize {
        (self.hasher.hash_one(room) as usize) % LANES
    }

    /// True when nothing is queued in any lane (for tests).
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.lanes.iter().all(|l| l.queued().is_empty())
    }
}

/// Lanes a caller still has to deliver. Dropped before the end only when the caller's future is
/// dropped mid-delivery: the rest is then delivered by a spawned task.
struct Pending<'a> {
    relay: &'a Arc<Relay>,
    sink: &'a Arc<dyn NoticeSink>,
    touched: Touched,
    /// How many of `touched` are delivered.
    done: usize,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let rest = &self.touched.as_slice()[self.done.min(self.touched.as_slice().len())..];
        if rest.is_empty() {
            return;
        }
        let lanes = rest.to_vec();
        let (relay, sink) = (self.relay.clone(), self.sink.clone());
        // Without a runtime (it is shutting down) nobody is left to read the notices.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for lane in lanes {
                    relay.deliver_lane(lane as usize, &sink).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{RoomId, SessionId};
    use crate::notice::NoticeKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sink that records what it got, per session, in order.
    #[derive(Default)]
    struct Record(Mutex<Vec<(SessionId, String, u64)>>, AtomicUsize);

    impl NoticeSink for Record {
        fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>) {
            self.1.fetch_add(1, Ordering::Relaxed);
            let mut got = self.0.lock().unwrap();
            for n in notices {
                got.push((n.session, n.room.to_string(), n.version()));
            }
        }
        fn is_local(&self, _: SessionId) -> bool {
            true
        }
        fn session_ended(&self, _: SessionId, _: Option<crate::Error>) {}
    }

    fn released(session: u64, room: &str, version: u64) -> Notice {
        Notice {
            session: SessionId(session),
            room: RoomId::parse(room, 64).unwrap(),
            kind: NoticeKind::Released { version },
        }
    }

    /// Many tasks change rooms (each change queued under one "state lock", as the backend does)
    /// and deliver concurrently: every session sees each room's versions in order, and every
    /// notice arrives exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_deliver_each_room_in_version_order() {
        let relay = Arc::new(Relay::default());
        let record = Arc::new(Record::default());
        let sink: Arc<dyn NoticeSink> = record.clone();
        let state = Arc::new(Mutex::new(0u64)); // the "machine": a version clock
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let (relay, sink, state) = (relay.clone(), sink.clone(), state.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..200u64 {
                    let room = format!("room-{}", (t + i) % 5);
                    let mut touched = Touched::default();
                    {
                        let mut clock = state.lock().unwrap();
                        *clock += 1;
                        // A fan-out of several chunks now and then, to the same 50 sessions.
                        let n = if i % 50 == 0 { 3 * CHUNK as u64 } else { 3 };
                        let v = *clock;
                        relay.queue((0..n).map(|s| released(s % 50, &room, v)), &mut touched);
                    }
                    relay.deliver(touched, &sink).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(relay.is_idle());
        let got = record.0.lock().unwrap();
        let mut last = std::collections::HashMap::new();
        for (s, room, v) in got.iter() {
            let prev = last.insert((*s, room.clone()), *v).unwrap_or(0);
            assert!(*v >= prev, "{s:?} in {room}: version {v} after {prev}");
        }
        let expected: u64 = (0..8u64)
            .map(|_| {
                (0..200u64)
                    .map(|i| if i % 50 == 0 { 3 * CHUNK as u64 } else { 3 })
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(got.len() as u64, expected, "each notice exactly once");
    }

    /// A hand-over in a crowded room: the `released` is delivered on its own, before any of the
    /// presences queued behind it.
    #[tokio::test]
    async fn the_urgent_head_of_a_fan_out_is_delivered_alone() {
        use crate::notice::{Presence, PresenceBody};
        #[derive(Default)]
        struct Calls(Mutex<Vec<Vec<bool>>>);
        impl NoticeSink for Calls {
            fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>) {
                let kinds = notices
                    .map(|n| matches!(n.kind, NoticeKind::Presence(_)))
                    .collect();
                self.0.lock().unwrap().push(kinds);
            }
            fn is_local(&self, _: SessionId) -> bool {
                true
            }
            fn session_ended(&self, _: SessionId, _: Option<crate::Error>) {}
        }
        let relay = Arc::new(Relay::default());
        let calls = Arc::new(Calls::default());
        let sink: Arc<dyn NoticeSink> = calls.clone();
        let body = Arc::new(PresenceBody {
            version: 2,
            holder: None,
            waiting: 0,
            occupants: vec![],
        });
        let presence = |s: u64| Notice {
            session: SessionId(s),
            room: RoomId::parse("hot", 64).unwrap(),
            kind: NoticeKind::Presence(Presence {
                body: body.clone(),
                position: Some(s as u32),
            }),
        };
        let fan_out = std::iter::once(released(0, "hot", 2)).chain((1..=300).map(presence));
        let mut touched = Touched::default();
        relay.queue(fan_out, &mut touched);
        relay.deliver(touched, &sink).await;
        let calls = calls.0.lock().unwrap();
        assert_eq!(calls[0], vec![false], "the released alone first");
        assert!(calls[1..].iter().flatten().all(|&p| p));
        assert_eq!(calls[1..].iter().map(Vec::len).sum::<usize>(), 300);
    }

    /// A change queued its notices for room "r" and released the state lock, but its caller has
    /// not delivered them yet. A request about "r" whose own change tells nobody (a leave from
    /// the back of the line) must still deliver them before it returns: otherwise the leaver's
    /// `left` could be written before the presence the earlier change sent it (found by the
    /// churn soak: "notice after `left`").
    #[tokio::test]
    async fn a_request_that_tells_nobody_still_delivers_its_rooms_queued_notices() {
        let relay = Arc::new(Relay::default());
        let record = Arc::new(Record::default());
        let sink: Arc<dyn NoticeSink> = record.clone();
        let machine = Mutex::new(crate::Machine::default());
        // The earlier change: queued under the lock, not delivered yet.
        let mut earlier = Touched::default();
        relay.queue([released(7, "r", 3)].into_iter(), &mut earlier);
        // The request about "r": its change makes no notice.
        relay.run(&machine, Some(&sink), Some("r"), |_| ()).await;
        assert_eq!(
            record.0.lock().unwrap().as_slice(),
            &[(SessionId(7), "r".to_string(), 3)],
            "delivered before the request returned"
        );
        // The earlier caller's own delivery then finds nothing left.
        relay.deliver(earlier, &sink).await;
        assert_eq!(record.0.lock().unwrap().len(), 1);
    }

    /// A caller dropped while it waits for a lane still gets its notices delivered.
    #[tokio::test]
    async fn a_cancelled_delivery_is_finished_by_a_spawned_task() {
        let relay = Arc::new(Relay::default());
        let record = Arc::new(Record::default());
        let sink: Arc<dyn NoticeSink> = record.clone();
        let mut touched = Touched::default();
        relay.queue([released(1, "a", 1)].into_iter(), &mut touched);
        let lane = relay.lane_of("a");
        // Someone else is delivering that lane: our call must wait, and we give up.
        let busy = relay.lanes[lane].delivering.lock().await;
        let call = relay.deliver(touched, &sink);
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(10), call).await;
        assert!(timed_out.is_err());
        assert!(record.0.lock().unwrap().is_empty());
        drop(busy);
        for _ in 0..100 {
            if !record.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            record.0.lock().unwrap().len(),
            1,
            "the spawned task delivered it"
        );
        assert!(relay.is_idle());
    }

    /// A fan-out larger than a chunk is delivered in chunks (the first one holds the urgent
    /// notices), yielding in between.
    #[tokio::test]
    async fn a_large_fan_out_goes_out_in_chunks() {
        let relay = Arc::new(Relay::default());
        let record = Arc::new(Record::default());
        let sink: Arc<dyn NoticeSink> = record.clone();
        let mut touched = Touched::default();
        relay.queue(
            (0..(2 * CHUNK as u64 + 1)).map(|s| released(s, "hot", 7)),
            &mut touched,
        );
        relay.deliver(touched, &sink).await;
        assert_eq!(record.1.load(Ordering::Relaxed), 3);
        assert_eq!(
            record.0.lock().unwrap()[0].0,
            SessionId(0),
            "in order: the first first"
        );
    }
}
