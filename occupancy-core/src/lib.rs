//! # occupancy-core
//!
//! The transport-free heart of [`occupancy`](https://docs.rs/occupancy): who is on a page
//! ("room") and who came first. The first occupant of a room holds it; the rest wait in line and
//! are told it is occupied; the next in line is told the moment it is released.
//!
//! - [`Machine`]: the room-queue state machine. Pure: no I/O, no clock, no locks. Every rule lives
//!   here.
//! - [`room_notices`]: the rules of who is told what, as one pure function of a room's (old, new)
//!   state: the reference the machine's per-edit notices are tested against, and what the Redis
//!   backend uses for states arriving from other nodes.
//! - [`Hub`]: the tokio runtime: sessions with bounded notice streams, grace timers,
//!   authorization, slow-consumer handling.
//! - [`Backend`]: the seam between the Hub and where the state lives. In this process:
//!   [`MemoryBackend`] keeps them in one machine (the default), [`ShardedBackend`] spreads them
//!   over several so that independent rooms proceed in parallel (`HubBuilder::shards`).
//! - `testing` (feature `testing`): the conformance suite every backend must pass.
//!
//! ```
//! use std::time::Instant;
//! use occupancy_core::{Machine, Meta, NoticeKind, ResumeToken, SessionId};
//!
//! let mut m = Machine::default();
//! let (alice, bob) = (SessionId(1), SessionId(2));
//! m.connect(alice, Some("alice"), Meta::empty(), ResumeToken(1)).unwrap();
//! m.connect(bob, Some("bob"), Meta::empty(), ResumeToken(2)).unwrap();
//!
//! assert!(m.join(alice, "document-1", None).unwrap().holding);
//! assert_eq!(m.join(bob, "document-1", None).unwrap().position, 1);
//!
//! m.leave(alice, "document-1").unwrap();
//! let released: Vec<_> = m
//!     .drain_notices()
//!     .filter(|n| matches!(n.kind, NoticeKind::Released { .. }))
//!     .collect();
//! assert_eq!(released.len(), 1);
//! assert_eq!(released[0].session, bob);
//! # let _ = Instant::now();
//! ```
//!
//! ## Metrics
//!
//! The [`Hub`] records what happens through the [`metrics`](https://docs.rs/metrics) facade, a
//! no-op until the application installs a recorder (`metrics-exporter-prometheus`, say; the
//! `documents` and `multi_node` examples serve `GET /metrics`). Gauges are set when asked
//! ([`Hub::record_gauges`], before rendering a scrape).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `occupancy_requests_total` | counter | `op`, `result` (`ok` or the error code) | every request of a session (join, leave, takeover, watch, unwatch, update, active) |
//! | `occupancy_request_duration_seconds` | histogram | `op` | from the call to its return: the change, and the delivery of its urgent notices (a holder's `leave` returns once the next one's `released` is queued) |
//! | `occupancy_released_total` | counter | | `released` notices queued (one per session of each new holder) |
//! | `occupancy_handover_seconds` | histogram | | per `released` notice: from the change that released the room (when the Hub took the notice for delivery; with a shared backend, when the change reached this node) to the moment the new holder's connection took the notice from its queue to send it. The Hub's and the connection task's part of a hand-over, not the network's |
//! | `occupancy_displaced_total` | counter | `reason` (`takeover`, `idle`, `server`) | `displaced` notices queued, by why the holder lost the room |
//! | `occupancy_forced_releases_total` | counter | | [`Hub::release`] calls that succeeded |
//! | `occupancy_kicks_total` | counter | | sessions ended by [`Hub::kick`] |
//! | `occupancy_slow_consumers_total` | counter | | sessions closed because their notice buffer overflowed |
//! | `occupancy_connects_total` | counter | | sessions started |
//! | `occupancy_disconnects_total` | counter | `ending` (`lost`, `closed`) | connections ended, by how (which grace applies) |
//! | `occupancy_closes_total` | counter | | sessions closed at once (sign-out, liveness timeout) |
//! | `occupancy_resumes_total` | counter | `result` (`accepted`, `refused`) | resume attempts |
//! | `occupancy_graces_expired_total` | counter | | sessions whose grace ended (this Hub's timer) |
//! | `occupancy_rooms`, `occupancy_occupants`, `occupancy_watchers`, `occupancy_sessions`, `occupancy_sessions_in_grace` | gauge | | the backend's counts (with a shared backend, of every node) |
//! | `occupancy_connections` | gauge | | this Hub's live connections |
#![warn(missing_docs)]
// On docs.rs (nightly, `--cfg docsrs`): badges saying which feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod change;
mod config;
mod error;
mod hub;
mod identity;
mod ids;
mod line;
mod machine;
mod memory;
mod notice;
mod origin;
mod outbox;
pub mod protocol;
mod queue;
mod rate;
mod relay;
mod room_table;
mod sharded;
mod state;
#[cfg(feature = "testing")]
pub mod testing;

pub use async_trait::async_trait;
pub use backend::{Backend, NoticeSink};
pub use hub::{
    Action, AuthFuture, AuthQuery, AuthRequest, Authorize, AuthorizeAsync, DEFAULT_NOTICE_BUFFER,
    Hub, HubBuilder, Notices, RoomChange, RoomChanges, Session,
};
pub use memory::MemoryBackend;
pub use sharded::{MAX_SHARDS, ShardedBackend};

#[cfg(feature = "serde")]
#[doc(hidden)]
pub use config::millis as serde_millis;
pub use config::{Config, Ending, Limits};
pub use error::{Error, RoomIdError};
pub use identity::Identity;
pub use ids::{Meta, OccupantKey, Person, ResumeToken, RoomId, SessionId};
pub use machine::{Drain, ForcedRelease, Joined, Left, Machine, Resumed, Stats};
pub use notice::{DisplacedReason, Notice, NoticeKind, Presence, PresenceBody, room_notices};
pub use origin::OriginPolicy;
pub use rate::{Rate, TokenBucket};
pub use state::{OccupantState, RoomRef, RoomState, RoomSummary, Sessions};
