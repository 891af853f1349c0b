//! The Socket.IO event names the adapter listens to and emits, and the article's fixed payloads.
//! Everything is configurable so an existing frontend can be served without changing it.

use std::borrow::Cow;

use occupancy_core::protocol::OpKind;

/// The event names (and the article's two payload strings).
///
/// The defaults are the article's events (`join_document_room`, `is_occupied`, `is_released`),
/// our compatible extension `leave_document_room`, and the rich events prefixed `occupancy:`.
/// [`EventNames::with_prefix`] changes the prefix of every rich event at once; each field can also
/// be set alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNames {
    /// Acked: stand in a room's line (default `occupancy:join`).
    pub join: Cow<'static, str>,
    /// Acked: leave a room's line (default `occupancy:leave`).
    pub leave: Cow<'static, str>,
    /// Acked: take a room over (default `occupancy:takeover`).
    pub takeover: Cow<'static, str>,
    /// Acked: watch a room without standing in line (default `occupancy:watch`).
    pub watch: Cow<'static, str>,
    /// Acked: stop watching (default `occupancy:unwatch`).
    pub unwatch: Cow<'static, str>,
    /// Acked: change your metadata in a room you stand in (default `occupancy:update`).
    pub update: Cow<'static, str>,
    /// Acked: "still working here", refreshes the holder's idle clock (default
    /// `occupancy:active`).
    pub active: Cow<'static, str>,
    /// Acked: a round trip through the socket's request queue, answered `pong` (default
    /// `occupancy:ping`; liveness itself is the engine's pings).
    pub ping: Cow<'static, str>,
    /// Push: the first event on every socket, with its session id and resume token (default
    /// `occupancy:hello`).
    pub hello: Cow<'static, str>,
    /// Push: you joined and someone else holds the room (default `occupancy:occupied`).
    pub occupied: Cow<'static, str>,
    /// Push: you now hold the room (default `occupancy:released`).
    pub released: Cow<'static, str>,
    /// Push: the room changed (default `occupancy:presence`).
    pub presence: Cow<'static, str>,
    /// Push: someone took the room over from you (default `occupancy:displaced`).
    pub displaced: Cow<'static, str>,
    /// Push: a request without an acknowledgement callback failed, or the connection is being
    /// closed by the server (default `occupancy:error`).
    pub error: Cow<'static, str>,
    /// Article: join a room, the payload is the room string (default `join_document_room`).
    pub article_join: Cow<'static, str>,
    /// Article extension: leave a room, the payload is the room string (default
    /// `leave_document_room`).
    pub article_leave: Cow<'static, str>,
    /// Article: sent to a late joiner (default `is_occupied`).
    pub article_occupied: Cow<'static, str>,
    /// Article: sent to every socket of the new holder on a hand-over (default `is_released`).
    pub article_released: Cow<'static, str>,
    /// The payload of [`EventNames::article_occupied`] (default `"Its occupied"`, sic).
    pub article_occupied_message: Cow<'static, str>,
    /// The payload of [`EventNames::article_released`] (default `"this is released"`).
    pub article_released_message: Cow<'static, str>,
}

impl Default for EventNames {
    fn default() -> Self {
        // Borrowed: socketioxide keeps a copy of each name per socket, and a borrowed `Cow`
        // costs nothing to copy.
        EventNames {
            join: Cow::Borrowed("occupancy:join"),
            leave: Cow::Borrowed("occupancy:leave"),
            takeover: Cow::Borrowed("occupancy:takeover"),
            watch: Cow::Borrowed("occupancy:watch"),
            unwatch: Cow::Borrowed("occupancy:unwatch"),
            update: Cow::Borrowed("occupancy:update"),
            active: Cow::Borrowed("occupancy:active"),
            ping: Cow::Borrowed("occupancy:ping"),
            hello: Cow::Borrowed("occupancy:hello"),
            occupied: Cow::Borrowed("occupancy:occupied"),
            released: Cow::Borrowed("occupancy:released"),
            presence: Cow::Borrowed("occupancy:presence"),
            displaced: Cow::Borrowed("occupancy:displaced"),
            error: Cow::Borrowed("occupancy:error"),
            ..EventNames::with_prefix("")
        }
    }
}

impl EventNames {
    /// The default names with another prefix for the rich events (`"doc:"` gives `doc:join`,
    /// `doc:presence`, ...). The article's names are unchanged.
    pub fn with_prefix(prefix: &str) -> Self {
        let p = |name: &str| Cow::Owned(format!("{prefix}{name}"));
        EventNames {
            join: p("join"),
            leave: p("leave"),
            takeover: p("takeover"),
            watch: p("watch"),
            unwatch: p("unwatch"),
            update: p("update"),
            active: p("active"),
            ping: p("ping"),
            hello: p("hello"),
            occupied: p("occupied"),
            released: p("released"),
            presence: p("presence"),
            displaced: p("displaced"),
            error: p("error"),
            article_join: Cow::Borrowed("join_document_room"),
            article_leave: Cow::Borrowed("leave_document_room"),
            article_occupied: Cow::Borrowed("is_occupied"),
            article_released: Cow::Borrowed("is_released"),
            article_occupied_message: Cow::Borrowed("Its occupied"),
            article_released_message: Cow::Borrowed("this is released"),
        }
    }

    /// The events a client sends, with the op each runs and whether it is the article's: what
    /// the adapter registers on every socket, and what `attach` checks for clashing names.
    pub(crate) fn incoming(&self, article: bool) -> Vec<(&Cow<'static, str>, OpKind, bool)> {
        let mut ops = vec![
            (&self.join, OpKind::Join, false),
            (&self.leave, OpKind::Leave, false),
            (&self.takeover, OpKind::Takeover, false),
            (&self.watch, OpKind::Watch, false),
            (&self.unwatch, OpKind::Unwatch, false),
            (&self.update, OpKind::Update, false),
            (&self.active, OpKind::Active, false),
            (&self.ping, OpKind::Ping, false),
        ];
        if article {
            ops.push((&self.article_join, OpKind::Join, true));
            ops.push((&self.article_leave, OpKind::Leave, true));
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_articles_and_the_prefixed_names() {
        let n = EventNames::default();
        assert_eq!(n, EventNames::with_prefix("occupancy:"));
        assert!(matches!(n.join, Cow::Borrowed("occupancy:join")));
        assert_eq!(n.presence, "occupancy:presence");
        assert_eq!(n.error, "occupancy:error");
        assert_eq!(n.active, "occupancy:active");
        assert_eq!(n.ping, "occupancy:ping");
        assert_eq!(n.article_join, "join_document_room");
        assert_eq!(n.article_occupied, "is_occupied");
        assert_eq!(n.article_occupied_message, "Its occupied");
        assert_eq!(n.article_released, "is_released");
        assert_eq!(n.article_released_message, "this is released");
        let d = EventNames::with_prefix("doc/");
        assert_eq!(d.takeover, "doc/takeover");
        assert_eq!(d.article_leave, "leave_document_room");
        let mut incoming: Vec<&str> = n
            .incoming(true)
            .into_iter()
            .map(|(n, ..)| n.as_ref())
            .collect();
        incoming.sort();
        incoming.dedup();
        assert_eq!(incoming.len(), 10);
        assert_eq!(n.incoming(false).len(), 8);
    }
}
