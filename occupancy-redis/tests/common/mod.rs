//! Shared test helpers: a private redis-server, and a backend that keeps it alive.
#![allow(dead_code)]

pub mod server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use occupancy_core::{
    Backend, Config, Ending, Error, ForcedRelease, Hub, Joined, Left, Meta, Notice, NoticeKind,
    NoticeSink, Notices, PresenceBody, ResumeToken, Resumed, RoomState, Session, SessionId, Stats,
    async_trait,
};
use occupancy_redis::{RedisBackend, RedisConfig};
use serde_json::json;
pub use server::RedisServer;

/// How long a test waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// How long a test lets the nodes settle before asserting that nothing (more) came.
pub const SETTLE: Duration = Duration::from_millis(300);

/// A signed-in user `name` (also its display name) on `hub`.
pub async fn user(hub: &Hub, name: &str) -> (Session, Notices) {
    let meta = Meta::from_value(json!({ "name": name })).unwrap();
    hub.connect(Some(name.into()), meta).await.unwrap()
}

/// A Hub on a node of its own (its own `RedisBackend`, test settings) with this grace.
pub async fn node(url: &str, grace: Duration) -> Hub {
    let backend = RedisBackend::connect(test_config(url)).await.unwrap();
    Hub::builder()
        .backend(backend)
        .grace(grace)
        .build()
        .unwrap()
}

/// Who stands in `room`, in order (their occupant ids).
pub async fn line(hub: &Hub, room: &str) -> Vec<String> {
    hub.occupants(room)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id.to_string())
        .collect()
}

/// Waits for a notice matching `pred` (up to [`PATIENCE`]), dropping those before it.
pub async fn expect(n: &mut Notices, what: &str, pred: impl Fn(&Notice) -> bool) -> Notice {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, n.recv()).await {
            Ok(Some(x)) if pred(&x) => return x,
            Ok(Some(_)) => {}
            Ok(None) => panic!("notices ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Waits [`SETTLE`], then takes every notice waiting.
pub async fn drain(n: &mut Notices) -> Vec<Notice> {
    tokio::time::sleep(SETTLE).await;
    let mut v = Vec::new();
    while let Some(x) = n.try_recv() {
        v.push(x);
    }
    v
}

pub fn released(n: &Notice) -> bool {
    matches!(n.kind, NoticeKind::Released { .. })
}

/// A [`RedisBackend`] together with the server it uses (killed when the last clone is dropped).
#[derive(Clone)]
pub struct Owned {
    pub backend: RedisBackend,
    pub server: Arc<RedisServer>,
}

/// A fresh server and a backend on it.
pub async fn owned() -> Owned {
    let server = Arc::new(RedisServer::start());
    let backend = RedisBackend::connect(test_config(&server.url()))
        .await
        .expect("connect to the test redis");
    Owned { backend, server }
}

/// Settings for tests: short lease, short timeouts.
pub fn test_config(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .lease(Duration::from_millis(1000))
        .op_timeout(Duration::from_millis(1000))
}

/// A notice sink that keeps every notice delivered to it (for a backend driven without a Hub).
#[derive(Default)]
pub struct Recorder {
    pub notices: Mutex<Vec<Notice>>,
}

impl NoticeSink for Recorder {
    fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>) {
        self.notices.lock().unwrap().extend(notices);
    }
    fn is_local(&self, _: SessionId) -> bool {
        true
    }
    fn session_ended(&self, _: SessionId, _: Option<Error>) {}
}

/// A node driven through the `Backend` trait (no Hub), recording its notices in the sink.
pub async fn raw_node(url: &str) -> (RedisBackend, Arc<Recorder>) {
    let backend = RedisBackend::connect(test_config(url)).await.unwrap();
    let sink = Arc::new(Recorder::default());
    backend.attach(&Config::default(), sink.clone()).unwrap();
    (backend, sink)
}

/// Connects session `id` on a raw node, as user `principal` if given.
pub async fn raw_session(b: &RedisBackend, id: u64, principal: Option<&str>) -> SessionId {
    let s = SessionId(id);
    b.connect(s, principal, Meta::empty(), ResumeToken(id as u128 * 7 + 1))
        .await
        .unwrap();
    s
}

#[async_trait]
impl Backend for Owned {
    fn attach(&self, config: &Config, sink: Arc<dyn NoticeSink>) -> Result<(), Error> {
        self.backend.attach(config, sink)
    }
    async fn connect(
        &self,
        session: SessionId,
        principal: Option<&str>,
        meta: Meta,
        token: ResumeToken,
    ) -> Result<(), Error> {
        self.backend.connect(session, principal, meta, token).await
    }
    async fn disconnect(
        &self,
        session: SessionId,
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        self.backend.disconnect(session, now, ending).await
    }
    async fn close(&self, session: SessionId) -> Result<(), Error> {
        self.backend.close(session).await
    }
    async fn resume(
        &self,
        token: ResumeToken,
        new_token: ResumeToken,
        now: Instant,
    ) -> Result<Resumed, Error> {
        self.backend.resume(token, new_token, now).await
    }
    async fn join(&self, s: SessionId, room: &str, meta: Option<Meta>) -> Result<Joined, Error> {
        self.backend.join(s, room, meta).await
    }
    async fn update(&self, s: SessionId, room: &str, meta: Meta) -> Result<Joined, Error> {
        self.backend.update(s, room, meta).await
    }
    async fn active(&self, s: SessionId, room: &str) -> Result<Joined, Error> {
        self.backend.active(s, room).await
    }
    async fn release(&self, room: &str) -> Result<ForcedRelease, Error> {
        self.backend.release(room).await
    }
    async fn leave(&self, s: SessionId, room: &str) -> Result<Left, Error> {
        self.backend.leave(s, room).await
    }
    async fn takeover(&self, s: SessionId, room: &str) -> Result<Joined, Error> {
        self.backend.takeover(s, room).await
    }
    async fn watch(&self, s: SessionId, room: &str) -> Result<PresenceBody, Error> {
        self.backend.watch(s, room).await
    }
    async fn unwatch(&self, s: SessionId, room: &str) -> Result<bool, Error> {
        self.backend.unwatch(s, room).await
    }
    async fn room(&self, room: &str) -> Result<Option<RoomState>, Error> {
        self.backend.room(room).await
    }
    async fn stats(&self) -> Result<Stats, Error> {
        self.backend.stats().await
    }
    async fn poll_timeout(&self) -> Option<Instant> {
        self.backend.poll_timeout().await
    }
    async fn handle_timeout(&self, now: Instant) -> Result<usize, Error> {
        self.backend.handle_timeout(now).await
    }
    async fn session_for_token(
        &self,
        token: ResumeToken,
    ) -> Result<Option<(SessionId, Option<String>)>, Error> {
        self.backend.session_for_token(token).await
    }
    async fn check_invariants(&self) -> Result<(), String> {
        self.backend.check_invariants().await
    }
}
