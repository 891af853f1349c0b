//! The scenarios: hand-over latency with R idle rooms (and the server's memory per idle
//! connection on the way), join throughput into one room, and a hot room's hand-over.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::client::{self, Conn, Event, Kind, Proto, Target};
use crate::server;
use crate::stats::{Latencies, Summary};

/// How a holder gives the room up in the hand-over scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// v1 `leave` (the connection stays).
    Leave,
    /// The holder disconnects (Socket.IO `41` + close; v1 close).
    Disconnect,
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rooms held by idle clients, ascending.
    pub rooms: Vec<usize>,
    /// Idle connections at most; above, each holds several rooms.
    pub max_idle_conns: usize,
    /// Hand-overs measured per R (after `warmup`).
    pub iterations: usize,
    /// Hand-overs discarded first.
    pub warmup: usize,
    /// Rooms of two used in turn by the hand-over loop.
    pub pairs: usize,
    /// Least time between two uses of one pair (keeps each client under the v1 rate limit).
    pub pair_interval: Duration,
    /// How a holder gives up the room.
    pub via: Via,
    /// Clients joining one room in the throughput scenario (then the hot room).
    pub clients: usize,
    /// Hand-overs in the hot room.
    pub hot_rounds: usize,
    /// Connections opened concurrently.
    pub concurrency: usize,
    /// Connections of one room dropped at once in the storm scenario.
    pub storm_clients: usize,
    /// The server's grace, as far as this tool knows (the storm waits at least this long for the
    /// expiry work when it has no survivor left to tell it the room was cleared).
    pub storm_grace: Duration,
}

/// Hand-over latency with R idle rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomsPoint {
    /// Rooms held by idle clients.
    pub rooms: usize,
    /// Idle connections holding them.
    pub idle_conns: usize,
    /// Server RSS with them, after the server went idle.
    pub rss_bytes: Option<u64>,
    /// Hand-over latency.
    pub handover: Summary,
    /// Hand-overs that timed out (5 s).
    pub timeouts: usize,
}

/// Join throughput and the hot room.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Crowd {
    /// Clients that joined one room.
    pub clients: usize,
    /// From the first join sent to the last confirmation read.
    pub join_secs: f64,
    /// `clients / join_secs`.
    pub joins_per_sec: f64,
    /// v1 only, measured the same way just before the joins, on the same connections: every
    /// client sends the no-op `ping` at once; `clients` / time to the last `pong`. The ceiling of
    /// this server + tool + machine for one request per connection, with no room work.
    pub pings_per_sec: Option<f64>,
    /// The server's CPU use during the ping burst and during the join burst (1.0 = one core
    /// busy the whole time): near 1 the server is the bottleneck, well below it the tool is.
    pub server_cpu_pings: Option<f64>,
    /// See `server_cpu_pings`.
    pub server_cpu_joins: Option<f64>,
    /// Connections the server closed during the join burst (e.g. slow consumers).
    pub kicked_in_burst: usize,
    /// Joins never confirmed (no reply / `is_occupied` within 60 s of the last event).
    pub unconfirmed_joins: usize,
    /// Clients added after the burst (100 at a time) to replace those the server closed.
    pub hot_refilled: usize,
    /// Waiting when the hot room's holder left (first round).
    pub hot_waiting: usize,
    /// Per round: holder leaves → the one `released`, µs.
    pub hot_released_us: Vec<f64>,
    /// Per round: holder leaves → the last `presence` (v1 only), µs.
    pub hot_last_presence_us: Vec<f64>,
    /// Per round: how many `presence` arrived (expected: everyone left in the room).
    pub hot_presences: Vec<usize>,
    /// Per round: connections the server closed meanwhile.
    pub hot_kicked: Vec<usize>,
}

/// The storm: `clients` connections standing in one room dropped at once with a TCP reset, with
/// a bystander pair doing hand-overs in another room and a survivor behind them in the line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Storm {
    /// Connections reset at once (those the server closed before the drop are not counted).
    pub clients: usize,
    /// Storm clients the server closed before the drop (e.g. slow consumers during the joins).
    pub kicked_before_drop: usize,
    /// Joins of storm clients never confirmed (they are reset with the others all the same).
    pub unconfirmed_joins: usize,
    /// The server's grace this tool was told (`--storm-grace-ms`; only used without survivor).
    pub grace_ms: u64,
    /// Server CPU time (utime + stime) from just before the drop until it went quiet (the start
    /// of the first second after the survivor was told in which it used at most 2 ticks), ms.
    pub cpu_ms: Option<f64>,
    /// Server CPU in that quiet second (the bystander's traffic, timers), ms per second.
    pub quiet_cpu_ms_per_sec: Option<f64>,
    /// Drop → the start of the quiet second, ms.
    pub quiet_after_ms: Option<f64>,
    /// Server CPU time in the first second after the drop, ms: with a grace longer than that,
    /// the handling of the resets alone (the rest of `cpu_ms` is the expiry and what follows).
    pub cpu_first_second_ms: Option<f64>,
    /// Server CPU time from just before the drop until the survivor was told it holds, ms (the
    /// rest of `cpu_ms` is work done after that notice).
    pub cpu_to_survivor_ms: Option<f64>,
    /// Bystander reply waits, from 1 s before the drop until quiet: a hand-over in another room
    /// (the holder leaves (v1) / disconnects (sio) → the other's `released`) and the re-join
    /// behind the new holder (→ `joined` (v1) / `is_occupied` (sio)), one request every 30 ms;
    /// sio: also the new client's connection (WebSocket, Engine.IO and Socket.IO handshakes).
    pub bystander: Summary,
    /// When the bystander's longest wait began, ms after the drop (negative: before it).
    pub bystander_max_at_ms: Option<f64>,
    /// Bystander requests unanswered within 30 s (the bystander stops at the first).
    pub bystander_timeouts: usize,
    /// Drop → the survivor (last in the stormed room, connected throughout) is told it holds
    /// (`released`, or a `presence` with position 0), ms. Includes the server's grace.
    pub survivor_holds_ms: Option<f64>,
    /// Survivor or bystander connections the server closed after the drop.
    pub kicked_after_drop: usize,
}

/// Events of every connection of a run.
pub struct Hub {
    pub target: Target,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    next_id: u32,
    pub settings: Settings,
    pub pid: Option<u32>,
    debug: bool,
}

const WAIT: Duration = Duration::from_secs(5);

impl Hub {
    pub fn new(target: Target, settings: Settings, pid: Option<u32>) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        Hub {
            target,
            tx,
            rx,
            next_id: 0,
            settings,
            pid,
            debug: std::env::var_os("LOADGEN_DEBUG").is_some(),
        }
    }

    /// Opens `n` connections, `concurrency` at a time.
    pub async fn connect_many(&mut self, n: usize) -> Result<Vec<Conn>, String> {
        let first = self.next_id;
        self.next_id += n as u32;
        let target = self.target.clone();
        let tx = self.tx.clone();
        let mut out: Vec<Conn> = futures_util::stream::iter(first..first + n as u32)
            .map(|id| {
                let target = target.clone();
                let tx = tx.clone();
                async move { client::connect(&target, id, tx).await }
            })
            .buffer_unordered(self.settings.concurrency)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    pub async fn connect(&mut self) -> Result<Conn, String> {
        let id = self.next_id;
        self.next_id += 1;
        client::connect(&self.target, id, self.tx.clone()).await
    }

    /// Drops events nobody waits for any more.
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The next event matching `pred` within `timeout` (others are dropped).
    pub async fn wait(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) if pred(&e) => return Some(e),
                Ok(Some(e)) => {
                    if self.debug {
                        eprintln!("    (dropped {e:?})");
                    }
                }
                _ => return None,
            }
        }
    }

    /// Waits for the server process to go idle (when known).
    pub async fn settle(&self) {
        if let Some(pid) = self.pid {
            server::settle(pid, Duration::from_secs(120)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn rss(&self) -> Option<u64> {
        self.pid.and_then(server::rss)
    }
}

/// A room of two: `holder` holds, `waiter` is next.
struct Pair {
    room: String,
    holder: Conn,
    waiter: Conn,
    last: Instant,
}

async fn make_pair(h: &mut Hub, room: String) -> Result<Pair, String> {
    let a = h.connect().await?;
    let b = h.connect().await?;
    a.join(&room);
    // Let the first join land first (they travel on different connections).
    if h.target.proto == Proto::V1 {
        h.wait(WAIT, |e| {
            e.conn == a.id && matches!(e.kind, Kind::Joined { .. })
        })
        .await
        .ok_or("pair: no joined")?;
    } else {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.join(&room);
    let (ia, ib) = (a.id, b.id);
    let e = h
        .wait(WAIT, |e| {
            (e.conn == ia || e.conn == ib) && e.kind == Kind::Occupied
        })
        .await
        .ok_or("pair: nobody was told the room is occupied")?;
    let (holder, waiter) = if e.conn == ia { (b, a) } else { (a, b) };
    Ok(Pair {
        room,
        holder,
        waiter,
        last: Instant::now(),
    })
}

/// Runs the hand-over loop on `pairs`; returns the summary and the number of timeouts.
async fn handovers(h: &mut Hub, pairs: &mut [Pair]) -> Result<(Summary, usize), String> {
    let s = h.settings.clone();
    let mut lat = Latencies::new();
    let mut timeouts = 0;
    for it in 0..s.warmup + s.iterations {
        let p = &mut pairs[it % pairs.len()];
        let since = p.last.elapsed();
        if since < s.pair_interval {
            tokio::time::sleep(s.pair_interval - since).await;
        }
        h.drain();
        let waiter = p.waiter.id;
        let t0 = Instant::now();
        match s.via {
            Via::Leave => p.holder.leave(&p.room),
            Via::Disconnect => p.holder.close(),
        }
        match h
            .wait(WAIT, |e| e.conn == waiter && e.kind == Kind::Released)
            .await
        {
            Some(e) if it >= s.warmup => lat.record(e.at - t0),
            Some(_) => {}
            None => {
                timeouts += 1;
                if timeouts > 10 {
                    return Err("more than 10 hand-overs timed out".into());
                }
            }
        }
        // The old holder (or a new client) queues again behind the new holder.
        let next = match s.via {
            Via::Leave => None,
            Via::Disconnect => Some(h.connect().await?),
        };
        let p = &mut pairs[it % pairs.len()];
        if let Some(n) = next {
            drop(std::mem::replace(&mut p.holder, n));
        }
        std::mem::swap(&mut p.holder, &mut p.waiter);
        let rejoin = p.waiter.id;
        p.waiter.join(&p.room);
        p.last = Instant::now();
        if h.wait(WAIT, |e| e.conn == rejoin && e.kind == Kind::Occupied)
            .await
            .is_none()
        {
            return Err(format!("re-join into {} not confirmed", p.room));
        }
    }
    Ok((lat.summary(), timeouts))
}

/// Phase 1: hand-over latency at each R, growing the idle rooms; RSS at each step.
pub async fn rooms_ladder(h: &mut Hub) -> Result<Vec<RoomsPoint>, String> {
    let s = h.settings.clone();
    let mut pairs = Vec::with_capacity(s.pairs);
    for p in 0..s.pairs {
        pairs.push(make_pair(h, format!("pair-{p}")).await?);
    }
    eprintln!("  {} hand-over pairs ready", pairs.len());
    let mut idle: Vec<Conn> = Vec::new();
    let mut held = 0usize;
    let mut out = Vec::new();
    for &r in &s.rooms {
        let want_conns = r.min(s.max_idle_conns);
        if idle.len() < want_conns {
            let t = Instant::now();
            let more = h.connect_many(want_conns - idle.len()).await?;
            idle.extend(more);
            eprintln!(
                "  {} idle connections ({:.1} s to connect)",
                idle.len(),
                t.elapsed().as_secs_f64()
            );
        }
        if r > held {
            let t = Instant::now();
            h.drain();
            let first_id = idle.first().map_or(0, |c| c.id);
            let last_id = idle.last().map_or(0, |c| c.id);
            for j in held..r {
                idle[j % want_conns].join(&format!("idle-{j}"));
            }
            if h.target.proto == Proto::V1 {
                let mut n = 0;
                while n < r - held {
                    h.wait(Duration::from_secs(60), |e| {
                        (first_id..=last_id).contains(&e.conn)
                            && matches!(e.kind, Kind::Joined { holding: true })
                    })
                    .await
                    .ok_or_else(|| format!("idle joins: {n} of {} confirmed", r - held))?;
                    n += 1;
                }
            }
            h.settle().await;
            if h.target.proto == Proto::Sio {
                // The article's events confirm nothing to a first joiner: check a few rooms
                // by joining them with another client (it must be told they are occupied).
                let probe = h.connect().await?;
                for j in [held, (held + r) / 2, r - 1] {
                    probe.join(&format!("idle-{j}"));
                    let pid = probe.id;
                    h.wait(WAIT, |e| e.conn == pid && e.kind == Kind::Occupied)
                        .await
                        .ok_or_else(|| format!("idle room idle-{j} is not held"))?;
                }
                probe.close();
                drop(probe);
                h.settle().await;
            }
            held = r;
            eprintln!("  R = {r}: rooms held ({:.1} s)", t.elapsed().as_secs_f64());
        } else {
            h.settle().await;
        }
        let rss_bytes = h.rss();
        let (handover, timeouts) = handovers(h, &mut pairs).await?;
        eprintln!(
            "  R = {r} ({} idle conns, RSS {} MiB): hand-over p50 {:.0} µs p90 {:.0} p99 {:.0} max {:.0} ({} timeouts)",
            idle.len(),
            rss_bytes.map_or(0, |b| b >> 20),
            handover.p50_us,
            handover.p90_us,
            handover.p99_us,
            handover.max_us,
            timeouts
        );
        out.push(RoomsPoint {
            rooms: r,
            idle_conns: idle.len(),
            rss_bytes,
            handover,
            timeouts,
        });
    }
    Ok(out)
}

/// Memory per idle connection from the ladder: RSS difference between the smallest and largest
/// step that both hold one room per connection, divided by the connections added.
pub fn bytes_per_idle_conn(points: &[RoomsPoint]) -> Option<(usize, f64)> {
    let one: Vec<&RoomsPoint> = points
        .iter()
        .filter(|p| p.idle_conns > 0 && p.idle_conns == p.rooms && p.rss_bytes.is_some())
        .collect();
    let (a, b) = (one.first()?, one.last()?);
    let n = b.idle_conns.checked_sub(a.idle_conns).filter(|&n| n > 0)?;
    let d = b.rss_bytes? as f64 - a.rss_bytes? as f64;
    Some((n, d / n as f64))
}

/// Phase 2: `clients` join one room at once; then the hot room's hand-overs.
pub async fn crowd(h: &mut Hub) -> Result<Crowd, String> {
    let s = h.settings.clone();
    let t = Instant::now();
    let conns = h.connect_many(s.clients).await?;
    eprintln!(
        "  {} clients connected ({:.1} s)",
        conns.len(),
        t.elapsed().as_secs_f64()
    );
    h.settle().await;
    h.drain();
    let lo = conns[0].id;
    // This phase's connections (and those it opens later) have ids from `lo` on.
    let ours = |e: &Event| e.conn >= lo;
    let proto = h.target.proto;
    let ticks = |h: &Hub| h.pid.and_then(server::cpu_ticks);
    // CPU share of the server between two tick readings over `secs`.
    let share = |a: Option<u64>, b: Option<u64>, secs: f64| {
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some((b? - a?) as f64 / hz / secs)
    };
    let mut server_cpu_pings = None;
    let pings_per_sec = if proto == Proto::V1 {
        let cpu0 = ticks(h);
        let t0 = Instant::now();
        for c in &conns {
            c.ping();
        }
        let mut last = t0;
        let mut ponged = 0;
        while ponged < conns.len() {
            let Some(e) = h
                .wait(Duration::from_secs(30), |e| ours(e) && e.kind == Kind::Pong)
                .await
            else {
                return Err(format!(
                    "{} of {} pings unanswered",
                    conns.len() - ponged,
                    conns.len()
                ));
            };
            last = e.at;
            ponged += 1;
        }
        let rate = conns.len() as f64 / (last - t0).as_secs_f64();
        server_cpu_pings = share(cpu0, ticks(h), t0.elapsed().as_secs_f64());
        eprintln!(
            "  no-op round trips (ping): {rate:.0}/s (server CPU {:.0}%)",
            server_cpu_pings.unwrap_or(f64::NAN) * 100.0
        );
        h.settle().await;
        h.drain();
        Some(rate)
    } else {
        None
    };
    let cpu0 = ticks(h);
    let t0 = Instant::now();
    for c in &conns {
        c.join("hot");
    }
    // v1: every join is answered; the article: every late joiner is told `is_occupied`.
    let expect = match proto {
        Proto::V1 => conns.len(),
        Proto::Sio => conns.len() - 1,
    };
    let mut told: HashSet<u32> = HashSet::with_capacity(conns.len());
    let mut closed: HashSet<u32> = HashSet::new();
    // The holder: the latest to be told it holds (a holder kicked as a slow consumer during the
    // burst hands the room on).
    let mut holder: Option<(u32, Instant)> = None;
    let mut last = t0;
    let mut unconfirmed = 0;
    // Done when every client is confirmed or was closed by the server.
    while told.len() + closed.iter().filter(|c| !told.contains(c)).count() < expect {
        let Some(e) = h
            .wait(Duration::from_secs(60), |e| {
                ours(e)
                    && match proto {
                        Proto::V1 => {
                            matches!(e.kind, Kind::Joined { .. } | Kind::Released | Kind::Closed)
                        }
                        Proto::Sio => {
                            matches!(e.kind, Kind::Occupied | Kind::Released | Kind::Closed)
                        }
                    }
            })
            .await
        else {
            let missing: Vec<u32> = conns
                .iter()
                .map(|c| c.id)
                .filter(|id| !told.contains(id) && !closed.contains(id))
                .collect();
            eprintln!(
                "  warning: {} of {expect} joins never confirmed after 60 s (connections {:?}…)",
                missing.len(),
                &missing.iter().map(|c| c - lo).take(10).collect::<Vec<_>>()
            );
            unconfirmed = missing.len();
            break;
        };
        match e.kind {
            Kind::Closed => {
                closed.insert(e.conn);
                last = e.at;
                continue;
            }
            Kind::Released | Kind::Joined { holding: true } => {
                if holder.is_none_or(|(_, at)| at <= e.at) {
                    holder = Some((e.conn, e.at));
                }
                if e.kind == Kind::Released {
                    continue;
                }
            }
            _ => {}
        }
        last = e.at;
        told.insert(e.conn);
    }
    let server_cpu_joins = share(cpu0, ticks(h), t0.elapsed().as_secs_f64());
    // Late closes of the burst (kicked slow consumers) still count.
    h.settle().await;
    while let Ok(e) = h.rx.try_recv() {
        if ours(&e) {
            match e.kind {
                Kind::Closed => {
                    closed.insert(e.conn);
                }
                Kind::Released if holder.is_none_or(|(_, at)| at <= e.at) => {
                    holder = Some((e.conn, e.at));
                }
                _ => {}
            }
        }
    }
    if !closed.is_empty() {
        eprintln!(
            "  warning: the server closed {} connections during the join burst: {:?}",
            closed.len(),
            {
                let mut v: Vec<_> = closed.iter().map(|c| c - lo).collect();
                v.sort_unstable();
                v.truncate(20);
                v
            }
        );
    }
    let holder = holder
        .map(|(c, _)| c)
        .filter(|c| !closed.contains(c))
        .or_else(|| {
            // The article's server tells a first joiner nothing: the holder is the one not told.
            (proto == Proto::Sio)
                .then(|| {
                    conns
                        .iter()
                        .map(|c| c.id)
                        .find(|id| !told.contains(id) && !closed.contains(id))
                })
                .flatten()
        })
        .ok_or("no live holder in the hot room")?;
    let join_secs = (last - t0).as_secs_f64();
    let mut out = Crowd {
        clients: conns.len(),
        join_secs,
        joins_per_sec: conns.len() as f64 / join_secs,
        pings_per_sec,
        server_cpu_pings,
        server_cpu_joins,
        hot_waiting: conns.len() - closed.len() - 1,
        kicked_in_burst: closed.len(),
        unconfirmed_joins: unconfirmed,
        ..Crowd::default()
    };
    eprintln!(
        "  join throughput: {} joins in {:.3} s = {:.0} joins/s (server CPU {:.0}%)",
        conns.len(),
        join_secs,
        out.joins_per_sec,
        server_cpu_joins.unwrap_or(f64::NAN) * 100.0
    );

    // The hot room: the holder leaves; one `released`, everyone's place moves.
    let mut conns: Vec<Option<Conn>> = conns.into_iter().map(Some).collect();
    let mut holder = holder;
    let mut remaining = conns.len() - closed.len();
    for id in &closed {
        conns[(id - lo) as usize] = None;
    }
    if !closed.is_empty() {
        // Refill the hot room with as many new clients, joining 100 at a time (each batch
        // confirmed before the next), so the hand-over below has the crowd it is meant to have.
        let t = Instant::now();
        let n = closed.len();
        let fresh = h.connect_many(n).await?;
        for chunk in fresh.chunks(100) {
            let ids: HashSet<u32> = chunk.iter().map(|c| c.id).collect();
            for c in chunk {
                c.join("hot");
            }
            let mut got = 0;
            while got < ids.len() {
                let confirm = |e: &Event| match proto {
                    Proto::V1 => matches!(e.kind, Kind::Joined { .. } | Kind::Closed),
                    Proto::Sio => matches!(e.kind, Kind::Occupied | Kind::Closed),
                };
                match h
                    .wait(Duration::from_secs(30), |e| {
                        ids.contains(&e.conn) && confirm(e)
                    })
                    .await
                {
                    Some(_) => got += 1,
                    None => break,
                }
            }
        }
        debug_assert_eq!(fresh[0].id as usize - lo as usize, conns.len());
        conns.extend(fresh.into_iter().map(Some));
        remaining += n;
        out.hot_waiting = remaining - 1;
        out.hot_refilled = n;
        eprintln!(
            "  hot room refilled with {n} new clients, 100 at a time ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    for round in 0..s.hot_rounds {
        h.settle().await;
        // Late events of the last round: closed connections, a hand-over of a closed holder.
        let mut latest = None;
        while let Ok(e) = h.rx.try_recv() {
            if !ours(&e) {
                continue;
            }
            match e.kind {
                Kind::Closed => {
                    if let Some(c) = conns.get_mut((e.conn - lo) as usize)
                        && c.take().is_some()
                    {
                        remaining -= 1;
                    }
                }
                Kind::Released => latest = Some(e.conn),
                _ => {}
            }
        }
        if let Some(l) = latest {
            holder = l;
        }
        let idx = (holder - lo) as usize;
        let t0 = Instant::now();
        let leaving = conns[idx].take().ok_or("holder already gone")?;
        match s.via {
            Via::Leave if proto == Proto::V1 => leaving.leave("hot"),
            _ => leaving.close(),
        }
        remaining -= 1;
        // Everyone left in the room gets a presence in v1 (their place or the holder changed).
        let mut expect_presence = if proto == Proto::V1 { remaining } else { 0 };
        let mut kicked = 0;
        let mut released = None;
        let mut presences = 0;
        let mut last_presence = None;
        while released.is_none() || presences < expect_presence {
            let timeout = if released.is_some() {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(60)
            };
            let Some(e) = h
                .wait(timeout, |e| {
                    ours(e)
                        && e.conn != leaving.id
                        && matches!(
                            e.kind,
                            Kind::Released | Kind::Presence { .. } | Kind::Closed
                        )
                })
                .await
            else {
                break;
            };
            match e.kind {
                Kind::Released => {
                    released = Some((e.conn, e.at - t0));
                }
                Kind::Closed => {
                    // Closed by the server (e.g. a slow consumer): it will hear nothing more.
                    kicked += 1;
                    remaining -= 1;
                    expect_presence = expect_presence.saturating_sub(1);
                    if let Some(c) = conns.get_mut((e.conn - lo) as usize) {
                        *c = None;
                    }
                }
                _ => {
                    presences += 1;
                    last_presence = Some(e.at - t0);
                }
            }
        }
        drop(leaving);
        let Some((next, rel)) = released else {
            eprintln!(
                "  warning: hot room round {round}: nobody was released within 60 s; stopping"
            );
            break;
        };
        out.hot_released_us.push(rel.as_secs_f64() * 1e6);
        if let Some(lp) = last_presence {
            out.hot_last_presence_us.push(lp.as_secs_f64() * 1e6);
        }
        out.hot_presences.push(presences);
        out.hot_kicked.push(kicked);
        eprintln!(
            "  hot room round {round}: {} waiting; released after {:.2} ms, {} presence, last after {}{}",
            remaining.saturating_sub(1),
            rel.as_secs_f64() * 1e3,
            presences,
            last_presence.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3)),
            if kicked > 0 {
                format!(" ({kicked} connections closed by the server)")
            } else {
                String::new()
            },
        );
        holder = next;
    }
    Ok(out)
}

/// The bystander's pace: one request at most every this long (v1: each of the pair then sends
/// about 17 messages a second, under the default limit of 20).
const BYSTANDER_EVERY: Duration = Duration::from_millis(30);
/// The bystander runs this long before the drop.
const BEFORE_DROP: Duration = Duration::from_secs(1);
/// At most this many ticks of server CPU in a second count as quiet.
const QUIET_TICKS: u64 = 2;

/// What the bystander waits for.
#[derive(Clone, Copy)]
enum Await {
    /// `conn` to be told `released`.
    Released(u32),
    /// `conn`'s join to be answered (v1 `joined`, sio `is_occupied`).
    Joined(u32),
}

/// The bystander's next step.
enum Step {
    /// The holder gives the room up at this instant.
    GiveUp(Instant),
    /// `waiter` (re-)joins behind the new holder at this instant.
    Rejoin(Instant),
    /// A new client is connecting (sio: the old holder disconnected).
    Connecting,
    /// A request is out since the instant.
    Waiting(Instant, Await),
    /// Stopped (a timeout or a connection closed by the server).
    Stopped,
}

/// The bystander's reply waits.
#[derive(Default)]
struct Waits {
    lat: Latencies,
    longest: Duration,
    /// When the longest began.
    longest_at: Option<Instant>,
}

impl Waits {
    fn record(&mut self, sent: Instant, wait: Duration) {
        if self.longest < wait {
            self.longest = wait;
            self.longest_at = Some(sent);
        }
        self.lat.record(wait);
    }
}

/// What woke the storm's loop.
enum Wake {
    Event(Option<Event>),
    Tick,
    Due,
    Connected(Result<(Conn, Instant), String>),
}

/// Phase 3: `storm_clients` connections in one room dropped at once with a TCP reset; the
/// server's CPU until it is quiet again (after the grace and the expiry work), a bystander's
/// reply waits in another room meanwhile, and when a survivor of the room is told it holds.
pub async fn storm(h: &mut Hub) -> Result<Storm, String> {
    let s = h.settings.clone();
    let proto = h.target.proto;
    let room = "storm";
    let t = Instant::now();
    let conns = h.connect_many(s.storm_clients).await?;
    let survivor = h.connect().await?;
    eprintln!(
        "  {} storm clients and a survivor connected ({:.1} s)",
        conns.len(),
        t.elapsed().as_secs_f64()
    );
    let mut pair = make_pair(h, "storm-bystander".into()).await?;
    h.settle().await;
    h.drain();

    // Everyone joins the storm room, the first alone (the article tells a first joiner nothing),
    // then 500 at a time, each batch confirmed (or closed by the server) before the next.
    let t = Instant::now();
    let confirms = |e: &Event| match proto {
        Proto::V1 => matches!(e.kind, Kind::Joined { .. }),
        Proto::Sio => e.kind == Kind::Occupied,
    };
    let mut kicked: HashSet<u32> = HashSet::new();
    let mut unconfirmed = 0;
    conns[0].join(room);
    if proto == Proto::V1 {
        let first = conns[0].id;
        h.wait(WAIT, |e| e.conn == first && confirms(e))
            .await
            .ok_or("storm: the first join was not answered")?;
    } else {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for chunk in conns[1..].chunks(500) {
        let mut pending: HashSet<u32> = chunk.iter().map(|c| c.id).collect();
        for c in chunk {
            c.join(room);
        }
        while !pending.is_empty() {
            let Some(e) = h
                .wait(Duration::from_secs(60), |e| {
                    pending.contains(&e.conn) && (confirms(e) || e.kind == Kind::Closed)
                })
                .await
            else {
                unconfirmed += pending.len();
                break;
            };
            pending.remove(&e.conn);
            if e.kind == Kind::Closed {
                kicked.insert(e.conn);
            }
        }
    }
    survivor.join(room);
    let sid = survivor.id;
    h.wait(Duration::from_secs(60), |e| e.conn == sid && confirms(e))
        .await
        .ok_or("storm: the survivor's join was not answered")?;
    h.settle().await;
    while let Ok(e) = h.rx.try_recv() {
        if e.kind != Kind::Closed {
            continue;
        }
        if e.conn == sid || e.conn == pair.holder.id || e.conn == pair.waiter.id {
            return Err(format!(
                "storm: the server closed connection {} (survivor or bystander) during the joins",
                e.conn
            ));
        }
        if conns.iter().any(|c| c.id == e.conn) {
            kicked.insert(e.conn);
        }
    }
    eprintln!(
        "  {} in room {room} ({:.1} s){}",
        conns.len() + 1 - kicked.len(),
        t.elapsed().as_secs_f64(),
        if kicked.is_empty() && unconfirmed == 0 {
            String::new()
        } else {
            format!(
                " ({} closed by the server, {unconfirmed} joins unconfirmed)",
                kicked.len()
            )
        }
    );

    let ticks = |h: &Hub| h.pid.and_then(server::cpu_ticks);
    // SAFETY: sysconf only reads a constant.
    let ms_per_tick = 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = Storm {
        clients: conns.len() - kicked.len(),
        kicked_before_drop: kicked.len(),
        unconfirmed_joins: unconfirmed,
        grace_ms: s.storm_grace.as_millis() as u64,
        ..Storm::default()
    };
    let mut waits = Waits::default();
    let mut step = Step::GiveUp(Instant::now());
    let mut connecting: Option<tokio::task::JoinHandle<Result<(Conn, Instant), String>>> = None;
    let mut survivor = Some(survivor);
    let started = Instant::now();
    // Before the drop: None. After: the drop's instant and the server's CPU ticks then.
    let mut dropped: Option<(Instant, Option<u64>)> = None;
    // When the storm room was cleared: the survivor told it holds (or lost, then drop + grace).
    let mut cleared: Option<Instant> = None;
    // Server CPU samples after `cleared`, every 100 ms.
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_request = Instant::now() - BYSTANDER_EVERY;
    let give_up_after = s.storm_grace + Duration::from_secs(120);
    let stop_bystander = |step: &mut Step, why: String| {
        eprintln!("  warning: storm bystander stopped: {why}");
        *step = Step::Stopped;
    };
    loop {
        let due = match step {
            Step::GiveUp(at) | Step::Rejoin(at) => Some(at),
            _ => None,
        };
        let wake = tokio::select! {
            e = h.rx.recv() => Wake::Event(e),
            _ = tick.tick() => Wake::Tick,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()),
                if due.is_some() => Wake::Due,
            r = async {
                match connecting.as_mut() {
                    Some(j) => j.await.unwrap_or_else(|e| Err(e.to_string())),
                    None => std::future::pending().await,
                }
            } => Wake::Connected(r),
        };
        match wake {
            Wake::Event(None) => return Err("storm: event channel closed".into()),
            Wake::Event(Some(e)) => {
                if survivor.as_ref().is_some_and(|c| c.id == e.conn) {
                    match e.kind {
                        Kind::Released | Kind::Presence { holding: true } => {
                            if let Some((t0, cpu0)) = dropped
                                && out.survivor_holds_ms.is_none()
                            {
                                out.survivor_holds_ms = Some((e.at - t0).as_secs_f64() * 1e3);
                                out.cpu_to_survivor_ms = cpu0
                                    .zip(ticks(h))
                                    .map(|(a, b)| b.saturating_sub(a) as f64 * ms_per_tick);
                                cleared = Some(e.at);
                            }
                        }
                        Kind::Closed => {
                            eprintln!("  warning: the server closed the storm's survivor");
                            survivor = None;
                            out.kicked_after_drop += usize::from(dropped.is_some());
                        }
                        _ => {}
                    }
                    continue;
                }
                let (hid, wid) = (pair.holder.id, pair.waiter.id);
                if e.kind == Kind::Closed && (e.conn == hid || e.conn == wid) {
                    out.kicked_after_drop += usize::from(dropped.is_some());
                    stop_bystander(
                        &mut step,
                        format!("the server closed connection {}", e.conn),
                    );
                    continue;
                }
                let Step::Waiting(t0, want) = step else {
                    continue;
                };
                let answered = match want {
                    Await::Released(c) => e.conn == c && e.kind == Kind::Released,
                    Await::Joined(c) => e.conn == c && confirms(&e),
                };
                if !answered {
                    continue;
                }
                waits.record(t0, e.at - t0);
                step = match want {
                    Await::Released(_) => {
                        // The waiter holds now; the old holder (v1) or a new client (sio)
                        // queues behind it.
                        std::mem::swap(&mut pair.holder, &mut pair.waiter);
                        if proto == Proto::V1 {
                            Step::Rejoin(last_request + BYSTANDER_EVERY)
                        } else {
                            let id = h.next_id;
                            h.next_id += 1;
                            let (target, tx) = (h.target.clone(), h.tx.clone());
                            connecting = Some(tokio::spawn(async move {
                                let t0 = Instant::now();
                                let c = client::connect(&target, id, tx).await?;
                                Ok((c, t0))
                            }));
                            Step::Connecting
                        }
                    }
                    Await::Joined(_) => Step::GiveUp(last_request + BYSTANDER_EVERY),
                };
            }
            Wake::Connected(r) => {
                connecting = None;
                match r {
                    Ok((c, t0)) => {
                        // The connection's handshakes are a reply wait too.
                        waits.record(t0, t0.elapsed());
                        // The old holder is gone (it disconnected); the new client waits.
                        drop(std::mem::replace(&mut pair.waiter, c));
                        step = Step::Rejoin(last_request + BYSTANDER_EVERY);
                    }
                    Err(e) => stop_bystander(&mut step, e),
                }
            }
            Wake::Due => {
                let now = Instant::now();
                last_request = now;
                step = match step {
                    Step::GiveUp(_) => {
                        match proto {
                            Proto::V1 => pair.holder.leave(&pair.room),
                            Proto::Sio => pair.holder.close(),
                        }
                        Step::Waiting(now, Await::Released(pair.waiter.id))
                    }
                    _ => {
                        pair.waiter.join(&pair.room);
                        Step::Waiting(now, Await::Joined(pair.waiter.id))
                    }
                };
            }
            Wake::Tick => {
                let now = Instant::now();
                if let Step::Waiting(t0, _) = step
                    && now - t0 > Duration::from_secs(30)
                {
                    out.bystander_timeouts += 1;
                    stop_bystander(&mut step, "no reply within 30 s".into());
                }
                let Some((t0, cpu0)) = dropped else {
                    if now - started >= BEFORE_DROP {
                        let cpu0 = ticks(h);
                        let t0 = Instant::now();
                        for c in &conns {
                            c.reset();
                        }
                        dropped = Some((t0, cpu0));
                    }
                    continue;
                };
                if out.cpu_first_second_ms.is_none() && now - t0 >= Duration::from_secs(1) {
                    out.cpu_first_second_ms = cpu0
                        .zip(ticks(h))
                        .map(|(a, b)| b.saturating_sub(a) as f64 * ms_per_tick);
                }
                if cleared.is_none() && survivor.is_none() && now - t0 >= s.storm_grace {
                    cleared = Some(now);
                }
                if now - t0 > give_up_after {
                    eprintln!(
                        "  warning: storm: the server not quiet {} s after the drop{}",
                        give_up_after.as_secs(),
                        if out.survivor_holds_ms.is_none() {
                            " (the survivor was never told it holds)"
                        } else {
                            ""
                        }
                    );
                    break;
                }
                let Some(c) = cleared else { continue };
                let Some(cpu0) = cpu0 else {
                    // No pid: no CPU figures; a short pause for the expiry work.
                    if now - c >= Duration::from_millis(200) {
                        break;
                    }
                    continue;
                };
                let Some(cpu) = ticks(h) else {
                    return Err("storm: the server is gone".into());
                };
                samples.push((now, cpu));
                let quiet_from = samples
                    .iter()
                    .rev()
                    .find(|(at, _)| now - *at >= Duration::from_secs(1))
                    .filter(|(at, _)| *at >= c);
                if let Some(&(at, then)) = quiet_from
                    && cpu - then <= QUIET_TICKS
                {
                    out.cpu_ms = Some(then.saturating_sub(cpu0) as f64 * ms_per_tick);
                    out.quiet_cpu_ms_per_sec =
                        Some((cpu - then) as f64 * ms_per_tick / (now - at).as_secs_f64());
                    out.quiet_after_ms = Some((at - t0).as_secs_f64() * 1e3);
                    break;
                }
            }
        }
    }
    if let Some(j) = connecting {
        j.abort();
    }
    out.bystander = waits.lat.summary();
    if let (Some(t), Some((d, _))) = (waits.longest_at, dropped) {
        out.bystander_max_at_ms = Some(if t >= d {
            (t - d).as_secs_f64() * 1e3
        } else {
            -(d - t).as_secs_f64() * 1e3
        });
    }
    eprintln!(
        "  storm: {} connections in one room reset at once: server CPU {} until quiet ({} in the first second, {} to the survivor's notice; quiet {} after the drop, then {} ms/s); bystander in another room: {} replies, p99 {:.2} ms, max {:.2} ms (sent {} after the drop){}; survivor told it holds after {}{}",
        out.clients,
        out.cpu_ms.map_or("?".into(), |c| format!("{c:.0} ms")),
        out.cpu_first_second_ms
            .map_or("?".into(), |c| format!("{c:.0} ms")),
        out.cpu_to_survivor_ms
            .map_or("?".into(), |c| format!("{c:.0} ms")),
        out.quiet_after_ms
            .map_or("?".into(), |q| format!("{:.2} s", q / 1e3)),
        out.quiet_cpu_ms_per_sec
            .map_or("?".into(), |q| format!("{q:.0}")),
        out.bystander.n,
        out.bystander.p99_us / 1e3,
        out.bystander.max_us / 1e3,
        out.bystander_max_at_ms
            .map_or("?".into(), |ms| format!("{ms:.0} ms")),
        if out.bystander_timeouts > 0 {
            format!(" ({} timed out)", out.bystander_timeouts)
        } else {
            String::new()
        },
        out.survivor_holds_ms
            .map_or("never".into(), |ms| format!("{ms:.1} ms")),
        if out.kicked_after_drop > 0 {
            format!(
                " ({} survivor/bystander connections closed by the server)",
                out.kicked_after_drop
            )
        } else {
            String::new()
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rooms: usize, idle_conns: usize, rss: u64) -> RoomsPoint {
        RoomsPoint {
            rooms,
            idle_conns,
            rss_bytes: Some(rss),
            handover: Summary::default(),
            timeouts: 0,
        }
    }

    /// Every scenario for about a second against an in-process axum server (protocol v1).
    #[test]
    fn smoke_against_an_in_process_server() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A short grace: the storm waits it out.
            let hub = occupancy_axum::Hub::builder()
                .grace(Duration::from_millis(300))
                .build()
                .unwrap();
            let app = occupancy_axum::Endpoint::new(hub).router::<()>("/ws");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(occupancy_axum::nodelay(listener), app)
                    .await
                    .unwrap();
            });
            let target = Target::parse(Proto::V1, &format!("ws://{addr}/ws"), 2).unwrap();
            let settings = Settings {
                rooms: vec![0, 30],
                max_idle_conns: 10,
                iterations: 20,
                warmup: 4,
                pairs: 4,
                pair_interval: Duration::from_millis(20),
                via: Via::Leave,
                clients: 40,
                hot_rounds: 2,
                concurrency: 16,
                storm_clients: 30,
                storm_grace: Duration::from_millis(300),
            };
            let mut h = Hub::new(target, settings, None);
            let pts = rooms_ladder(&mut h).await.unwrap();
            assert_eq!(pts.len(), 2);
            assert_eq!((pts[1].rooms, pts[1].idle_conns), (30, 10));
            for p in &pts {
                assert_eq!(p.handover.n, 20, "{p:?}");
                assert_eq!(p.timeouts, 0);
                assert!(p.handover.p50_us > 0.0);
            }
            let c = crowd(&mut h).await.unwrap();
            assert_eq!(c.clients, 40);
            assert!(c.joins_per_sec > 0.0);
            assert_eq!(c.hot_released_us.len(), 2);
            // v1: everyone left in the room hears the queue move.
            assert_eq!(
                c.hot_presences,
                vec![39 - c.kicked_in_burst, 38 - c.kicked_in_burst]
            );
            let st = storm(&mut h).await.unwrap();
            assert_eq!(st.clients + st.kicked_before_drop, 30, "{st:?}");
            assert_eq!(st.kicked_after_drop, 0, "{st:?}");
            // Told after the grace, not long after.
            let held = st
                .survivor_holds_ms
                .expect("the survivor was told it holds");
            assert!((250.0..3000.0).contains(&held), "{st:?}");
            assert!(st.bystander.n >= 10, "{st:?}");
            assert_eq!(st.bystander_timeouts, 0);
            // No pid: no CPU figures.
            assert_eq!(st.cpu_ms, None);
        });
    }

    #[test]
    fn memory_per_connection_uses_one_room_steps() {
        let pts = [
            point(0, 0, 10_000_000),
            point(1000, 1000, 12_000_000),
            point(10_000, 10_000, 30_000_000),
            point(50_000, 10_000, 40_000_000),
        ];
        let (n, b) = bytes_per_idle_conn(&pts).unwrap();
        assert_eq!(n, 9000);
        assert!((b - 2000.0).abs() < 1e-9);
        assert!(bytes_per_idle_conn(&pts[..2]).is_none());
    }
}
