//! What the scripts store and reply, decoded: room states (`{"v","o","w","h","a","p","r"}` JSON,
//! see the crate docs) into core [`RoomState`]s, and the scripts' JSON replies. Lua's cjson
//! encodes an empty array as `{}`, so every list accepts an empty object too.

use std::borrow::Cow;
use std::sync::Arc;

use occupancy_core::{
    DisplacedReason, Error, Meta, OccupantKey, OccupantState, Person, RoomState, SessionId,
};
use serde::{Deserialize, Deserializer};

/// A list that Lua may have written as `{}` when empty. Read in one pass (an untagged enum
/// would first copy the whole value, a long line included, into an intermediate tree).
pub(crate) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list (or an empty object)")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(x) = seq.next_element()? {
                v.push(x);
            }
            Ok(v)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            match map.next_key::<serde::de::IgnoredAny>()? {
                None => Ok(Vec::new()),
                Some(_) => Err(serde::de::Error::custom("expected a list")),
            }
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// A number of milliseconds the scripts store as a decimal string (like versions: cjson would
/// print large numbers in exponent form); a plain JSON number is accepted too.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Str(String),
        Int(u64),
        Float(f64),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => None,
        Some(N::Str(s)) => Some(s.parse::<u64>().map_err(serde::de::Error::custom)?),
        Some(N::Int(n)) => Some(n),
        Some(N::Float(f)) if f >= 0.0 => Some(f as u64),
        Some(N::Float(f)) => return Err(serde::de::Error::custom(format!("negative time {f}"))),
    })
}

// Borrowed where the JSON has no escapes (ids, session lists): a long line decodes with a few
// allocations per occupant, not one per field.
#[derive(Deserialize)]
struct WireRoom<'a> {
    #[serde(borrow)]
    v: Cow<'a, str>,
    #[serde(default, deserialize_with = "list", borrow)]
    o: Vec<WireOccupant<'a>>,
    /// When the holder was granted the room (Redis ms); absent when nobody stands in line, and
    /// in rooms stored before it existed.
    #[serde(default, deserialize_with = "millis")]
    h: Option<u64>,
    /// The holder's last refresh of its idle clock (Redis ms), when later than `h`.
    #[serde(default, deserialize_with = "millis")]
    a: Option<u64>,
    /// Why the holder was displaced by the change that made this version: `"idle"`,
    /// `"server"`; absent for a take over (and for changes that displaced nobody).
    #[serde(default)]
    r: Option<String>,
}

#[derive(Deserialize)]
struct WireOccupant<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    #[serde(borrow)]
    m: Cow<'a, str>,
    #[serde(default, deserialize_with = "list")]
    s: Vec<Sid>,
    #[serde(default, borrow)]
    x: Option<Cow<'a, str>>,
    /// When the occupant entered the line (Redis ms); 0 in rooms stored before it existed.
    #[serde(default, deserialize_with = "millis")]
    t: Option<u64>,
}

/// A session id in a stored line (16 hex digits), parsed where it lies in the JSON.
struct Sid(SessionId);

impl<'de> Deserialize<'de> for Sid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sid;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a session id in hex")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sid, E> {
                u64::from_str_radix(v, 16)
                    .map(|n| Sid(SessionId(n)))
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A decoded room state plus what only this backend needs.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub state: RoomState,
    /// The raw JSON (sent back by `restore` after Redis lost its data).
    pub raw: Arc<str>,
    /// The earliest deadline of a restored placeholder (Redis ms), if any.
    pub placeholder_until: Option<u64>,
    /// The holder's idle clock (Redis ms): its last refresh, else when it was granted the room
    /// (`None` when nobody holds, or the room was stored without either).
    pub active_at: Option<u64>,
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
    // Most occupants of a long line show no metadata: no JSON value to build for them.
    if m == "{}" {
        return Ok(Meta::empty());
    }
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
            sessions: o.s.into_iter().map(|s| s.0).collect(),
            since: o.t.unwrap_or(0),
        });
    }
    let held = !occupants.is_empty();
    let reason = match w.r.as_deref() {
        Some("idle") => DisplacedReason::Idle,
        Some("server") => DisplacedReason::Server,
        // Absent (a take over, or nobody was displaced) or a reason this version does not know.
        _ => DisplacedReason::Takeover,
    };
    Ok(Decoded {
        state: RoomState {
            version,
            occupants,
            held_since: w.h.filter(|_| held),
            reason,
        },
        raw: Arc::from(raw),
        placeholder_until,
        active_at: w.a.or(w.h).filter(|_| held),
    })
}

/// One edit of a room's line, as a delta publish describes it (see `lua.rs`). `at` is the
/// occupant's place (0-based) and `key` its key, checked against the cached line before the edit
/// is made: a mismatch means the cache is not the state the edit was made on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Edit {
    /// A new occupant at the back of the line.
    Append(OccupantState),
    /// A session added to the occupant at `at`.
    AddSession {
        at: usize,
        key: OccupantKey,
        session: SessionId,
    },
    /// A session removed from the occupant at `at` (the occupant too, when it was its last).
    RemoveSession {
        at: usize,
        key: OccupantKey,
        session: SessionId,
    },
    /// The metadata of the occupant at `at`.
    Meta {
        at: usize,
        key: OccupantKey,
        meta: Meta,
    },
}

/// A decoded delta: the edit and the room's clocks after it (`h`, `a` as in a stored state).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub edit: Edit,
    /// The delta's JSON as published (kept for `restore`, see [`patch_raw`]).
    pub raw: Arc<str>,
    pub held_since: Option<u64>,
    pub active_at: Option<u64>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow)]
    e: Cow<'a, str>,
    #[serde(default)]
    i: Option<usize>,
    #[serde(default, borrow)]
    k: Option<Cow<'a, str>>,
    #[serde(default)]
    s: Option<Sid>,
    #[serde(default, borrow)]
    m: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    o: Option<WireOccupant<'a>>,
    #[serde(default, deserialize_with = "millis")]
    h: Option<u64>,
    #[serde(default, deserialize_with = "millis")]
    a: Option<u64>,
}

/// Decodes a published delta's JSON (O(the edit), whatever the line's length).
pub(crate) fn decode_delta(raw: &str) -> Result<Change, Error> {
    let w: WireDelta = serde_json::from_str(raw).map_err(bad)?;
    let at = || w.i.ok_or_else(|| bad("delta without a place"));
    let key = || parse_key(w.k.as_deref().ok_or_else(|| bad("delta without a key"))?);
    let session = || {
        w.s.as_ref()
            .map(|s| s.0)
            .ok_or_else(|| bad("delta without a session"))
    };
    let edit = match &*w.e {
        "j" => {
            let o =
                w.o.as_ref()
                    .ok_or_else(|| bad("append without an occupant"))?;
            Edit::Append(OccupantState {
                key: parse_key(&o.k)?,
                meta: parse_meta(&o.m)?,
                sessions: o.s.iter().map(|s| s.0).collect(),
                since: o.t.unwrap_or(0),
            })
        }
        "s" => Edit::AddSession {
            at: at()?,
            key: key()?,
            session: session()?,
        },
        "x" => Edit::RemoveSession {
            at: at()?,
            key: key()?,
            session: session()?,
        },
        "m" => Edit::Meta {
            at: at()?,
            key: key()?,
            meta: parse_meta(
                w.m.as_deref()
                    .ok_or_else(|| bad("meta edit without meta"))?,
            )?,
        },
        other => return Err(bad(format_args!("delta kind {other:?}"))),
    };
    Ok(Change {
        edit,
        raw: Arc::from(raw),
        held_since: w.h,
        active_at: w.a.or(w.h),
    })
}

impl Change {
    /// Makes the edit on `state` (a copy of the state at the delta's previous version) and sets
    /// its version; `Err` when the state is not the one the edit was made on (the occupant at
    /// `at` is another, the session is already there or not there): the room must be re-read.
    /// O(1) for an append, a session or a meta edit; removing an occupant shifts the places
    /// behind it (a memmove).
    pub(crate) fn apply_to(&self, state: &mut RoomState, version: u64) -> Result<(), ()> {
        let occ = |state: &mut RoomState, at: usize, key: &OccupantKey| {
            state
                .occupants
                .get_mut(at)
                .filter(|o| o.key == *key)
                .map(|_| at)
                .ok_or(())
        };
        match &self.edit {
            Edit::Append(o) => {
                state.occupants.push(o.clone());
            }
            Edit::AddSession { at, key, session } => {
                let at = occ(state, *at, key)?;
                let o = &mut state.occupants[at];
                if o.sessions.contains(session) {
                    return Err(());
                }
                o.sessions.push(*session);
            }
            Edit::RemoveSession { at, key, session } => {
                let at = occ(state, *at, key)?;
                let o = &mut state.occupants[at];
                if !o.sessions.contains(session) {
                    return Err(());
                }
                o.sessions.retain(|s| s != session);
                if o.sessions.is_empty() {
                    state.occupants.remove(at);
                }
            }
            Edit::Meta { at, key, meta } => {
                let at = occ(state, *at, key)?;
                state.occupants[at].meta = meta.clone();
            }
        }
        let held = !state.occupants.is_empty();
        state.version = version;
        state.held_since = self.held_since.filter(|_| held);
        // A change a delta describes displaced nobody (the scripts clear `r` on every bump).
        state.reason = DisplacedReason::Takeover;
        Ok(())
    }
}

/// A stored state's JSON with published deltas made on it, in order (for `restore`, which needs
/// what only the JSON has: order keys `q`, a pending release `p`). O(line) per call: a node
/// calls it when Redis lost its data, and every few dozen deltas to keep what it holds bounded.
pub(crate) fn patch_raw(raw: &str, deltas: &[(u64, Arc<str>)]) -> Result<String, Error> {
    use serde_json::Value;
    let mut st: Value = serde_json::from_str(raw).map_err(bad)?;
    let obj = st
        .as_object_mut()
        .ok_or_else(|| bad("room state is not an object"))?;
    for (version, d) in deltas {
        let d: Value = serde_json::from_str(d).map_err(bad)?;
        if !obj.get("o").is_some_and(Value::is_array) {
            obj.insert("o".into(), Value::Array(Vec::new()));
        }
        let line = obj["o"].as_array_mut().expect("made an array above");
        let at = d["i"].as_u64().unwrap_or(0) as usize;
        fn sessions(o: &mut Value) -> Option<&mut Vec<Value>> {
            if !o.get("s").is_some_and(Value::is_array) {
                o.as_object_mut()?
                    .insert("s".into(), Value::Array(Vec::new()));
            }
            o["s"].as_array_mut()
        }
        match d["e"].as_str() {
            Some("j") => line.push(d["o"].clone()),
            Some("s") => {
                if let Some(s) = line.get_mut(at).and_then(sessions) {
                    s.push(d["s"].clone());
                }
            }
            Some("x") => {
                let emptied = line.get_mut(at).and_then(sessions).is_some_and(|s| {
                    s.retain(|x| *x != d["s"]);
                    s.is_empty()
                });
                if emptied {
                    line.remove(at);
                }
            }
            Some("m") => {
                if let Some(o) = line.get_mut(at).and_then(Value::as_object_mut) {
                    o.insert("m".into(), d["m"].clone());
                }
            }
            _ => return Err(bad("unknown delta kind")),
        }
        obj.insert("v".into(), Value::String(version.to_string()));
        // A new grant (`h` changed) drops a pending forced release, as `save_room` does.
        if obj.get("h") != d.get("h") {
            obj.remove("p");
        }
        for f in ["h", "a"] {
            match d.get(f) {
                Some(v) if !v.is_null() => obj.insert(f.into(), v.clone()),
                _ => obj.remove(f),
            };
        }
        obj.remove("r");
    }
    serde_json::to_string(&st).map_err(bad)
}

/// How many sessions watch a stored room (its `"w"` list), without decoding the line.
pub(crate) fn watcher_count(raw: &str) -> Result<u32, Error> {
    #[derive(Deserialize)]
    struct Watchers {
        #[serde(default, deserialize_with = "list")]
        w: Vec<serde::de::IgnoredAny>,
    }
    let w: Watchers = serde_json::from_str(raw).map_err(bad)?;
    Ok(w.w.len() as u32)
}

/// What a call's reply says about the room it was about: its version and holder after the call.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub version: u64,
    pub holder: Option<Person>,
}

impl Head {
    pub fn of(state: &RoomState) -> Head {
        Head {
            version: state.version,
            holder: state.holder().map(OccupantState::person),
        }
    }
}

/// A script's reply (every field optional; see `lua.rs`).
#[derive(Deserialize, Default)]
pub(crate) struct Reply {
    /// Error code.
    #[serde(default)]
    pub e: Option<String>,
    /// Changed rooms, in order: room, version, state (empty when the script reports the version
    /// only).
    #[serde(default, deserialize_with = "list")]
    pub c: Vec<(String, String, String)>,
    /// The state of the room the call was about, when the call did not change it by a publish.
    #[serde(default)]
    pub r: Option<String>,
    /// Which entry of `c` (1-based) is the state of the room the call was about.
    #[serde(default)]
    pub ri: Option<usize>,
    /// The room the call was about, after it (from `r` or `c[ri]`; filled by the caller of the
    /// script, not sent).
    #[serde(skip)]
    pub head: Option<Head>,
    /// `r`, decoded (filled by the caller of the script, not sent).
    #[serde(skip)]
    pub state: Option<Decoded>,
    /// Position (0-based).
    #[serde(default)]
    pub p: Option<u32>,
    /// Was a member / was watching.
    #[serde(default)]
    pub wm: Option<u8>,
    /// A count.
    #[serde(default)]
    pub n: Option<u64>,
    /// Milliseconds until a holder's idle deadline (idle), or Redis time in ms (renew).
    #[serde(default, deserialize_with = "millis")]
    pub d: Option<u64>,
    /// What a forced release did: `vacant`, `pending` or `handed` (release).
    #[serde(default)]
    pub k: Option<String>,
    /// A status (renew).
    #[serde(default)]
    pub s: Option<i64>,
    /// More to do (sweep): 1, or 0 when the sweep is over.
    #[serde(default)]
    pub m: Option<u8>,
    /// The earliest lease end of the other nodes, in Redis ms (renew).
    #[serde(default, deserialize_with = "millis")]
    pub ne: Option<u64>,
    /// Nodes to sweep (renew), or problems (check).
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
        // The session's room is being written back after Redis lost its data.
        "restoring" => Error::Unavailable {
            reason: "the shared state is being restored".into(),
        },
        "too_many_rooms" => Error::TooManyRooms {
            limit: limits.max_rooms_per_session,
        },
        "room_full" => Error::RoomFull {
            limit: limits.max_occupants_per_room,
        },
        other => bad(format_args!("error code {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_new_fields() {
        let raw = r#"{"v":"9","h":"1700000000500","a":"1700000000900","r":"idle",
            "o":[{"k":"u:bob","m":"{}","q":"8","s":["0000000000000002"],"t":"1700000000100"},
                 {"k":"a:0000000000000001","m":"{}","q":"7","s":["0000000000000001"],"t":1700000000000}],
            "w":{}}"#;
        let d = decode_room(raw).unwrap();
        assert_eq!(d.state.held_since, Some(1_700_000_000_500));
        assert_eq!(d.state.reason, DisplacedReason::Idle);
        assert_eq!(d.active_at, Some(1_700_000_000_900));
        let since: Vec<u64> = d.state.occupants.iter().map(|o| o.since).collect();
        assert_eq!(since, [1_700_000_000_100, 1_700_000_000_000]);
        let d = decode_room(&raw.replace(r#""r":"idle","#, r#""r":"server","#)).unwrap();
        assert_eq!(d.state.reason, DisplacedReason::Server);
        // No `a`: the idle clock is the grant.
        let d = decode_room(&raw.replace(r#""a":"1700000000900","#, "")).unwrap();
        assert_eq!(d.active_at, Some(1_700_000_000_500));
    }

    #[test]
    fn rooms_stored_before_the_new_fields_decode() {
        let raw =
            r#"{"v":"5","o":[{"k":"u:old","m":"{}","q":"5","s":["00000000000000aa"]}],"w":{}}"#;
        let d = decode_room(raw).unwrap();
        assert_eq!(d.state.occupants[0].since, 0);
        assert_eq!(d.state.held_since, None);
        assert_eq!(d.state.reason, DisplacedReason::Takeover);
        assert_eq!(d.active_at, None);
        // Nobody in line: no held_since even if one was left behind.
        let d = decode_room(r#"{"v":"5","o":{},"w":["00000000000000aa"],"h":"3"}"#).unwrap();
        assert_eq!((d.state.held_since, d.active_at), (None, None));
        assert!(decode_room(r#"{"v":"5","o":{},"w":{},"h":"soon"}"#).is_err());
    }
}
