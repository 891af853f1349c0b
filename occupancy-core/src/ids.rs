//! Identifiers and small value types shared by every layer: room ids (validated), session ids,
//! occupant keys, resume tokens, occupant metadata and the public `Person` shown to others.
//!
//! Everything here is cheap to clone (`Arc` inside) because the same room id and person appear in
//! many notices at once.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, RoomIdError};

/// A validated room id: UTF-8, `1..=max_len` bytes, no control characters.
///
/// Construct it with [`RoomId::parse`] (checks against a maximum length) — the state machine
/// validates again with its own configured limit, so a `RoomId` can never bypass the rules.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

impl RoomId {
    /// Default maximum length of a room id in bytes.
    pub const DEFAULT_MAX_LEN: usize = 256;

    /// Validates `s` as a room id of at most `max_len` bytes.
    pub fn parse(s: &str, max_len: usize) -> Result<Self, Error> {
        Self::check(s, max_len)?;
        Ok(RoomId(Arc::from(s)))
    }

    /// Checks `s` without allocating.
    pub fn check(s: &str, max_len: usize) -> Result<(), Error> {
        if s.is_empty() {
            return Err(Error::RoomInvalid(RoomIdError::Empty));
        }
        if s.len() > max_len {
            return Err(Error::RoomInvalid(RoomIdError::TooLong {
                len: s.len(),
                max: max_len,
            }));
        }
        if let Some(pos) = s
            .char_indices()
            .find(|(_, c)| c.is_control())
            .map(|(i, _)| i)
        {
            return Err(Error::RoomInvalid(RoomIdError::ControlCharacter {
                at: pos,
            }));
        }
        Ok(())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RoomId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for RoomId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for RoomId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// One live connection. Chosen by the runtime (random, so that ids from several server nodes
/// never collide); the state machine only requires them to be unique.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{:016x}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(SessionId)
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who stands in line: the authenticated principal (user id) when there is one, otherwise the
/// session itself. All sessions of one principal are one occupant: they hold together and never
/// wait behind each other.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OccupantKey {
    /// An authenticated user (the principal given at connect).
    User(Arc<str>),
    /// An anonymous session: its own occupant.
    Anonymous(SessionId),
}

impl OccupantKey {
    /// The key of a session with an optional principal.
    pub fn of(session: SessionId, principal: Option<&Arc<str>>) -> Self {
        match principal {
            Some(p) => OccupantKey::User(p.clone()),
            None => OccupantKey::Anonymous(session),
        }
    }
}

impl fmt::Debug for OccupantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OccupantKey::User(u) => write!(f, "User({u:?})"),
            OccupantKey::Anonymous(s) => write!(f, "Anon({s:?})"),
        }
    }
}

/// The public id of an occupant: the user id, or `~` followed by the session id for an anonymous
/// occupant (user ids come from the application, so the `~` prefix keeps the two apart for ids
/// that do not themselves start with `~`).
impl fmt::Display for OccupantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OccupantKey::User(u) => f.write_str(u),
            OccupantKey::Anonymous(s) => write!(f, "~{s}"),
        }
    }
}

impl Serialize for OccupantKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A secret that lets a reconnecting client take its disconnected session back within the grace
/// period. 128 random bits (generated by the runtime); single use: a successful resume replaces it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResumeToken(pub u128);

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret in logs.
        f.write_str("ResumeToken(..)")
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for ResumeToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::ResumeInvalid);
        }
        u128::from_str_radix(s, 16)
            .map(ResumeToken)
            .map_err(|_| Error::ResumeInvalid)
    }
}

/// Public metadata of an occupant (a display name, an avatar URL): a small JSON object, shown to
/// the others in the room. Its encoded size is checked against `Limits::max_meta_bytes`.
#[derive(Clone, Default, PartialEq)]
pub struct Meta {
    map: Option<Arc<Map<String, Value>>>,
    encoded_len: usize,
}

impl Meta {
    /// The empty object `{}`.
    pub fn empty() -> Self {
        Meta::default()
    }

    /// Accepts a JSON object (or `null`, meaning empty). Anything else is [`Error::MetaInvalid`].
    pub fn from_value(value: Value) -> Result<Self, Error> {
        match value {
            Value::Null => Ok(Meta::empty()),
            Value::Object(map) => Ok(Meta::from_map(map)),
            _ => Err(Error::MetaInvalid),
        }
    }

    /// Wraps a JSON object.
    pub fn from_map(map: Map<String, Value>) -> Self {
        if map.is_empty() {
            return Meta::empty();
        }
        let encoded_len = serde_json::to_vec(&map)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        Meta {
            map: Some(Arc::new(map)),
            encoded_len,
        }
    }

    /// Checks the encoded size against a limit (`Limits::max_meta_bytes`): the one place the
    /// metadata limit is applied, by the state machine, the Redis backend and the adapters.
    pub fn check(&self, max_bytes: usize) -> Result<(), Error> {
        if self.encoded_len() > max_bytes {
            return Err(Error::MetaTooLarge {
                len: self.encoded_len(),
                limit: max_bytes,
            });
        }
        Ok(())
    }

    /// The size of the JSON encoding in bytes (2 for `{}`).
    pub fn encoded_len(&self) -> usize {
        if self.map.is_none() {
            2
        } else {
            self.encoded_len
        }
    }

    /// The object's fields (empty for `{}`).
    pub fn as_map(&self) -> Option<&Map<String, Value>> {
        self.map.as_deref()
    }

    /// A field of the object, e.g. `meta.get("name")`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.as_ref().and_then(|m| m.get(key))
    }

    /// The metadata as a JSON value (an object).
    pub fn to_value(&self) -> Value {
        Value::Object(self.map.as_deref().cloned().unwrap_or_default())
    }

    /// True when both point at the same allocation (cheap equality used on hot paths).
    pub fn ptr_eq(&self, other: &Meta) -> bool {
        match (&self.map, &other.map) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.map {
            None => f.write_str("{}"),
            Some(m) => write!(f, "{}", Value::Object((**m).clone())),
        }
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.map {
            None => Map::new().serialize(s),
            Some(m) => m.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Meta::from_value(v).map_err(serde::de::Error::custom)
    }
}

/// An occupant as others see it: `{"id": ..., "meta": {...}, "since": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Person {
    /// The occupant's public id (see [`OccupantKey`]'s `Display`).
    pub id: OccupantKey,
    /// The occupant's public metadata.
    pub meta: Meta,
    /// When the occupant entered the room's line: Unix time in milliseconds, by the server's
    /// clock ("editing since 10:42").
    pub since: u64,
}
