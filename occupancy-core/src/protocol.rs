//! Protocol v1: the JSON messages spoken by the adapters, independent of the transport.
//!
//! The axum adapter sends these as WebSocket text frames; the Socket.IO adapter uses the same
//! request objects (without `op`) as event payloads and the same reply objects as acks. Keeping
//! them here means both adapters put exactly the same bytes on the wire.
//!
//! Client → server ([`Request::parse`]):
//!
//! | op | fields | reply |
//! |---|---|---|
//! | `join` | `room`, `meta` (optional object), `ref` | `joined` |
//! | `leave` | `room`, `ref` | `left` |
//! | `takeover` | `room`, `ref` | `joined` |
//! | `watch` | `room`, `ref` | `watching` |
//! | `unwatch` | `room`, `ref` | `left` |
//! | `ping` | `ref` | `pong` |
//!
//! `ref` is optional (a string of at most 64 bytes, or an integer) and echoed in the reply.
//! Unknown fields are ignored. Server → client messages are [`Event`]s, tagged by `ev`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::ids::{Meta, Person, ResumeToken, RoomId, SessionId};
use crate::machine::{Joined, Left};
use crate::notice::{DisplacedReason, Notice, NoticeKind, PresenceBody};

/// The protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted `ref` string, in bytes.
pub const MAX_REF_LEN: usize = 64;

/// A request's correlation id, echoed in its reply: a short string or an integer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Ref {
    /// An integer ref.
    Int(i64),
    /// A string ref.
    Str(String),
}

/// The operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Stand in a room's line.
    Join,
    /// Leave a room's line.
    Leave,
    /// Take a room over.
    Takeover,
    /// Watch a room without standing in line.
    Watch,
    /// Stop watching.
    Unwatch,
    /// Change your own metadata in a room you stand in, without leaving.
    Update,
    /// "Still working here": refreshes the holder's idle clock.
    Active,
    /// Application-level ping (browsers cannot send WebSocket pings).
    Ping,
}

impl OpKind {
    /// Every op, for docs and tests.
    pub const ALL: [OpKind; 8] = [
        OpKind::Join,
        OpKind::Leave,
        OpKind::Takeover,
        OpKind::Watch,
        OpKind::Unwatch,
        OpKind::Update,
        OpKind::Active,
        OpKind::Ping,
    ];

    /// The op's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Join => "join",
            OpKind::Leave => "leave",
            OpKind::Takeover => "takeover",
            OpKind::Watch => "watch",
            OpKind::Unwatch => "unwatch",
            OpKind::Update => "update",
            OpKind::Active => "active",
            OpKind::Ping => "ping",
        }
    }

    /// Parses an op name.
    pub fn parse(s: &str) -> Option<Self> {
        OpKind::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A parsed, well-formed request. The room id is not validated here (the state machine does it,
/// with its configured limit), so a bad room id gets `room_invalid`, not `bad_message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The correlation id, if any.
    pub r#ref: Option<Ref>,
    /// What to do.
    pub op: OpKind,
    /// The room (empty for `ping`).
    pub room: String,
    /// Metadata: optional for `join`, required for `update`, ignored otherwise.
    pub meta: Option<Meta>,
}

/// Why a request could not be parsed; carries the `ref` when it could be read, so the error reply
/// can still be matched by the client. The code is `bad_message`, `unknown_op`, or `meta_invalid`
/// (a `meta` that is not an object).
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    /// The request's ref, when readable.
    pub r#ref: Option<Ref>,
    /// `bad_message`, `unknown_op` or `meta_invalid`.
    pub code: &'static str,
    /// What was wrong, for humans.
    pub message: String,
}

impl ProtocolError {
    fn bad(r#ref: Option<Ref>, message: impl Into<String>) -> Self {
        ProtocolError {
            r#ref,
            code: "bad_message",
            message: message.into(),
        }
    }

    /// The `error` event for this failure.
    pub fn to_event(&self) -> Event {
        Event::Error {
            r#ref: self.r#ref.clone(),
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl Request {
    /// Parses a protocol v1 text frame: a JSON object with `op`.
    pub fn parse(text: &str) -> Result<Request, ProtocolError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ProtocolError::bad(None, format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ProtocolError::bad(None, "expected a JSON object"));
        };
        let r#ref = parse_ref(&obj)?;
        let op = match obj.get("op") {
            Some(Value::String(op)) => match OpKind::parse(op) {
                Some(op) => op,
                None => {
                    return Err(ProtocolError {
                        r#ref,
                        code: "unknown_op",
                        message: format!(
                            "unknown op {:?}; expected one of {}",
                            truncate(op, 32),
                            OpKind::ALL.map(OpKind::as_str).join(", ")
                        ),
                    });
                }
            },
            Some(_) => return Err(ProtocolError::bad(r#ref, "`op` must be a string")),
            None => return Err(ProtocolError::bad(r#ref, "missing `op`")),
        };
        Self::from_fields(op, r#ref, &obj)
    }

    /// Parses the payload of a Socket.IO acked event (`occupancy:join` and friends): the protocol
    /// v1 request without `op`. A bare string is accepted as the room.
    pub fn from_payload(op: OpKind, payload: &Value) -> Result<Request, ProtocolError> {
        match payload {
            Value::String(room) if op != OpKind::Ping && op != OpKind::Update => Ok(Request {
                r#ref: None,
                op,
                room: room.clone(),
                meta: None,
            }),
            Value::Object(obj) => {
                let r#ref = parse_ref(obj)?;
                Self::from_fields(op, r#ref, obj)
            }
            Value::Null if op == OpKind::Ping => Ok(Request {
                r#ref: None,
                op,
                room: String::new(),
                meta: None,
            }),
            _ if op == OpKind::Update => Err(ProtocolError::bad(
                None,
                "expected an object like {\"room\": \"document-1\", \"meta\": {\"status\": \"editing\"}}",
            )),
            _ => Err(ProtocolError::bad(
                None,
                "expected an object like {\"room\": \"document-1\"} or a room string",
            )),
        }
    }

    fn from_fields(
        op: OpKind,
        r#ref: Option<Ref>,
        obj: &Map<String, Value>,
    ) -> Result<Request, ProtocolError> {
        let room = match (op, obj.get("room")) {
            (OpKind::Ping, _) => String::new(),
            (_, Some(Value::String(room))) => room.clone(),
            (_, Some(_)) => return Err(ProtocolError::bad(r#ref, "`room` must be a string")),
            (_, None) => return Err(ProtocolError::bad(r#ref, "missing `room`")),
        };
        let meta = match (op, obj.get("meta")) {
            (OpKind::Join | OpKind::Update, Some(v)) => {
                Some(Meta::from_value(v.clone()).map_err(|e| ProtocolError {
                    r#ref: r#ref.clone(),
                    code: e.code(),
                    message: "meta must be a JSON object (or null)".into(),
                })?)
            }
            (OpKind::Update, None) => {
                return Err(ProtocolError::bad(
                    r#ref,
                    "missing `meta` (update replaces your metadata in the room)",
                ));
            }
            _ => None,
        };
        Ok(Request {
            r#ref,
            op,
            room,
            meta,
        })
    }
}

fn parse_ref(obj: &Map<String, Value>) -> Result<Option<Ref>, ProtocolError> {
    match obj.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_REF_LEN => Ok(Some(Ref::Str(s.clone()))),
        Some(Value::Number(n)) if n.is_i64() => Ok(Some(Ref::Int(n.as_i64().unwrap_or(0)))),
        Some(_) => Err(ProtocolError::bad(
            None,
            format!("`ref` must be an integer or a string of at most {MAX_REF_LEN} bytes"),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A server → client message, serialized with its kind in `ev`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// First message on a connection.
    Hello {
        /// This connection's session id.
        session: SessionId,
        /// The secret to pass as `?resume=` when reconnecting (single use).
        #[serde(serialize_with = "ser_display")]
        resume: ResumeToken,
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
        /// How often the client should send `ping` (ms) to keep the connection alive.
        heartbeat_ms: u64,
        /// True when this connection resumed an earlier session (its places were kept).
        resumed: bool,
    },
    /// Reply to `join` and `takeover`.
    Joined {
        /// Echoed ref.
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// The room.
        room: RoomId,
        /// True when you hold the room.
        holding: bool,
        /// 0 = holding, 1 = next in line.
        position: u32,
        /// Room version.
        version: u64,
        /// Who holds it.
        holder: Person,
    },
    /// You joined and someone else holds the room.
    Occupied {
        /// The room.
        room: RoomId,
        /// Room version.
        version: u64,
        /// Who holds it.
        holder: Person,
        /// Your place.
        position: u32,
    },
    /// You now hold the room.
    Released {
        /// The room.
        room: RoomId,
        /// Room version.
        version: u64,
    },
    /// The room changed.
    Presence {
        /// The room.
        room: RoomId,
        /// Room version.
        version: u64,
        /// Who holds it (`null` when empty).
        holder: Option<Person>,
        /// Your place; absent for a watcher.
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<u32>,
        /// How many stand behind the holder.
        waiting: u32,
        /// The first few occupants.
        occupants: Vec<Person>,
        /// When the holder was granted the room, Unix ms (`null` when empty).
        held_since: Option<u64>,
    },
    /// Someone took the room over from you.
    Displaced {
        /// The room.
        room: RoomId,
        /// Room version.
        version: u64,
        /// Who took it.
        by: Person,
        /// Your new place.
        position: u32,
        /// Why: `"takeover"`, `"idle"` or `"server"`.
        reason: DisplacedReason,
    },
    /// Reply to `leave` and `unwatch`.
    Left {
        /// Echoed ref.
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// The room.
        room: RoomId,
        /// False when you were not in it (leave is idempotent).
        was_member: bool,
    },
    /// Reply to `watch`, with the room's current presence.
    Watching {
        /// Echoed ref.
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// The room.
        room: RoomId,
        /// Room version.
        version: u64,
        /// Who holds it.
        holder: Option<Person>,
        /// How many stand behind the holder.
        waiting: u32,
        /// The first few occupants.
        occupants: Vec<Person>,
        /// When the holder was granted the room, Unix ms (`null` when empty).
        held_since: Option<u64>,
    },
    /// Reply to `ping`.
    Pong {
        /// Echoed ref.
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// A request failed; nothing changed.
    Error {
        /// Echoed ref.
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
        /// One of [`ERROR_CODES`].
        code: &'static str,
        /// What went wrong and what to do, for humans.
        message: String,
    },
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Every `error.code` the adapters send, with its meaning. Stable: codes are never renamed.
pub const ERROR_CODES: &[(&str, &str)] = &[
    (
        "bad_message",
        "not JSON, not an object, a missing or wrong-typed field, a binary frame",
    ),
    ("unknown_op", "`op` is not one of the documented ops"),
    (
        "frame_too_large",
        "the frame is over the size limit; repeated, or far over it, the connection is closed with 1009",
    ),
    (
        "room_invalid",
        "room id empty, too long, or with control characters",
    ),
    (
        "too_many_rooms",
        "this connection already joined or watches the maximum number of rooms",
    ),
    ("room_full", "the room's line is at its maximum length"),
    ("meta_too_large", "`meta` is over the size limit"),
    ("meta_invalid", "`meta` is not a JSON object"),
    ("not_in_room", "take over of a room you have not joined"),
    ("not_member", "`update` of a room you do not stand in"),
    ("forbidden", "the application's authorization hook refused"),
    ("rate_limited", "too many messages per second"),
    (
        "unavailable",
        "the backend (e.g. Redis) cannot be reached; retry",
    ),
    (
        "resume_invalid",
        "the resume token is unknown, used or expired",
    ),
    ("unknown_session", "the session is closed"),
];

impl Event {
    /// The `error` event for a failed call.
    pub fn error(r#ref: Option<Ref>, err: &Error) -> Event {
        Event::Error {
            r#ref,
            code: err.code(),
            message: err.to_string(),
        }
    }

    /// The reply to a join or take over.
    pub fn joined(r#ref: Option<Ref>, j: &Joined) -> Event {
        Event::Joined {
            r#ref,
            room: j.room.clone(),
            holding: j.holding,
            position: j.position,
            version: j.version,
            holder: j.holder.clone(),
        }
    }

    /// The reply to a leave.
    pub fn left(r#ref: Option<Ref>, l: &Left) -> Event {
        Event::Left {
            r#ref,
            room: l.room.clone(),
            was_member: l.was_member,
        }
    }

    /// The reply to an unwatch.
    pub fn unwatched(r#ref: Option<Ref>, room: RoomId, was_watching: bool) -> Event {
        Event::Left {
            r#ref,
            room,
            was_member: was_watching,
        }
    }

    /// The reply to a watch.
    pub fn watching(r#ref: Option<Ref>, room: RoomId, p: &PresenceBody) -> Event {
        Event::Watching {
            r#ref,
            room,
            version: p.version,
            holder: p.holder.clone(),
            waiting: p.waiting,
            occupants: p.occupants.clone(),
            held_since: p.held_since,
        }
    }

    /// The JSON text of a notice's event: exactly `Event::from_notice(n).to_json()`, without
    /// copying the notice into an event first.
    ///
    /// A presence's shared part (room, version, holder, the first occupants) is the same for
    /// every recipient of one change: it is encoded once per change on each thread and reused,
    /// so a fan-out to 10,000 waiters encodes the holder and the list once, not 10,000 times.
    pub fn notice_json(n: &Notice) -> String {
        match &n.kind {
            NoticeKind::Presence(p) => PRESENCE_JSON.with(|cache| {
                let mut cache = cache.borrow_mut();
                let hit = cache.as_ref().is_some_and(|c| {
                    // The cached `Weak` keeps the body's allocation, so an equal address is the
                    // same body, not a new one at a reused address.
                    std::ptr::eq(c.body.as_ptr(), std::sync::Arc::as_ptr(&p.body))
                        && c.room == n.room
                });
                if !hit {
                    *cache = Some(PresenceJson::new(&n.room, &p.body));
                }
                let c = cache.as_ref().expect("just filled");
                let mut out = String::with_capacity(c.head.len() + c.tail.len() + 24);
                out.push_str(&c.head);
                if let Some(position) = p.position {
                    use std::fmt::Write;
                    let _ = write!(out, ",\"position\":{position}");
                }
                out.push_str(&c.tail);
                out
            }),
            _ => Event::from_notice(n).to_json(),
        }
    }

    /// The event for a notice.
    pub fn from_notice(n: &Notice) -> Event {
        let room = n.room.clone();
        match &n.kind {
            NoticeKind::Occupied {
                version,
                holder,
                position,
            } => Event::Occupied {
                room,
                version: *version,
                holder: holder.clone(),
                position: *position,
            },
            NoticeKind::Released { version } => Event::Released {
                room,
                version: *version,
            },
            NoticeKind::Presence(p) => Event::Presence {
                room,
                version: p.body.version,
                holder: p.body.holder.clone(),
                position: p.position,
                waiting: p.body.waiting,
                occupants: p.body.occupants.clone(),
                held_since: p.body.held_since,
            },
            NoticeKind::Displaced {
                version,
                by,
                position,
                reason,
            } => Event::Displaced {
                room,
                version: *version,
                by: by.clone(),
                position: *position,
                reason: *reason,
            },
        }
    }

    /// The `ev` name of this event (`joined`, `presence`, ...), e.g. to build Socket.IO event
    /// names like `occupancy:presence`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Hello { .. } => "hello",
            Event::Joined { .. } => "joined",
            Event::Occupied { .. } => "occupied",
            Event::Released { .. } => "released",
            Event::Presence { .. } => "presence",
            Event::Displaced { .. } => "displaced",
            Event::Left { .. } => "left",
            Event::Watching { .. } => "watching",
            Event::Pong { .. } => "pong",
            Event::Error { .. } => "error",
        }
    }

    /// The JSON text of this event.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialize")
    }

    /// The JSON value of this event.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("events always serialize")
    }
}

thread_local! {
    /// The last presence body encoded on this thread (see [`Event::notice_json`]).
    static PRESENCE_JSON: std::cell::RefCell<Option<PresenceJson>> =
        const { std::cell::RefCell::new(None) };
}

/// A presence event's JSON around the recipient's `position`, which sits between `holder` and
/// `waiting` (the field order of [`Event::Presence`]; a test holds the two in step).
struct PresenceJson {
    body: std::sync::Weak<PresenceBody>,
    room: RoomId,
    /// `{"ev":"presence","room":…,"version":…,"holder":…`
    head: String,
    /// `,"waiting":…,"occupants":[…],"held_since":…}`
    tail: String,
}

impl PresenceJson {
    fn new(room: &RoomId, body: &std::sync::Arc<PresenceBody>) -> Self {
        fn json<T: Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string(v).expect("event fields always serialize")
        }
        let head = format!(
            "{{\"ev\":\"presence\",\"room\":{},\"version\":{},\"holder\":{}",
            json(room),
            body.version,
            json(&body.holder)
        );
        let tail = format!(
            ",\"waiting\":{},\"occupants\":{},\"held_since\":{}}}",
            body.waiting,
            json(&body.occupants),
            json(&body.held_since)
        );
        PresenceJson {
            body: std::sync::Arc::downgrade(body),
            room: room.clone(),
            head,
            tail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_op_with_ref_and_ignores_unknown_fields() {
        let r =
            Request::parse(r#"{"op":"join","room":"doc-1","ref":7,"meta":{"name":"Ann"},"x":1}"#)
                .unwrap();
        assert_eq!(r.op, OpKind::Join);
        assert_eq!(r.room, "doc-1");
        assert_eq!(r.r#ref, Some(Ref::Int(7)));
        assert_eq!(r.meta.unwrap().get("name"), Some(&json!("Ann")));
        for op in OpKind::ALL {
            let text = json!({"op": op.as_str(), "room": "r", "ref": "a", "meta": {}}).to_string();
            assert_eq!(Request::parse(&text).unwrap().op, op);
        }
        // `update` carries its metadata; without it the request is refused with its ref.
        let r =
            Request::parse(r#"{"op":"update","room":"r","meta":{"status":"editing"}}"#).unwrap();
        assert_eq!(r.meta.unwrap().get("status"), Some(&json!("editing")));
        let e = Request::parse(r#"{"op":"update","room":"r","ref":9}"#).unwrap_err();
        assert_eq!((e.code, e.r#ref), ("bad_message", Some(Ref::Int(9))));
        assert!(e.message.contains("missing `meta`"), "{}", e.message);
        let e = Request::from_payload(OpKind::Update, &json!("r")).unwrap_err();
        assert_eq!(e.code, "bad_message");
    }

    #[test]
    fn bad_messages_get_exact_codes_and_keep_the_ref() {
        let cases = [
            ("not json", "bad_message", None),
            ("[1,2]", "bad_message", None),
            (r#"{"room":"r","ref":1}"#, "bad_message", Some(Ref::Int(1))),
            (
                r#"{"op":5,"ref":"x"}"#,
                "bad_message",
                Some(Ref::Str("x".into())),
            ),
            (r#"{"op":"fly","ref":2}"#, "unknown_op", Some(Ref::Int(2))),
            (r#"{"op":"join","ref":3}"#, "bad_message", Some(Ref::Int(3))),
            (
                r#"{"op":"join","room":7,"ref":4}"#,
                "bad_message",
                Some(Ref::Int(4)),
            ),
            (
                r#"{"op":"join","room":"r","meta":[1],"ref":5}"#,
                "meta_invalid",
                Some(Ref::Int(5)),
            ),
            (
                r#"{"op":"join","room":"r","meta":"Ann","ref":6}"#,
                "meta_invalid",
                Some(Ref::Int(6)),
            ),
            (
                r#"{"op":"join","room":"r","ref":{"a":1}}"#,
                "bad_message",
                None,
            ),
        ];
        for (text, code, r#ref) in cases {
            let e = Request::parse(text).unwrap_err();
            assert_eq!((e.code, &e.r#ref), (code, &r#ref), "{text}");
        }
    }

    #[test]
    fn a_meta_number_survives_parse_and_re_encode_exactly() {
        // Found by the protocol_frame fuzz target: without serde_json's `float_roundtrip`, a long
        // mantissa was parsed one ulp off, so the echoed meta differed from the next parse of it.
        let text = format!(
            r#"{{"op":"join","room":"r","meta":{{"n":37{}}}}}"#,
            "4".repeat(152)
        );
        let req = Request::parse(&text).unwrap();
        let meta = req.meta.clone().unwrap();
        let again = json!({"op": "join", "room": "r", "meta": meta.to_value()}).to_string();
        assert_eq!(Request::parse(&again).unwrap(), req);
    }

    #[test]
    fn socketio_payloads_accept_an_object_or_a_room_string() {
        let r =
            Request::from_payload(OpKind::Join, &json!({"room": "d", "meta": {"n": 1}})).unwrap();
        assert_eq!(r.room, "d");
        assert_eq!(
            Request::from_payload(OpKind::Leave, &json!("d"))
                .unwrap()
                .room,
            "d"
        );
        for bad in [json!(5), json!(null), json!([1]), json!({"room": 1})] {
            assert_eq!(
                Request::from_payload(OpKind::Join, &bad).unwrap_err().code,
                "bad_message"
            );
        }
    }

    #[test]
    fn events_serialize_as_documented() {
        let e = Event::Released {
            room: RoomId::parse("d", 10).unwrap(),
            version: 3,
        };
        assert_eq!(
            e.to_value(),
            json!({"ev": "released", "room": "d", "version": 3})
        );
        let e = Event::error(Some(Ref::Int(1)), &Error::RoomFull { limit: 2 });
        assert_eq!(e.to_value()["code"], "room_full");
        assert_eq!(e.to_value()["ref"], 1);
        for (code, _) in ERROR_CODES {
            assert!(!code.is_empty());
        }
    }

    /// `notice_json` reuses the shared part of a presence across recipients: every form must be
    /// byte for byte what the event serializes to, including metadata whose keys look like the
    /// fields around `position`, a watcher (no place), an empty room, and bodies that change.
    #[test]
    fn notice_json_is_the_events_json() {
        use crate::ids::OccupantKey;
        use crate::notice::Presence;
        use std::sync::Arc;
        let person = |id: &str, meta: Value| Person {
            id: OccupantKey::User(Arc::from(id)),
            meta: Meta::from_value(meta).unwrap(),
            since: 1_764_460_800_000,
        };
        let tricky = json!({"waiting": 3, "position": "\"x\"", "ü": ["\n", {"holder": null}]});
        let bodies = [
            Arc::new(PresenceBody {
                held_since: Some(1_764_460_801_000),
                version: 7,
                holder: Some(person("al\"ice", tricky.clone())),
                waiting: 2,
                occupants: vec![person("al\"ice", tricky), person("bob", json!({}))],
            }),
            Arc::new(PresenceBody {
                held_since: None,
                version: 8,
                holder: None,
                waiting: 0,
                occupants: vec![],
            }),
        ];
        let rooms = [
            RoomId::parse("doc/ü \"1\"", 64).unwrap(),
            RoomId::parse("r", 64).unwrap(),
        ];
        for round in 0..2 {
            for body in &bodies {
                for room in &rooms {
                    for position in [Some(0), Some(41), None] {
                        let n = Notice {
                            session: SessionId(round),
                            room: room.clone(),
                            kind: NoticeKind::Presence(Presence {
                                body: body.clone(),
                                position,
                            }),
                        };
                        assert_eq!(Event::notice_json(&n), Event::from_notice(&n).to_json());
                    }
                }
            }
        }
        let released = Notice {
            session: SessionId(1),
            room: rooms[0].clone(),
            kind: NoticeKind::Released { version: 9 },
        };
        assert_eq!(
            Event::notice_json(&released),
            Event::from_notice(&released).to_json()
        );
    }
}
