//! The typed errors of every layer, each with a stable machine-readable [`Error::code`] that the
//! adapters put on the wire (protocol v1 `error.code`) and a message saying what to do.

use std::time::Duration;

/// Why a room id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    /// The id was the empty string.
    #[error("room id is empty")]
    Empty,
    /// The id was longer than the configured maximum.
    #[error("room id is {len} bytes, the limit is {max}")]
    TooLong {
        /// Length of the id in bytes.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The id contained a control character.
    #[error("room id contains a control character at byte {at}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        at: usize,
    },
}

/// Everything that can go wrong in a call. A call that returns an error changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The room id is not acceptable.
    #[error(
        "invalid room id: {0}; use 1 to the configured maximum bytes of UTF-8 without control characters"
    )]
    RoomInvalid(RoomIdError),
    /// The session is already in (joined or watching) the maximum number of rooms.
    #[error("this connection is already in {limit} rooms, the limit; leave one first")]
    TooManyRooms {
        /// Configured limit.
        limit: usize,
    },
    /// The room already has the maximum number of occupants.
    #[error("room is full ({limit} occupants)")]
    RoomFull {
        /// Configured limit.
        limit: usize,
    },
    /// The metadata is larger than allowed.
    #[error("metadata is {len} bytes of JSON, the limit is {limit}")]
    MetaTooLarge {
        /// Encoded length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The metadata is not a JSON object.
    #[error("metadata must be a JSON object")]
    MetaInvalid,
    /// Take over was asked for a room the session has not joined.
    #[error("not in this room; join it before taking it over")]
    NotInRoom,
    /// `update` (or `active`) was asked for a room the session does not stand in.
    #[error("not a member of this room; join it first")]
    NotMember,
    /// The session id is not known (never connected, or already gone).
    #[error("unknown or closed session")]
    UnknownSession,
    /// A session with this id already exists.
    #[error("a session with this id already exists")]
    SessionExists,
    /// The resume token is malformed, unknown, already used or expired.
    #[error("resume token is unknown, used or expired; connect as a new session")]
    ResumeInvalid,
    /// The authorization hook refused.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// The hook's reason.
        reason: String,
    },
    /// Too many messages per second.
    #[error("too many messages; slow down (limit {per_second}/s)")]
    RateLimited {
        /// Configured limit.
        per_second: u32,
    },
    /// The backend cannot be reached (e.g. Redis is down). Retry later.
    #[error("backend unavailable: {reason}; retry later")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The session was closed because it could not keep up with its notices.
    #[error("session closed: it did not read its notices fast enough (buffer of {capacity})")]
    SlowConsumer {
        /// Notice buffer size.
        capacity: usize,
    },
    /// This connection was replaced: the session was resumed by another connection (a client that
    /// reconnected with the resume token before the server noticed the old connection died).
    #[error("session resumed by another connection")]
    SessionReplaced,
    /// The application ended this session ([`Hub::kick`](crate::Hub::kick)): do not resume.
    #[error("session ended by the server")]
    Kicked,
    /// A timer-related configuration is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The stable code used on the wire (protocol v1 `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::RoomInvalid(_) => "room_invalid",
            Error::TooManyRooms { .. } => "too_many_rooms",
            Error::RoomFull { .. } => "room_full",
            Error::MetaTooLarge { .. } => "meta_too_large",
            Error::MetaInvalid => "meta_invalid",
            Error::NotInRoom => "not_in_room",
            Error::NotMember => "not_member",
            Error::UnknownSession => "unknown_session",
            Error::SessionExists => "session_exists",
            Error::ResumeInvalid => "resume_invalid",
            Error::Forbidden { .. } => "forbidden",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::SlowConsumer { .. } => "slow_consumer",
            Error::SessionReplaced => "session_replaced",
            Error::Kicked => "kicked",
            Error::Config(_) => "config",
        }
    }
}

/// Helper for configuration validation messages.
pub(crate) fn check_duration(name: &str, d: Duration, max: Duration) -> Result<(), Error> {
    if d > max {
        return Err(Error::Config(format!(
            "{name} is {d:?}, the maximum is {max:?}"
        )));
    }
    Ok(())
}
