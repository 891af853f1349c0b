//! `heap_census`: where the heap of an idle connection goes, counted by a global allocator that
//! keeps the live bytes and blocks (what RSS shows, minus malloc's own overhead and free
//! chunks). RSS (`idle_conns`) is the figure of issue 7; this is its breakdown.
//!
//! ```text
//! heap_census hub [N]        N Hub sessions (no network): heap per session, then per joined room
//!                            (SHARDS=n: the in-memory backend with n shards)
//! PORT=3999 MODE=bare_ws heap_census serve     # the servers, printing the live heap whenever
//! PORT=3999 MODE=endpoint heap_census serve    # it changes (to stderr); drive them with
//! PORT=3999 MODE=bare_sio heap_census serve    # `idle_conns --server-log FILE`
//! PORT=3999 MODE=occupancy_sio heap_census serve
//! ```
//!
//! `TRACE_SIZE=8193-16384` prints the stacks of a few allocations of that size (the 500th on);
//! `SIZES=1000` prints the live blocks by exact size (8-byte steps up to 4 KiB) that number at
//! least 1,000 (per connection, with 10,000 connections: which blocks each one keeps).
//!
//! `bare_ws`/`endpoint` use occupancy-axum's buffer settings (`READ_BUFFER` to change the read
//! buffer), `bare_sio`/`occupancy_sio` the `socketio_documents` example's (`WS_READ_BUFFER`,
//! `MAX_BUFFER` to change socketioxide's; `ORIGIN_LAYER=1` to serve behind `OriginLayer`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use axum::serve::ListenerExt;

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);
/// Live blocks by size class: class `i` holds sizes in `(2^(i-1), 2^i]`.
static CLASSES: [AtomicIsize; 32] = [const { AtomicIsize::new(0) }; 32];

/// Live blocks by exact size (rounded up to 8 bytes), up to 4 KiB: `SIZES=N` prints the sizes
/// with at least N live blocks.
static EXACT: [AtomicIsize; 513] = [const { AtomicIsize::new(0) }; 513];

fn exact(size: usize) -> &'static AtomicIsize {
    &EXACT[size.div_ceil(8).min(512)]
}

/// `TRACE_SIZE=LO-HI`: print the stack of a few allocations of LO..=HI bytes (who makes them).
static TRACE_LO: AtomicIsize = AtomicIsize::new(-1);
static TRACE_HI: AtomicIsize = AtomicIsize::new(-1);
static TRACED: AtomicIsize = AtomicIsize::new(0);
thread_local! {
    static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn trace(size: usize) {
    let size = size as isize;
    if size < TRACE_LO.load(Relaxed) || size > TRACE_HI.load(Relaxed) {
        return;
    }
    // Skip the first ones (start-up), then show a few.
    let n = TRACED.fetch_add(1, Relaxed);
    if !(500..503).contains(&n) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    eprintln!(
        "allocation of {size} bytes:\n{}",
        std::backtrace::Backtrace::force_capture()
    );
    IN_TRACE.with(|t| t.set(false));
}

fn class(size: usize) -> usize {
    (usize::BITS - size.saturating_sub(1).leading_zeros()).min(31) as usize
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        CLASSES[class(l.size())].fetch_add(1, Relaxed);
        exact(l.size()).fetch_add(1, Relaxed);
        trace(l.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        CLASSES[class(l.size())].fetch_add(1, Relaxed);
        exact(l.size()).fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as isize, Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        CLASSES[class(l.size())].fetch_sub(1, Relaxed);
        exact(l.size()).fetch_sub(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new as isize - l.size() as isize, Relaxed);
        CLASSES[class(l.size())].fetch_sub(1, Relaxed);
        CLASSES[class(new)].fetch_add(1, Relaxed);
        exact(l.size()).fetch_sub(1, Relaxed);
        exact(new).fetch_add(1, Relaxed);
        trace(new);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// `SIZES=N`: prints the live blocks by exact size that number at least N (to stderr).
fn print_sizes() {
    if let Some(min) = std::env::var("SIZES").ok().and_then(|v| v.parse().ok()) {
        let sizes: Vec<String> = (0..513)
            .filter_map(|i| {
                let n = EXACT[i].load(Relaxed);
                (n >= min).then(|| format!("{}:{n}", i * 8))
            })
            .collect();
        eprintln!(
            "  live blocks by exact size (8-byte steps) {}",
            sizes.join(" ")
        );
    }
}

fn live() -> (isize, isize) {
    (BYTES.load(Relaxed), BLOCKS.load(Relaxed))
}

fn per(label: &str, before: (isize, isize), after: (isize, isize), n: usize) {
    let n = n as f64;
    println!(
        "{label}: {:.0} bytes in {:.1} blocks each",
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n
    );
}

async fn hub(n: usize) {
    use occupancy_core::{Hub, Meta};
    // SHARDS=n: the Hub's in-memory backend with n shards (HubBuilder::shards).
    let shards = std::env::var("SHARDS").map_or(1, |v| v.parse().expect("SHARDS"));
    let hub = Hub::builder().shards(shards).build().expect("hub");
    // Warm up the maps, then measure from a steady state.
    let mut keep = Vec::with_capacity(2 * n);
    for _ in 0..n {
        keep.push(hub.connect(None, Meta::default()).await.expect("connect"));
    }
    let t0 = live();
    for _ in 0..n {
        keep.push(hub.connect(None, Meta::default()).await.expect("connect"));
    }
    let t1 = live();
    for (i, (s, _)) in keep[n..].iter().enumerate() {
        s.join(&format!("idle-{i}"), None).await.expect("join");
    }
    let t2 = live();
    println!(
        "sizes: Session {} B, Notices {} B",
        size_of::<occupancy_core::Session>(),
        size_of::<occupancy_core::Notices>()
    );
    per("Hub::connect (session, registry, backend)", t0, t1, n);
    per("join, one room each (holder)", t1, t2, n);
    print_sizes();
}

async fn serve(mode: &str, port: u16) -> std::io::Result<()> {
    let app = match mode {
        "bare_ws" => axum::Router::new().fallback(|ws: axum::extract::WebSocketUpgrade| async {
            ws.max_message_size(64 * 1024)
                .max_frame_size(64 * 1024)
                .read_buffer_size(occupancy_axum_read_buffer())
                .write_buffer_size(occupancy_axum::Settings::default().write_buffer_bytes)
                .on_upgrade(|mut s| async move { while let Some(Ok(_)) = s.recv().await {} })
        }),
        "endpoint" => {
            let mut b = occupancy_axum::Endpoint::builder(occupancy_core::Hub::new());
            if let Ok(n) = std::env::var("READ_BUFFER") {
                let write = occupancy_axum::Settings::default().write_buffer_bytes;
                b = b.buffers(n.parse().expect("READ_BUFFER"), write);
            }
            b.build().expect("settings").router("/occupancy")
        }
        "bare_sio" | "occupancy_sio" => {
            let env = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().expect(k));
            let (layer, io) = socketioxide::SocketIo::builder()
                .max_payload(2 << 20)
                .ws_max_message_size(2 << 20)
                .ws_max_frame_size(2 << 20)
                .ws_read_buffer_size(env("WS_READ_BUFFER", 4096))
                .max_buffer_size(env("MAX_BUFFER", 128))
                .build_layer();
            if mode == "bare_sio" {
                io.ns("/", async |_: socketioxide::extract::SocketRef| {});
            } else {
                occupancy_socketio::Occupancy::new(occupancy_core::Hub::new())
                    .attach(&io)
                    .expect("attach");
            }
            let app = axum::Router::new().layer(layer);
            // ORIGIN_LAYER=1: behind occupancy-socketio's OriginLayer, which hands socketioxide
            // its own copy of the request head (without it, each session keeps hyper's read
            // buffer).
            if std::env::var("ORIGIN_LAYER").is_ok_and(|v| v == "1") {
                app.layer(occupancy_socketio::OriginLayer::any())
            } else {
                app
            }
        }
        m => panic!("MODE={m}: bare_ws, endpoint, bare_sio or occupancy_sio"),
    };
    tokio::spawn(async {
        let mut last = (0, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = live();
            if now != last {
                let classes: Vec<String> = (0..32)
                    .filter_map(|i| {
                        let n = CLASSES[i].load(Relaxed);
                        (n > 0).then(|| format!("<={}:{n}", 1u64 << i))
                    })
                    .collect();
                eprintln!(
                    "heap {} bytes {} blocks; live blocks by size {}",
                    now.0,
                    now.1,
                    classes.join(" ")
                );
                print_sizes();
                last = now;
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// `READ_BUFFER`, or what `occupancy-axum` sets by default.
fn occupancy_axum_read_buffer() -> usize {
    std::env::var("READ_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(occupancy_axum::Settings::default().read_buffer_bytes)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hub") => {
            let n = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(10_000);
            hub(n).await;
        }
        Some("serve") => {
            if let Some((lo, hi)) = std::env::var("TRACE_SIZE").ok().and_then(|v| {
                Some((
                    v.split_once('-')?.0.parse().ok()?,
                    v.split_once('-')?.1.parse().ok()?,
                ))
            }) {
                TRACE_LO.store(lo, Relaxed);
                TRACE_HI.store(hi, Relaxed);
            }
            let mode = std::env::var("MODE").unwrap_or_else(|_| "endpoint".into());
            let port = std::env::var("PORT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3999);
            if let Err(e) = serve(&mode, port).await {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("heap_census hub [N] | MODE=... heap_census serve (see the source)");
            std::process::exit(2);
        }
    }
}
