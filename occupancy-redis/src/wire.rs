//! What the scripts store and reply, decoded: room states (`{"v","o","w"}` JSON, see the crate
//! docs) into core [`RoomState`]s, and the scripts' JSON replies. Lua's cjson encodes an empty
//! array as `{}`, so every list accepts an empty object too.

use std::sync::Arc;

use occupancy_core::{Error, Meta, OccupantKey, OccupantState, RoomState, SessionId};
use serde::{Deserialize, Deserializer};

/// A list that Lua may have written as `{}` when empty.
pub(crate) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L<T> {
        Seq(Vec<T>),
        Map(serde_json::Map<String, serde_json::Value>),
    }
    match L::<T>::deserialize(d)? {
        L::Seq(v) => Ok(v),
        L::Map(m) if m.is_empty() => Ok(Vec::new()),
        L::Map(_) => Err(serde::de::Error::custom("expected a list")),
    }
}

#[derive(Deserialize)]
struct WireRoom {
    v: String,
    #[serde(default, deserialize_with = "list")]
    o: Vec<WireOccupant>,
}

#[derive(Deserialize)]
struct WireOccupant {
    k: String,
    m: String,
    #[serde(default, deserialize_with = "list")]
    s: Vec<String>,
    #[serde(default)]
    x: Option<String>,
}

/// A decoded room state plus what only this backend needs.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub state: RoomState,
    /// The raw JSON (sent back by `restore` after Redis lost its data).
    pub raw: Arc<str>,
    /// The earliest deadline of a restored placeholder (Redis ms), if any.
    pub placeholder_until: Option<u64>,
}

pub(crate) fn bad(what: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: format!("unexpected reply from Redis: {what}"),
    }
}

pub(crate) fn session_hex(s: SessionId) -> String {
    format!("{:016x}", s.0)
}

pub(crate) fn parse_session(s: &str) -> Result<SessionId, Error> {
    u64::from_str_radix(s, 16).map(SessionId).map_err(bad)
}

fn parse_key(k: &str) -> Result<OccupantKey, Error> {
    if let Some(u) = k.strip_prefix("u:") {
        Ok(OccupantKey::User(Arc::from(u)))
    } else if let Some(a) = k.strip_prefix("a:") {
        Ok(OccupantKey::Anonymous(parse_session(a)?))
    } else {
        Err(bad(format_args!("occupant key {k:?}")))
    }
}

pub(crate) fn parse_meta(m: &str) -> Result<Meta, Error> {
    let v: serde_json::Value = serde_json::from_str(m).map_err(bad)?;
    Meta::from_value(v).map_err(bad)
}

/// Decodes a stored room state.
pub(crate) fn decode_room(raw: &str) -> Result<Decoded, Error> {
    let w: WireRoom = serde_json::from_str(raw).map_err(bad)?;
    let version = w.v.parse::<u64>().map_err(bad)?;
    let mut occupants = Vec::with_capacity(w.o.len());
    let mut placeholder_until: Option<u64> = None;
    for o in w.o {
        if let Some(x) = &o.x {
            let x = x.parse::<u64>().map_err(bad)?;
            placeholder_until = Some(placeholder_until.map_or(x, |p| p.min(x)));
        }
        occupants.push(OccupantState {
            key: parse_key(&o.k)?,
            meta: parse_meta(&o.m)?,
            sessions: o
                .s
                .iter()
                .map(|s| parse_session(s))
                .collect::<Result<_, _>>()?,
        });
    }
    Ok(Decoded {
        state: RoomState { version, occupants },
        raw: Arc::from(raw),
        placeholder_until,
    })
}

/// A script's reply (every field optional; see `lua.rs`).
#[derive(Deserialize, Default)]
pub(crate) struct Reply {
    /// Error code.
    #[serde(default)]
    pub e: Option<String>,
    /// Changed rooms, in order.
    #[serde(default, deserialize_with = "list")]
    pub c: Vec<(String, String)>,
    /// The state of the room the call was about.
    #[serde(default)]
    pub r: Option<String>,
    /// Position (0-based).
    #[serde(default)]
    pub p: Option<u32>,
    /// Was a member / was watching.
    #[serde(default)]
    pub wm: Option<u8>,
    /// A count.
    #[serde(default)]
    pub n: Option<u64>,
    /// A status (renew).
    #[serde(default)]
    pub s: Option<i64>,
    /// Nodes whose lease ended (renew), or problems (check).
    #[serde(default, deserialize_with = "list")]
    pub x: Vec<String>,
    /// Session id (resume, token).
    #[serde(default)]
    pub i: Option<String>,
    /// Was live (resume).
    #[serde(default)]
    pub lv: Option<u8>,
    /// Principal (resume, token).
    #[serde(default)]
    pub pr: Option<String>,
    /// Meta (resume).
    #[serde(default)]
    pub me: Option<String>,
    /// Joined rooms with their states (resume).
    #[serde(default, deserialize_with = "list")]
    pub j: Vec<(String, String)>,
    /// Watched rooms with their states (resume).
    #[serde(default, deserialize_with = "list")]
    pub w: Vec<(String, String)>,
}

/// Maps a script's error code to the core's typed error.
pub(crate) fn code_error(code: &str, limits: &occupancy_core::Limits) -> Error {
    match code {
        "unknown_session" => Error::UnknownSession,
        "session_exists" => Error::SessionExists,
        "resume_invalid" => Error::ResumeInvalid,
        // Another node owns the session: the caller's connection was replaced by a resume there.
        "not_owner" => Error::SessionReplaced,
        "not_in_room" => Error::NotInRoom,
        "not_member" => Error::NotMember,
        "too_many_rooms" => Error::TooManyRooms {
            limit: limits.max_rooms_per_session,
        },
        "room_full" => Error::RoomFull {
            limit: limits.max_occupants_per_room,
        },
        other => bad(format_args!("error code {other:?}")),
    }
}
