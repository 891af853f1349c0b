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
//!   presences, and a crowded room's presences stay one fan-out entry (`outbox.rs`) whose
//!   notices are made here, outside the state lock, as they are delivered. The notices before a
//!   fan-out are delivered as a chunk of their own, and the yield after it lets the new holder's
//!   connection task write `released` before any presence of the fan-out is made (on a single
//!   core too). Another room waits for this fan-out only if it shares the lane (1 in [`LANES`]).
//! - A caller whose future is dropped while it holds work to deliver hands that work to a spawned
//!   task, so a cancelled request never strands another session's `released`; what it had taken
//!   from the lane but not delivered stays in the lane's delivery buffer and goes out first.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::NoticeSink;
use crate::machine::Machine;
use crate::notice::Notice;
use crate::outbox::{Outbox, Outgoing};

/// How many lanes rooms are spread over.
pub(crate) const LANES: usize = 1024;

/// How many notices are delivered between two yields to the runtime.
pub(crate) const CHUNK: usize = 256;

#[derive(Default)]
struct Lane {
    /// Notices waiting for delivery, in state order (pushed under the state lock).
    queued: Mutex<Outbox>,
    /// Held while delivering this lane; guards the deliverer's buffer, which is swapped with
    /// `queued` so that neither allocates in steady state. Whatever a cancelled deliverer left
    /// in it goes out before anything queued after.
    delivering: tokio::sync::Mutex<Outbox>,
}

impl Lane {
    fn queued(&self) -> MutexGuard<'_, Outbox> {
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

/// One delivery between two yields: at most `left` notices, and never the start of a fan-out
/// after other notices — the urgent notices of a change (the machine queues them before its
/// fan-out) are handed over on their own, and the yield after them lets the new holder's
/// connection task write `released` before any presence of the fan-out is delivered (on a
/// single core too). Another room waits for a fan-out only if it shares the lane (1 in
/// [`LANES`]).
struct Run<'a> {
    from: &'a mut Outbox,
    /// How many more notices this run may take.
    left: usize,
    /// The last notice came from a fan-out that has more.
    in_fanout: bool,
}

impl<'a> Run<'a> {
    fn new(from: &'a mut Outbox) -> Self {
        Run {
            from,
            left: CHUNK,
            in_fanout: false,
        }
    }
}

impl Iterator for Run<'_> {
    type Item = Notice;

    fn next(&mut self) -> Option<Notice> {
        let started = self.left < CHUNK;
        if self.left == 0 || (started && !self.in_fanout && self.from.fanout_next()) {
            return None;
        }
        let (n, more) = self.from.pop_part()?;
        self.left -= 1;
        self.in_fanout = more;
        Some(n)
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
        if let Some(room) = m.front_notice_room() {
            let lane = self.lane_of(room.as_str());
            if m.notices_all_about(room.as_str().as_ptr()) {
                let mut q = self.lanes[lane].queued();
                if q.is_empty() {
                    m.swap_outbox(&mut q);
                    touched.add(lane as u16);
                    return;
                }
            }
        }
        self.queue(std::iter::from_fn(|| m.pop_outgoing()), touched);
    }

    /// Queues notices (or fan-outs, kept whole) in their rooms' lanes. Call while holding the
    /// state lock, with the entries in the order the machine produced them.
    pub(crate) fn queue(&self, entries: impl Iterator<Item = Outgoing>, touched: &mut Touched) {
        // Consecutive entries are almost always of one room: hash and lock once per run.
        // The notices of one change share one room id allocation: compare addresses (only
        // compared, never followed), and hash a room's name only when it changes.
        let mut current: Option<(usize, MutexGuard<'_, Outbox>)> = None;
        let mut last_room: *const u8 = std::ptr::null();
        for e in entries {
            let room = e.room().as_str();
            if room.as_ptr() != last_room {
                let lane = self.lane_of(room);
                if current.as_ref().map(|(l, _)| *l) != Some(lane) {
                    drop(current.take());
                    current = Some((lane, self.lanes[lane].queued()));
                    touched.add(lane as u16);
                }
                last_room = room.as_ptr();
            }
            if let Some((_, q)) = current.as_mut() {
                q.push_entry(e);
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
        // What a cancelled deliverer left goes first; then everything queued so far, taken by
        // swapping buffers (no copy, no allocation). Anything queued after the swap is delivered
        // by whoever queued it: it waits for this lock and takes the lane itself.
        let mut swapped = false;
        loop {
            if buf.is_empty() {
                if swapped {
                    break;
                }
                std::mem::swap(&mut *lane.queued(), &mut *buf);
                swapped = true;
                continue;
            }
            sink.deliver(&mut Run::new(&mut buf));
            if !buf.is_empty() {
                // Let the sessions just woken (a new holder first) write before the rest.
                tokio::task::yield_now().await;
            }
        }
        if buf.capacity() > 4 * CHUNK {
            // After a burst: do not keep its buffer for ever.
            buf.shrink_to(CHUNK);
        }
    }

    fn lane_of(&self, room: &str) -> usize {
        (self.hasher.hash_one(room) as usize) % LANES
    }

    /// True when nothing is queued or left half-delivered in any lane (for tests).
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| l.queued().is_empty() && l.delivering.try_lock().is_ok_and(|b| b.is_empty()))
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
                        relay.queue(
                            (0..n).map(|s| released(s % 50, &room, v).into()),
                            &mut touched,
                        );
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
        use crate::notice::PresenceBody;
        use crate::outbox::Presences;
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
        let room = RoomId::parse("hot", 64).unwrap();
        let body = || PresenceBody {
            held_since: None,
            version: 2,
            holder: None,
            waiting: 0,
            occupants: vec![],
        };
        // What the machine queues when the holder of a crowded room leaves: the new holder's
        // `released`, then one fan-out entry.
        let mut out = Outbox::default();
        out.push(released(0, "hot", 2));
        let mut presences = Presences::new(&room, 300, &mut out);
        for s in 1..=300 {
            presences.tell(SessionId(s), Some(s as u32), body);
        }
        presences.finish();
        let mut touched = Touched::default();
        relay.queue(std::iter::from_fn(|| out.pop_entry()), &mut touched);
        relay.deliver(touched, &sink).await;
        let calls = calls.0.lock().unwrap();
        assert_eq!(calls[0], vec![false], "the released alone first");
        assert!(calls[1..].iter().flatten().all(|&p| p));
        assert_eq!(calls[1..].iter().map(Vec::len).sum::<usize>(), 300);
    }

    /// A deliverer dropped at the yield after a fan-out's first chunk leaves the rest in the
    /// lane's delivery buffer: the task spawned in its place delivers it, in order, once.
    #[tokio::test]
    async fn a_fan_out_cancelled_half_way_is_finished_in_order() {
        use crate::notice::PresenceBody;
        use crate::outbox::Presences;
        use std::future::Future;
        let relay = Arc::new(Relay::default());
        let record = Arc::new(Record::default());
        let sink: Arc<dyn NoticeSink> = record.clone();
        let room = RoomId::parse("hot", 64).unwrap();
        let mut out = Outbox::default();
        let mut presences = Presences::new(&room, 3 * CHUNK, &mut out);
        for s in 0..3 * CHUNK as u64 {
            presences.tell(SessionId(s), Some(s as u32), || PresenceBody {
                held_since: None,
                version: 5,
                holder: None,
                waiting: 0,
                occupants: vec![],
            });
        }
        presences.finish();
        let mut touched = Touched::default();
        relay.queue(std::iter::from_fn(|| out.pop_entry()), &mut touched);

        let mut call = Box::pin(relay.deliver(touched, &sink));
        std::future::poll_fn(|cx| {
            assert!(
                call.as_mut().poll(cx).is_pending(),
                "stops at the first yield"
            );
            std::task::Poll::Ready(())
        })
        .await;
        assert_eq!(record.0.lock().unwrap().len(), CHUNK, "one chunk out");
        drop(call);
        for _ in 0..100 {
            if record.0.lock().unwrap().len() == 3 * CHUNK {
                break;
            }
            tokio::task::yield_now().await;
        }
        let got: Vec<u64> = record.0.lock().unwrap().iter().map(|r| r.0.0).collect();
        assert_eq!(got, (0..3 * CHUNK as u64).collect::<Vec<_>>());
        assert!(relay.is_idle());
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
        relay.queue([released(7, "r", 3).into()].into_iter(), &mut earlier);
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
        relay.queue([released(1, "a", 1).into()].into_iter(), &mut touched);
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
            (0..(2 * CHUNK as u64 + 1)).map(|s| released(s, "hot", 7).into()),
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
