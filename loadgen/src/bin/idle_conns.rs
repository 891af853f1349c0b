//! `idle_conns`: server memory per idle connection, quickly. Starts a server (or takes a running
//! one's pid), opens `--warmup` connections, reads its RSS, opens `--n` more (each optionally
//! joining a room of its own), waits until the server is idle, reads its RSS again and prints
//! the difference per connection. The servers are the examples and the floors in this directory
//! (`bare_ws`, `bare_sio`):
//!
//! ```text
//! cargo build --release -p loadgen --bins && cargo build --release --example documents
//! target/release/idle_conns --proto v1 --join --url ws://127.0.0.1:3999/occupancy \
//!     --spawn 'env PORT=3999 target/release/examples/documents' --n 5000
//! target/release/idle_conns --proto raw --url ws://127.0.0.1:3999/ \
//!     --spawn 'env PORT=3999 target/release/bare_ws' --n 5000
//! ```
//!
//! One line of JSON on stdout per run (`--repeat`, each with a fresh server when spawned).

#[path = "../server.rs"]
#[allow(dead_code)]
mod server;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const HELP: &str = "\
idle_conns [options]
  --proto v1|sio|raw   v1: protocol v1 (waits for `hello`; --join sends a join and waits for
                       `joined`); sio: Engine.IO/Socket.IO handshake (--join emits
                       join_document_room); raw: the WebSocket handshake only
  --url ws://IP:PORT/PATH  (sio: the Engine.IO path and query are added when missing)
  --spawn CMD          start the server with `sh -c 'exec CMD'` (killed at the end)
  --pid PID            or: a running server's pid
  --n N                connections measured (default 5000)
  --warmup N           connections opened before the first reading (default 200)
  --join               each connection joins a room of its own (idle-<i>)
  --hold SECS          read the RSS again after this long idle (server pings; default 0)
  --server-log FILE    the spawned server's stdout/stderr (default: discarded)
  --repeat N           runs (a fresh server each when spawned; default 1)
  --sources N          loopback source addresses 127.0.0.2.. (default 4)
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    V1,
    Sio,
    Raw,
}

struct Opts {
    proto: Proto,
    addr: SocketAddr,
    url: String,
    spawn: Option<String>,
    pid: Option<u32>,
    log: Option<String>,
    n: usize,
    warmup: usize,
    join: bool,
    hold: u64,
    repeat: usize,
    sources: Vec<Ipv4Addr>,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut proto = None;
    let mut url = None;
    let mut spawn = None;
    let mut pid = None;
    let mut log = None;
    let (mut n, mut warmup, mut repeat, mut sources) = (5000, 200, 1, 4);
    let mut join = false;
    let mut hold = 0;
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--proto" => {
                proto = Some(match val()?.as_str() {
                    "v1" => Proto::V1,
                    "sio" => Proto::Sio,
                    "raw" => Proto::Raw,
                    p => return Err(format!("--proto {p}: v1, sio or raw")),
                })
            }
            "--url" => url = Some(val()?),
            "--spawn" => spawn = Some(val()?),
            "--server-log" => log = Some(val()?),
            "--pid" => pid = Some(val()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--n" => n = num(val()?)?,
            "--warmup" => warmup = num(val()?)?,
            "--repeat" => repeat = num(val()?)?.max(1),
            "--sources" => sources = num(val()?)?.clamp(1, 200),
            "--join" => join = true,
            "--hold" => hold = num(val()?)? as u64,
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}\n{HELP}")),
        }
    }
    let proto = proto.ok_or("--proto is required")?;
    let url = url.ok_or("--url is required")?;
    if spawn.is_none() == pid.is_none() {
        return Err("one of --spawn and --pid".into());
    }
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    let mut url = format!("ws://{host}/{path}");
    if proto == Proto::Sio && !path.contains("EIO=") {
        if path.is_empty() {
            url.push_str("socket.io/");
        }
        url.push_str(if url.contains('?') { "&" } else { "?" });
        url.push_str("EIO=4&transport=websocket");
    }
    let sources = (0..sources)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect();
    Ok(Opts {
        proto,
        addr,
        url,
        spawn,
        pid,
        log,
        n,
        warmup,
        join,
        hold,
        repeat,
        sources,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connections the server closed before the end of the run (a run with any is not valid).
static CLOSED: AtomicUsize = AtomicUsize::new(0);

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    // Engine.IO ping during the handshake.
                    ws.send(Message::text("3"))
                        .await
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                return Ok(t.to_string());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// Connects connection `id`, does the handshake (and the join), then keeps it open (answering
/// Engine.IO pings) until `stop` changes.
async fn open(o: Arc<Opts>, id: usize, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let src = o.sources[id % o.sources.len()];
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let tcp = socket.connect(o.addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let req = o
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let room = format!("idle-{id}");
    match o.proto {
        Proto::Raw => {}
        Proto::V1 => {
            let hello = next_text(&mut ws).await?;
            if !hello.contains(r#""ev":"hello""#) {
                return Err(format!("hello expected: {hello}"));
            }
            if o.join {
                let msg = format!(r#"{{"op":"join","room":"{room}"}}"#);
                ws.send(Message::text(msg))
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    let t = next_text(&mut ws).await?;
                    if t.contains(r#""ev":"joined""#) {
                        break;
                    }
                    if t.contains(r#""ev":"error""#) {
                        return Err(t);
                    }
                }
            }
        }
        Proto::Sio => {
            let open = next_text(&mut ws).await?;
            if !open.starts_with('0') {
                return Err(format!("engine.io open expected: {open}"));
            }
            ws.send(Message::text("40"))
                .await
                .map_err(|e| e.to_string())?;
            let t = next_text(&mut ws).await?;
            if !t.starts_with("40") {
                return Err(format!("socket.io CONNECT refused: {t}"));
            }
            if o.join {
                let msg = format!(r#"42["join_document_room","{room}"]"#);
                ws.send(Message::text(msg))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        if ws.send(Message::text("3")).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        if !*stop.borrow() {
                            CLOSED.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                },
            }
        }
    });
    Ok(())
}

async fn open_many(
    o: &Arc<Opts>,
    ids: std::ops::Range<usize>,
    stop: &watch::Receiver<bool>,
) -> Result<(), String> {
    let gate = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        let permit = gate.clone().acquire_owned().await.expect("open");
        let (o, stop) = (o.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let r = open(o, id, stop).await;
            drop(permit);
            r.map_err(|e| format!("connection {id}: {e}"))
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn run_once(o: &Arc<Opts>) -> Result<serde_json::Value, String> {
    let spawned = match &o.spawn {
        Some(cmd) => Some(server::Spawned::start(cmd, o.addr, o.log.as_deref()).await?),
        None => None,
    };
    let pid = spawned.as_ref().map_or_else(|| o.pid.unwrap(), |s| s.pid);
    let (stop_tx, stop) = watch::channel(false);
    CLOSED.store(0, Ordering::Relaxed);
    let t = Instant::now();
    open_many(o, 0..o.warmup, &stop).await?;
    server::settle(pid, Duration::from_secs(10)).await;
    let (rss0, anon0) = (status_kib(pid, "VmRSS:"), status_kib(pid, "RssAnon:"));
    open_many(o, o.warmup..o.warmup + o.n, &stop).await?;
    let opened = t.elapsed().as_secs_f64();
    server::settle(pid, Duration::from_secs(10)).await;
    // A second look after a pause: the reading must be stable, not a burst's leftovers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, anon1) = (status_kib(pid, "VmRSS:"), status_kib(pid, "RssAnon:"));
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some((b as f64 - a as f64) / o.n as f64),
        _ => None,
    };
    let mut held = serde_json::Value::Null;
    if o.hold > 0 {
        tokio::time::sleep(Duration::from_secs(o.hold)).await;
        held = serde_json::json!({
            "secs": o.hold,
            "kib_per_conn": per(rss0, status_kib(pid, "VmRSS:")).map(|k| (k * 100.0).round() / 100.0),
        });
    }
    let out = serde_json::json!({
        "url": o.url,
        "spawn": o.spawn,
        "join": o.join,
        "n": o.n,
        "warmup": o.warmup,
        "rss_kib_before": rss0,
        "rss_kib_after": rss1,
        "kib_per_conn": per(rss0, rss1).map(|k| (k * 100.0).round() / 100.0),
        "anon_kib_per_conn": per(anon0, anon1).map(|k| (k * 100.0).round() / 100.0),
        "open_secs": (opened * 10.0).round() / 10.0,
        "after_hold": held,
        "closed_by_server": CLOSED.load(Ordering::Relaxed),
    });
    let _ = stop_tx.send(true);
    if let Some(s) = spawned {
        s.stop().await;
    }
    let closed = CLOSED.load(Ordering::Relaxed);
    if closed > 0 {
        return Err(format!(
            "{closed} connections were closed by the server during the run: {out}"
        ));
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let o = match parse() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let limit = server::raise_nofile();
    if (limit as usize) < o.n + o.warmup + 64 {
        eprintln!(
            "open-file limit {limit} is below {} connections",
            o.n + o.warmup
        );
        std::process::exit(2);
    }
    for _ in 0..o.repeat {
        match run_once(&o).await {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
}
