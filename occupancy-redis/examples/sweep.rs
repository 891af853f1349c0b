//! Measurement: sweeping a dead node, on a private redis-server (spawned on a free port, killed
//! at the end). Not a pass/fail test: it prints figures.
//!
//! ```text
//! cargo run --release -p occupancy-redis --example sweep [one|spread]:N ...
//! cargo run --release -p occupancy-redis --example sweep one:1000 one:10000 spread:1000 spread:10000
//! ```
//!
//! Per scenario: a "dead" node registers (one lease, never renewed) and N of its sessions are
//! written straight into Redis in the backend's documented layout (through the scripts, a line
//! of 10,000 would take minutes to build: every join re-encodes the line). `one:N`: all N stand
//! in one room, and a live waiter on the surviving node joins after the first half (the holder
//! and N/2 - 1 more are dead sessions in front of it, N/2 behind it). `spread:N`: one room per
//! dead session, the dead session holding it, and live waiters behind the dead holders of a few
//! of those rooms. The surviving node (a Hub, same lease) then sweeps the dead node when its
//! lease ends.
//!
//! Figures: the sweep's scripts as Redis measured them (`SLOWLOG` with the threshold at 0: the
//! number of sweep calls, their total and longest execution time, and the longest command of
//! any kind meanwhile), the release of the waiters after the dead node's lease ended (its lease
//! end is read from Redis, so the figure does not depend on when it died within its lease), when
//! the sweep was over (every session and room of the dead node dealt with), and the latency of
//! a join + leave in an unrelated room on the survivor while it ran (one after the other, from
//! the lease end until the sweep was over), and the survivor's subscription as Redis saw it
//! meanwhile (`CLIENT LIST TYPE pubsub` every 2 ms: the largest output buffer `omem`, against
//! the default `client-output-buffer-limit pubsub 32mb 8mb 60`, and whether its connection stayed
//! the same, i.e. was never dropped). `SWEEP_VERBOSE=1` also prints the longest commands. Uses only the public API and the documented data
//! layout, so the same file measures an older build too.

#[path = "../tests/common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use occupancy_core::{Hub, Meta, NoticeKind, Notices};
use occupancy_redis::{RedisBackend, RedisConfig};

const LEASE: Duration = Duration::from_secs(3);
/// How long to wait for the sweep before giving up on a scenario.
const CAP: Duration = Duration::from_secs(240);
/// Live waiters in the spread layout.
const SPREAD_WAITERS: usize = 10;

/// Writes `n` sessions of `node` into Redis: in one room (`room` non-empty: appended to its
/// line, created if missing) or each in a room of its own (`room` empty: `r<i>`). Session ids
/// start at `first`. The layout is the one the crate docs describe.
const CRAFT: &str = r#"
local P, node, n, room, first = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local function hex(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function rkey(r) return P .. ':r:{' .. hex(r) .. '}' end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = string.format('%.0f', math.floor(now_us / 1000))
local function fmt(x) return string.format('%.0f', x) end
local big = nil
if room ~= '' then
  local raw = redis.call('GET', rkey(room))
  if raw then big = cjson.decode(raw) else
    big = {v = fmt(now_us), o = {}, w = {}, h = now_ms}
    redis.call('HINCRBY', P .. ':stats', 'rooms', 1)
  end
end
for i = first, first + n - 1 do
  local sid = string.format('%016x', i)
  local tok = string.format('%032x', i)
  local r = room
  if r == '' then r = 'r' .. i end
  redis.call('HSET', P .. ':s:{' .. sid .. '}', 'n', node, 'm', '{}', 't', tok,
    'j', cjson.encode({r}), 'w', '[]', 'g', '0')
  redis.call('SET', P .. ':t:{' .. tok .. '}', sid)
  redis.call('SADD', P .. ':ns:{' .. node .. '}', sid)
  local occ = {k = 'a:' .. sid, m = '{}', q = fmt(now_us + i), s = {sid}, t = now_ms}
  if big then
    table.insert(big.o, occ)
  else
    redis.call('SET', rkey(r), cjson.encode({v = fmt(now_us), o = {occ}, w = {}, h = now_ms}))
  end
end
if big then
  big.v = fmt(math.max(tonumber(big.v) + 1, now_us))
  redis.call('SET', rkey(room), cjson.encode(big))
else
  redis.call('HINCRBY', P .. ':stats', 'rooms', n)
end
redis.call('HINCRBY', P .. ':stats', 'sessions', n)
redis.call('HINCRBY', P .. ':stats', 'occupants', n)
return n
"#;

async fn cmd<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    c2: &mut redis::Cmd,
) -> T {
    c2.query_async(c).await.expect("redis command")
}

/// Redis time in ms.
async fn redis_ms(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = cmd(c, &mut redis::cmd("TIME")).await;
    s * 1000 + us / 1000
}

struct Waiter {
    notices: Notices,
    room: String,
    released_at: Option<Instant>,
    released: usize,
}

async fn scenario(layout: &str, n: usize) {
    let server = server::RedisServer::start();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    // No response timeout: before the sweep was bounded, one script kept Redis busy for
    // seconds to minutes, and this connection waits it out.
    let mut c = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let cfg = RedisConfig::new(&url)
        .lease(LEASE)
        .op_timeout(Duration::from_secs(60));

    // The survivor first, so that it is renewing when the dead node's lease ends.
    let survivor_backend = RedisBackend::connect(cfg.clone()).await.unwrap();
    let survivor = Hub::builder().backend(survivor_backend).build().unwrap();
    // The dead node: registered (one lease), never attached, so never renewed.
    let dead = RedisBackend::connect(cfg.clone()).await.unwrap();
    let dead_id = dead.node_id().to_string();
    drop(dead);

    let setup = Instant::now();
    let craft = redis::Script::new(CRAFT);
    let craft = |room: String, count: usize, first: usize| {
        let mut inv = craft.prepare_invoke();
        inv.arg("occ")
            .arg(&dead_id)
            .arg(count)
            .arg(room)
            .arg(first + 1);
        inv
    };
    let mut waiters = Vec::new();
    let mut keep = Vec::new();
    match layout {
        "one" => {
            let room = "big".to_string();
            let _: i64 = craft(room.clone(), n / 2, 0)
                .invoke_async(&mut c)
                .await
                .unwrap();
            let (s, notices) = survivor.connect(None, Meta::empty()).await.unwrap();
            let j = s.join(&room, None).await.unwrap();
            assert_eq!(j.position as usize, n / 2);
            let _: i64 = craft(room.clone(), n - n / 2, n / 2)
                .invoke_async(&mut c)
                .await
                .unwrap();
            keep.push(s);
            waiters.push(Waiter {
                notices,
                room,
                released_at: None,
                released: 0,
            });
        }
        "spread" => {
            let _: i64 = craft(String::new(), n, 0)
                .invoke_async(&mut c)
                .await
                .unwrap();
            for w in 0..SPREAD_WAITERS.min(n) {
                let room = format!("r{}", 1 + w * n / SPREAD_WAITERS.min(n));
                let (s, notices) = survivor.connect(None, Meta::empty()).await.unwrap();
                let j = s.join(&room, None).await.unwrap();
                assert_eq!(j.position, 1);
                keep.push(s);
                waiters.push(Waiter {
                    notices,
                    room,
                    released_at: None,
                    released: 0,
                });
            }
        }
        other => panic!("layout {other:?}: one or spread"),
    }
    // A session of the survivor's that keeps working in a room of its own during the sweep.
    let (probe, _probe_notices) = survivor.connect(None, Meta::empty()).await.unwrap();
    let live = waiters.len() as i64 + 1;
    let lease_end: u64 = {
        let score: f64 = cmd(&mut c, redis::cmd("ZSCORE").arg("occ:nodes").arg(&dead_id)).await;
        score as u64
    };
    let now_redis = redis_ms(&mut c).await;
    let t0 = Instant::now();
    let lease_end_local = t0 + Duration::from_millis(lease_end.saturating_sub(now_redis));
    assert!(
        lease_end > now_redis,
        "setup took {:?}, longer than the lease",
        setup.elapsed()
    );
    let _: () = cmd(
        &mut c,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0),
    )
    .await;
    let _: () = cmd(
        &mut c,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-max-len")
            .arg(1_000_000),
    )
    .await;
    let _: () = cmd(&mut c, redis::cmd("SLOWLOG").arg("RESET")).await;

    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe_task = {
        let probing = probing.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(lease_end_local)).await;
            let mut lat = Vec::new();
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let ok =
                    probe.join("probe", None).await.is_ok() && probe.leave("probe").await.is_ok();
                lat.push((t.elapsed(), ok));
            }
            lat
        })
    };
    // The survivor's subscription, as Redis sees it: its connection id (a new one would mean the
    // subscription was dropped and made again) and the largest output buffer Redis held for it
    // (`omem`; `client-output-buffer-limit pubsub` is 32 MiB hard, 8 MiB for 60 s by default).
    let pubsub_ids = |list: &str| -> Vec<(u64, u64)> {
        list.lines()
            .filter_map(|l| {
                let field = |k: &str| {
                    l.split(' ')
                        .find_map(|f| f.strip_prefix(k))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                Some((field("id=")?, field("omem=")?))
            })
            .collect()
    };
    let before: String = cmd(
        &mut c,
        redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"),
    )
    .await;
    let subscribers_before: Vec<u64> = pubsub_ids(&before).iter().map(|x| x.0).collect();
    let sampler = {
        let probing = probing.clone();
        let mut c = c.clone();
        tokio::spawn(async move {
            let (mut max_omem, mut ids, mut samples) = (0u64, Vec::<u64>::new(), 0usize);
            tokio::time::sleep_until(tokio::time::Instant::from_std(lease_end_local)).await;
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                let list: String = cmd(
                    &mut c,
                    redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"),
                )
                .await;
                for (id, omem) in pubsub_ids(&list) {
                    max_omem = max_omem.max(omem);
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (max_omem, ids, samples)
        })
    };
    // Wait for the releases and for the sweep to be over.
    let deadline = lease_end_local + CAP;
    let mut swept_at = None;
    loop {
        let now = Instant::now();
        for w in &mut waiters {
            while let Some(x) = w.notices.try_recv() {
                if matches!(x.kind, NoticeKind::Released { .. }) && x.room.as_str() == w.room {
                    w.released += 1;
                    w.released_at.get_or_insert(now);
                }
            }
        }
        if swept_at.is_none() {
            // Sessions taken, nothing queued, no sweep under way (the last two keys do not
            // exist before the sweep was made of bounded calls: always empty then).
            let (sessions, sweeping, queued): (Option<i64>, i64, i64) = redis::pipe()
                .cmd("HGET")
                .arg("occ:stats")
                .arg("sessions")
                .cmd("SCARD")
                .arg("occ:sweeping")
                .cmd("EXISTS")
                .arg("occ:sweep:rooms")
                .query_async(&mut c)
                .await
                .unwrap_or((None, 1, 1));
            if sessions == Some(live) && sweeping == 0 && queued == 0 {
                swept_at = Some(Instant::now());
                probing.store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if swept_at.is_some() && waiters.iter().all(|w| w.released_at.is_some()) {
            break;
        }
        if now > deadline {
            println!(
                "{layout}:{n}: not done {CAP:?} after the lease ended; giving up (Redis is busy)"
            );
            probing.store(false, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut lat = probe_task.await.unwrap();
    let failed = lat.iter().filter(|(_, ok)| !ok).count();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |(d, _)| d.as_secs_f64() * 1000.0)
    };
    let probes = format!(
        "survivor join+leave during the sweep: {} done, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {failed} failed",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let (max_omem, ids, samples) = sampler.await.unwrap();
    let kept = ids.iter().all(|id| subscribers_before.contains(id)) && !ids.is_empty();
    let pubsub = format!(
        "subscription during the sweep: largest output buffer {max_omem} B ({:.3}% of the 8 MiB \
         soft limit, {samples} samples of CLIENT LIST), {}",
        max_omem as f64 * 100.0 / (8.0 * 1024.0 * 1024.0),
        if kept {
            "same connection throughout (never dropped)"
        } else {
            "RECONNECTED (the subscription was dropped)"
        }
    );
    // Quiet for a moment: any duplicate `released` would show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in &mut waiters {
        while let Some(x) = w.notices.try_recv() {
            if matches!(x.kind, NoticeKind::Released { .. }) && x.room.as_str() == w.room {
                w.released += 1;
            }
        }
    }

    let entries: Vec<redis::Value> = cmd(&mut c, redis::cmd("SLOWLOG").arg("GET").arg(-1)).await;
    let log: Vec<(u64, u64, u64, Vec<String>)> = entries
        .into_iter()
        .map(|e: redis::Value| {
            let redis::Value::Array(v) = e else {
                panic!("slowlog entry")
            };
            let num = |x: &redis::Value| match x {
                redis::Value::Int(i) => *i as u64,
                _ => 0,
            };
            let args: Vec<String> = match &v[3] {
                redis::Value::Array(a) => a
                    .iter()
                    .map(|x| match x {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (num(&v[0]), num(&v[1]), num(&v[2]), args)
        })
        .collect();
    let sweeps: Vec<u64> = log
        .iter()
        .filter(|(_, _, _, a)| {
            a.first().is_some_and(|c| c.eq_ignore_ascii_case("evalsha"))
                && a.iter().any(|x| x == &dead_id)
        })
        .map(|e| e.2)
        .collect();
    let longest = log.iter().max_by_key(|e| e.2);
    if std::env::var_os("SWEEP_VERBOSE").is_some() {
        let mut by_time: Vec<_> = log.iter().collect();
        by_time.sort_by_key(|e| std::cmp::Reverse(e.2));
        let mut names: std::collections::BTreeMap<String, usize> = Default::default();
        for e in &log {
            *names
                .entry(e.3.first().cloned().unwrap_or_default())
                .or_default() += 1;
        }
        println!(
            "{layout}:{n}:   {} SLOWLOG entries {names:?}; longest:",
            log.len()
        );
        for e in by_time.iter().take(5) {
            println!(
                "      {} us: {:?}",
                e.2,
                e.3.iter().take(6).collect::<Vec<_>>()
            );
        }
    }
    let mut sorted = sweeps.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let over_5ms = sorted.iter().filter(|&&d| d > 5000).count();
    let top: Vec<String> = sorted
        .iter()
        .take(5)
        .map(|&d| format!("{:.2}", d as f64 / 1000.0))
        .collect();
    let total: u64 = sweeps.iter().sum();
    let ms = |us: u64| us as f64 / 1000.0;
    let after_lease = |t: Instant| {
        let d = t.saturating_duration_since(lease_end_local).as_secs_f64() * 1000.0;
        let early = lease_end_local.saturating_duration_since(t).as_secs_f64() * 1000.0;
        d - early
    };
    let released: Vec<f64> = waiters
        .iter()
        .map(|w| after_lease(w.released_at.expect("released")))
        .collect();
    let max_released = released.iter().cloned().fold(f64::MIN, f64::max);
    let once = waiters.iter().all(|w| w.released == 1);
    println!(
        "{layout}:{n}: sweep {} script calls, {:.1} ms of Lua in total, longest sweep call {:.2} ms; longest command meanwhile {:.2} ms ({}); waiters released {:.0} ms after the lease ended (latest of {}; lease {} ms; each released once: {once}); sweep over {:.0} ms after the lease ended",
        sweeps.len(),
        ms(total),
        ms(sweeps.iter().copied().max().unwrap_or(0)),
        longest.map_or(0.0, |e| ms(e.2)),
        longest.map_or(String::new(), |e| e
            .3
            .iter()
            .take(1)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")),
        max_released,
        waiters.len(),
        LEASE.as_millis(),
        after_lease(swept_at.expect("swept")),
    );
    println!(
        "{layout}:{n}:   sweep calls over 5 ms: {over_5ms}; longest (ms): {}; {probes}",
        top.join(", "),
    );
    println!("{layout}:{n}:   {pubsub}");
    drop(keep);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut runs: Vec<String> = std::env::args().skip(1).collect();
    if runs.is_empty() {
        runs = ["one:1000", "spread:1000", "one:10000", "spread:10000"]
            .map(String::from)
            .to_vec();
    }
    for r in runs {
        let (layout, n) = r.split_once(':').expect("layout:N");
        scenario(layout, n.parse().expect("N")).await;
    }
}
