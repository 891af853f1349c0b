//! `loadgen`: drives a server speaking protocol v1 (WebSocket) or the article's Socket.IO events
//! and reports hand-over latency (with R rooms held by idle clients), join throughput into one
//! room, memory per idle connection, a hot room's hand-over and a disconnect storm in one room
//! (server CPU, a bystander's waits, a survivor's release), as JSON.
//!
//! ```text
//! loadgen run --name axum --proto v1 --url ws://127.0.0.1:3000/occupancy \
//!     --spawn 'target/release/examples/documents' --out axum.json
//! loadgen run --name article --proto sio --url ws://127.0.0.1:9000 --pid 1234
//! loadgen report --md table.md --svg handover.svg axum.json socketio.json article.json
//! ```
//!
//! See `loadgen --help` and `loadgen/compare.sh` (the comparison of the three servers).

mod client;
mod cluster;
mod report;
mod scenario;
mod server;
mod sio;
mod soak;
mod stats;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use client::{Proto, Target};
use scenario::{Crowd, RoomsPoint, Settings, Storm, Via};
use stats::{Summary, median, median_summary};

const HELP: &str = "\
loadgen run [options]        drive one server, write a JSON result
  --name NAME                label in the results (default: server)
  --proto v1|sio             protocol v1 (WebSocket JSON) or the article's Socket.IO events
  --url ws://IP:PORT/PATH    v1: the endpoint (e.g. ws://127.0.0.1:3000/occupancy);
                             sio: the server (the Engine.IO path/query is added)
  --spawn CMD                start the server with `sh -c 'exec CMD'` (fresh for each phase and
                             repetition; killed at the end); its pid gives RSS and idleness
  --pid PID                  or: an already running server's pid (RSS, idleness)
  --server-log FILE          the spawned server's stdout/stderr (default: discarded)
  --via leave|disconnect     how a holder gives the room up (default: leave for v1,
                             disconnect for sio, whose article events have no leave)
  --rooms 0,1000,10000,50000 R: rooms held by idle clients during the hand-over loop
  --max-idle-conns N         idle connections at most (default 10000); above, each holds several
  --iterations N             hand-overs measured per R (default 1000), after --warmup (100)
  --pairs N                  rooms of two used in turn (default 100), each at most every
  --pair-interval-ms MS      (default 60: keeps v1 clients under the 20 messages/s limit)
  --clients N                clients joining one room at once, then the hot room (default 10001)
  --hot-rounds N             hot-room hand-overs (default 5)
  --repeat N                 repetitions; the JSON has each run and their medians (default 1)
  --storm-clients N          connections standing in one room reset at once (default --clients);
                             a survivor stays, a bystander pair does hand-overs in another room
  --storm-grace-ms MS        the server's grace (default 5000; 0 for the article's server): the
                             storm waits at least this long when its survivor was lost
  --phases rooms,crowd,storm which phases (default all three)
  --sources N                loopback source addresses 127.0.0.2.. (default 4)
  --concurrency N            connections opened at once (default 256)
  --out FILE                 the JSON result (default: stdout)
loadgen report [--md FILE] [--svg FILE] [--baseline NAME] RESULT.json...
                             the comparison table (markdown) and the hand-over-vs-R plot
loadgen soak [options]       churn soak of a protocol v1 server with GET /stats (the documents
                             example; start it with OCCUPANCY_CHECK_INVARIANTS=1); exit code 1
                             when any check failed (see loadgen/src/soak.rs)
  --url ws://IP:PORT/PATH[,...]  the endpoint(s) (default ws://127.0.0.1:3000/occupancy);
                             several: nodes sharing one Redis (not started here)
  --stats-url URL            the counters (default http://IP:PORT/stats of --url)
  --transport v1|socketio|mixed  protocol v1, Socket.IO (acked occupancy:* events, half over
                             a WebSocket, half long-polling; the server needs SOCKETIO=1) or a
                             third of each (default v1)
  --nodes N                  start a redis-server and N multi_node processes (--node-cmd) on
                             free ports; clients reconnect to a random node (default: none)
  --node-cmd CMD             a node (default target/release/examples/multi_node)
  --node-env 'K=V ...'       the nodes' environment (default LEASE_MS=2000 GRACE_MS=<grace>
                             PRIVATE_ROOMS=priv-)
  --lease-ms MS              the nodes' lease, for the checks (default 2000)
  --kill-every S             SIGKILL a random node every S s; it restarts 3 s later
  --redis-restart-every S    restart Redis (empty) every S s
  --redis-pause-every S      CLIENT PAUSE Redis for 1.5 s every S s
  --private-rooms            5% of joins/watches go to rooms priv-N the server refuses to users
                             of the other parity (PRIVATE_ROOMS=priv-; on with --nodes)
  --spawn CMD | --pid PID    start the server (killed at the end) / its pid, for RSS
  --server-log FILE          the spawned server's output (default: discarded)
  --clients N                clients at once (default 5000)
  --rooms N                  ordinary rooms; 10% of joins go to 5 hot rooms (default 500)
  --secs S                   how long the churn runs (default 600)
  --think-ms MS              mean time between two actions of a client (default 4000)
  --grace-ms MS              the server's grace (default 5000, the Hub's default)
  --sources N                loopback source addresses 127.0.0.2.. (default 4)
  --out FILE                 the JSON result (default: stdout)
";

/// One repetition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    /// Hand-over latency at each R.
    pub rooms: Vec<RoomsPoint>,
    /// (connections added, bytes per connection) from the RSS of the R steps.
    pub idle_conn_bytes: Option<(usize, f64)>,
    /// Join throughput and hot room.
    pub crowd: Option<Crowd>,
    /// The disconnect storm (absent in results of older versions).
    #[serde(default)]
    pub storm: Option<Storm>,
    /// Wall time of this repetition.
    pub secs: f64,
}

/// Medians over the repetitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Medians {
    /// (R, hand-over latency: field-wise medians).
    pub handover: Vec<(usize, Summary)>,
    /// Bytes of server RSS per idle connection.
    pub idle_conn_bytes: Option<f64>,
    /// Joins per second into one room.
    pub joins_per_sec: Option<f64>,
    /// No-op round trips per second on the same connections (v1).
    #[serde(default)]
    pub pings_per_sec: Option<f64>,
    /// Hot room: holder leaves → `released`, µs.
    pub hot_released_us: Option<f64>,
    /// Hot room: holder leaves → last `presence`, µs (v1).
    pub hot_last_presence_us: Option<f64>,
    /// Storm: server CPU from the drop until quiet, ms.
    #[serde(default)]
    pub storm_cpu_ms: Option<f64>,
    /// Storm: the bystander's p99 reply wait, µs.
    #[serde(default)]
    pub storm_bystander_p99_us: Option<f64>,
    /// Storm: the bystander's longest reply wait, µs.
    #[serde(default)]
    pub storm_bystander_max_us: Option<f64>,
    /// Storm: drop → the survivor is told it holds, ms (includes the server's grace).
    #[serde(default)]
    pub storm_survivor_ms: Option<f64>,
}

/// The JSON result of `loadgen run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Label.
    pub name: String,
    /// `v1` or `sio`.
    pub proto: String,
    /// URL driven.
    pub url: String,
    /// How holders gave rooms up.
    pub via: Via,
    /// The server command, when spawned.
    pub spawn: Option<String>,
    /// The settings, for the record.
    pub settings: serde_json::Value,
    /// Each repetition.
    pub runs: Vec<Run>,
    /// Medians over them.
    pub median: Medians,
    /// Online CPUs, load average at start, open-file limit.
    pub machine: serde_json::Value,
}

fn medians(runs: &[Run]) -> Medians {
    let mut handover = Vec::new();
    if let Some(first) = runs.first() {
        for (i, p) in first.rooms.iter().enumerate() {
            let s: Vec<Summary> = runs
                .iter()
                .filter_map(|r| r.rooms.get(i).map(|q| q.handover))
                .collect();
            handover.push((p.rooms, median_summary(&s)));
        }
    }
    let m =
        |f: &dyn Fn(&Run) -> Option<f64>| median(&runs.iter().filter_map(f).collect::<Vec<_>>());
    Medians {
        handover,
        idle_conn_bytes: m(&|r| r.idle_conn_bytes.map(|x| x.1)),
        joins_per_sec: m(&|r| r.crowd.as_ref().map(|c| c.joins_per_sec)),
        pings_per_sec: m(&|r| r.crowd.as_ref().and_then(|c| c.pings_per_sec)),
        hot_released_us: m(&|r| r.crowd.as_ref().and_then(|c| median(&c.hot_released_us))),
        hot_last_presence_us: m(&|r| {
            r.crowd
                .as_ref()
                .and_then(|c| median(&c.hot_last_presence_us))
        }),
        storm_cpu_ms: m(&|r| r.storm.as_ref().and_then(|s| s.cpu_ms)),
        storm_bystander_p99_us: m(&|r| {
            r.storm
                .as_ref()
                .filter(|s| s.bystander.n > 0)
                .map(|s| s.bystander.p99_us)
        }),
        storm_bystander_max_us: m(&|r| {
            r.storm
                .as_ref()
                .filter(|s| s.bystander.n > 0)
                .map(|s| s.bystander.max_us)
        }),
        storm_survivor_ms: m(&|r| r.storm.as_ref().and_then(|s| s.survivor_holds_ms)),
    }
}

struct Args(Vec<String>);

impl Args {
    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == name)?;
        if i + 1 >= self.0.len() {
            eprintln!("{name} needs a value");
            std::process::exit(2);
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Some(v)
    }

    fn num<T: std::str::FromStr>(&mut self, name: &str, default: T) -> T {
        match self.take(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("{name} {v}: not a number");
                std::process::exit(2);
            }),
        }
    }
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "cpus_available_to_loadgen": cpus,
        "online_cpus": std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default().trim(),
        "loadavg_at_start": load.trim(),
    })
}

async fn run(mut a: Args) -> Result<(), String> {
    let name = a.take("--name").unwrap_or_else(|| "server".into());
    let proto = match a.take("--proto").as_deref() {
        Some("v1") => Proto::V1,
        Some("sio") => Proto::Sio,
        other => return Err(format!("--proto v1|sio, not {other:?}")),
    };
    let url = a.take("--url").ok_or("--url is required")?;
    let spawn = a.take("--spawn");
    let pid: Option<u32> = a
        .take("--pid")
        .map(|p| p.parse().map_err(|_| "--pid"))
        .transpose()?;
    let log = a.take("--server-log");
    let via = match a.take("--via").as_deref() {
        None if proto == Proto::V1 => Via::Leave,
        None | Some("disconnect") => Via::Disconnect,
        Some("leave") if proto == Proto::V1 => Via::Leave,
        Some(v) => return Err(format!("--via {v}: leave (v1 only) or disconnect")),
    };
    let mut rooms: Vec<usize> = a
        .take("--rooms")
        .unwrap_or_else(|| "0,1000,10000,50000".into())
        .split(',')
        .map(|r| r.trim().parse().map_err(|_| format!("--rooms: {r}")))
        .collect::<Result<_, _>>()?;
    rooms.sort_unstable();
    rooms.dedup();
    let clients = a.num("--clients", 10_001usize).max(2);
    let settings = Settings {
        rooms,
        max_idle_conns: a.num("--max-idle-conns", 10_000usize).max(1),
        iterations: a.num("--iterations", 1000),
        warmup: a.num("--warmup", 100),
        pairs: a.num("--pairs", 100usize).max(1),
        pair_interval: Duration::from_millis(a.num("--pair-interval-ms", 60)),
        via,
        clients,
        hot_rounds: a.num("--hot-rounds", 5),
        concurrency: a.num("--concurrency", 256usize).max(1),
        storm_clients: a.num("--storm-clients", clients).max(1),
        storm_grace: Duration::from_millis(a.num("--storm-grace-ms", 5000)),
    };
    let repeat: usize = a.num("--repeat", 1usize).max(1);
    let phases = a
        .take("--phases")
        .unwrap_or_else(|| "rooms,crowd,storm".into());
    let sources: usize = a.num("--sources", 4);
    let out = a.take("--out");
    if let Some(extra) = a.0.first() {
        return Err(format!("unknown argument {extra}\n\n{HELP}"));
    }
    let target = Target::parse(proto, &url, sources)?;
    let nofile = server::raise_nofile();
    let needed = settings
        .max_idle_conns
        .max(settings.clients)
        .max(settings.storm_clients)
        + 2 * settings.pairs
        + 64;
    eprintln!("loadgen: {name} ({url}), open-file limit {nofile}");
    if (nofile as usize) < needed {
        eprintln!("warning: open-file limit {nofile} < {needed} connections this run may need");
    }

    let mut runs = Vec::new();
    for rep in 0..repeat {
        let started = Instant::now();
        let mut r = Run::default();
        for phase in phases.split(',') {
            eprintln!("[{name}] repetition {}/{repeat}: {phase}", rep + 1);
            let spawned = match &spawn {
                Some(cmd) => Some(server::Spawned::start(cmd, target.addr, log.as_deref()).await?),
                None => None,
            };
            let pid = spawned.as_ref().map(|s| s.pid).or(pid);
            let mut hub = scenario::Hub::new(target.clone(), settings.clone(), pid);
            hub.settle().await;
            let res = match phase {
                "rooms" => scenario::rooms_ladder(&mut hub).await.map(|pts| {
                    r.idle_conn_bytes = scenario::bytes_per_idle_conn(&pts);
                    if let Some((n, b)) = r.idle_conn_bytes {
                        eprintln!(
                            "  memory: {:.1} KiB per idle connection (over {n})",
                            b / 1024.0
                        );
                    }
                    r.rooms = pts;
                }),
                "crowd" => scenario::crowd(&mut hub).await.map(|c| r.crowd = Some(c)),
                "storm" => scenario::storm(&mut hub).await.map(|c| r.storm = Some(c)),
                other => Err(format!("unknown phase {other}")),
            };
            drop(hub);
            if let Some(s) = spawned {
                s.stop().await;
            }
            res?;
            // Let the kernel and this runtime finish closing the phase's sockets.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        r.secs = started.elapsed().as_secs_f64();
        runs.push(r);
    }
    let report = Report {
        name,
        proto: match proto {
            Proto::V1 => "v1".into(),
            Proto::Sio => "sio".into(),
        },
        url,
        via,
        spawn,
        settings: serde_json::json!({
            "rooms": settings.rooms,
            "max_idle_conns": settings.max_idle_conns,
            "iterations": settings.iterations,
            "warmup": settings.warmup,
            "pairs": settings.pairs,
            "pair_interval_ms": settings.pair_interval.as_millis() as u64,
            "clients": settings.clients,
            "hot_rounds": settings.hot_rounds,
            "storm_clients": settings.storm_clients,
            "storm_grace_ms": settings.storm_grace.as_millis() as u64,
            "repeat": repeat,
            "phases": phases,
            "sources": sources,
        }),
        median: medians(&runs),
        runs,
        machine: machine(),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match out {
        Some(path) => std::fs::write(&path, json + "\n").map_err(|e| format!("{path}: {e}"))?,
        None => println!("{json}"),
    }
    Ok(())
}

async fn soak_main(mut a: Args) -> Result<(), String> {
    let urls = a
        .take("--url")
        .unwrap_or_else(|| "ws://127.0.0.1:3000/occupancy".into());
    let mut urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let url = urls[0].clone();
    let host_of = |url: &str| -> Result<String, String> {
        Ok(url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| format!("{url}: only ws:// URLs"))?
            .to_string())
    };
    let host = host_of(&url)?;
    let stats_url = a
        .take("--stats-url")
        .unwrap_or_else(|| format!("http://{host}/stats"));
    let transport = a.take("--transport").unwrap_or_else(|| "v1".into());
    if !["v1", "socketio", "mixed"].contains(&transport.as_str()) {
        return Err(format!("--transport {transport}: v1, socketio or mixed"));
    }
    let nodes: usize = a.num("--nodes", 0);
    let node_cmd = a
        .take("--node-cmd")
        .unwrap_or_else(|| "target/release/examples/multi_node".into());
    let lease_ms: u64 = a.num("--lease-ms", 2000);
    let kill_every: f64 = a.num("--kill-every", 0.0);
    let redis_restart_every: f64 = a.num("--redis-restart-every", 0.0);
    let redis_pause_every: f64 = a.num("--redis-pause-every", 0.0);
    let private_flag = a.0.iter().position(|x| x == "--private-rooms");
    if let Some(i) = private_flag {
        a.0.remove(i);
    }
    let node_env = a.take("--node-env");
    let spawn = a.take("--spawn");
    let log = a.take("--server-log");
    let mut pid = a
        .take("--pid")
        .map(|p| p.parse::<u32>())
        .transpose()
        .map_err(|e| e.to_string())?;
    let settings = soak::SoakSettings {
        url,
        stats_url: stats_url.clone(),
        clients: a.num("--clients", 5000),
        rooms: a.num("--rooms", 500),
        secs: a.num("--secs", 600.0),
        think_ms: a.num("--think-ms", 4000),
        grace_ms: a.num("--grace-ms", 5000),
        sources: a.num("--sources", 4),
        pid: None,
        transport,
        urls: Vec::new(),
        stats_urls: Vec::new(),
        shared: nodes > 0 || urls.len() > 1,
        kill_every,
        redis_restart_every,
        redis_pause_every,
        lease_ms,
        private_rooms: private_flag.is_some() || nodes > 0,
    };
    if nodes == 0 && (kill_every > 0.0 || redis_restart_every > 0.0 || redis_pause_every > 0.0) {
        return Err("the faults need --nodes (the soak's own Redis and nodes)".into());
    }
    let out = a.take("--out");
    if let Some(extra) = a.0.first() {
        return Err(format!("unknown argument {extra}\n\n{HELP}"));
    }
    let nofile = server::raise_nofile();
    if (nofile as usize) < settings.clients + 100 {
        return Err(format!(
            "the open-file limit is {nofile}: too low for {} clients",
            settings.clients
        ));
    }
    let spawned = match &spawn {
        Some(cmd) => {
            let addr = host.parse().map_err(|e| format!("{host}: {e}"))?;
            let s = server::Spawned::start(cmd, addr, log.as_deref()).await?;
            pid = Some(s.pid);
            // Let it finish starting before the baseline RSS.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(s)
        }
        None => None,
    };
    let mut stats_urls = vec![stats_url.clone()];
    for u in urls.iter().skip(1) {
        stats_urls.push(format!("http://{}/stats", host_of(u)?));
    }
    let cluster = if nodes > 0 {
        let env = node_env.unwrap_or_else(|| {
            format!(
                "LEASE_MS={lease_ms} GRACE_MS={} PRIVATE_ROOMS=priv- RUST_LOG=warn",
                settings.grace_ms
            )
        });
        let c = cluster::Cluster::start(nodes, &node_cmd, &env, log.as_deref()).await?;
        urls = c
            .ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}/occupancy"))
            .collect();
        stats_urls = c
            .ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/stats"))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(c)
    } else {
        None
    };
    let report = soak::soak(
        soak::SoakSettings {
            pid,
            url: urls[0].clone(),
            stats_url: stats_urls[0].clone(),
            urls,
            stats_urls,
            ..settings
        },
        cluster,
    )
    .await;
    if let Some(s) = spawned {
        s.stop().await;
    }
    let report = report?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match out {
        Some(path) => std::fs::write(&path, json).map_err(|e| format!("{path}: {e}"))?,
        None => println!("{json}"),
    }
    let mib = |b: Option<u64>| {
        b.map_or("?".to_string(), |b| {
            format!("{:.1} MiB", b as f64 / 1048576.0)
        })
    };
    eprintln!(
        "soak: {} requests ({:.0}/s), {} notices, {} resumes ({} in grace, {} refused after it), {} abrupt drops; RSS {} → peak {} → end {}",
        report.counters.requests,
        report.requests_per_sec,
        report.counters.notices,
        report.counters.resumes,
        report.counters.resumed_in_grace,
        report.counters.refused_after_grace,
        report.counters.abrupt_drops,
        mib(report.rss_baseline),
        mib(report.rss_peak),
        mib(report.rss_end),
    );
    eprintln!(
        "soak: connections {:?}; faults: {}; tolerated: {} unavailable, {} closed with their node, {} resumes in a fault; {} forbidden as the rule says; double holds: {} over the lease (longest {} ms); killed holders: {} checked, {} late (slowest {} ms)",
        report.counters.connections,
        report.faults.len(),
        report.counters.unavailable_in_fault,
        report.counters.closed_by_kill,
        report.counters.resumes_in_fault,
        report.counters.forbidden_as_expected,
        report.hold_overlaps,
        report.longest_double_hold_ms,
        report.kill_holders_checked,
        report.kill_holders_not_replaced,
        report.slowest_kill_replacement_ms,
    );
    for p in &report.processes {
        eprintln!(
            "soak: {} RSS {} → peak {} → end {}",
            p.name,
            mib(p.before),
            mib(p.peak),
            mib(p.after)
        );
    }
    if report.failures.is_empty() {
        eprintln!("soak: PASSED (every check)");
        Ok(())
    } else {
        Err(format!("soak FAILED:\n  {}", report.failures.join("\n  ")))
    }
}

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return;
    }
    let cmd = argv.remove(0);
    let res = match cmd.as_str() {
        "run" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(run(Args(argv)))),
        "report" => report::main(Args(argv)),
        "soak" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(soak_main(Args(argv)))),
        other => Err(format!("unknown command {other}\n\n{HELP}")),
    };
    if let Err(e) = res {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
