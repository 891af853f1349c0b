//! Transport settings of the WebSocket endpoint: liveness (server pings and the timeout),
//! frame size limits, the per-connection message rate and how many protocol violations are
//! tolerated before a connection is closed. Room rules and their limits are the Hub's.

use std::time::Duration;

use occupancy_core::Error;

/// Transport settings; see each field for its default. Build with [`Settings::default`] and
/// change fields, or use the [`EndpointBuilder`](crate::EndpointBuilder) methods.
///
/// With the `serde` feature they deserialize from a configuration file: every field optional,
/// unknown ones refused by name, durations in milliseconds (`ping_interval_ms`,
/// `liveness_timeout_ms`); the endpoint's `build` validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Settings {
    /// How often the server sends a WebSocket ping (default 4 s). Also announced to clients as
    /// `heartbeat_ms`, the interval for their app-level `ping` op.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "ping_interval_ms",
            deserialize_with = "occupancy_core::serde_millis::deserialize"
        )
    )]
    pub ping_interval: Duration,
    /// A connection from which nothing (no pong, no message) arrives for this long is dead: it is
    /// dropped and its session closed at once, releasing its rooms (default 10 s; must be longer
    /// than `ping_interval`). A write that cannot complete for this long counts the same.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "liveness_timeout_ms",
            deserialize_with = "occupancy_core::serde_millis::deserialize"
        )
    )]
    pub liveness_timeout: Duration,
    /// Largest accepted text frame in bytes (default 16 KiB); a larger one is answered with
    /// `frame_too_large` and not processed.
    pub max_frame_bytes: usize,
    /// Frames larger than this are not even read: the connection is closed with 1009 (default
    /// 64 KiB, at least `max_frame_bytes`).
    pub close_frame_bytes: usize,
    /// Sustained messages per second per connection (default 20); above it, `rate_limited`.
    pub messages_per_second: u32,
    /// Messages a connection may send at once before the rate applies (default 40).
    pub message_burst: u32,
    /// Protocol violations (bad_message, unknown_op, frame_too_large, rate_limited) tolerated in a
    /// burst before the connection is closed with 1008 (or 1009 for oversized frames); one is
    /// forgiven per second (default 10).
    pub max_violations: u32,
    /// Bytes read from the socket at a time: the read buffer each connection keeps for its whole
    /// life, idle or not (default 512). A larger frame still arrives whole: the buffer grows to
    /// hold it (and keeps that size). Protocol v1 frames are a few hundred bytes and a connection
    /// sends at most `messages_per_second`, so a bigger buffer saves no work; it is most of the
    /// memory of an idle connection (8 KiB here made 14 KiB per connection).
    pub read_buffer_bytes: usize,
    /// Frames to send are collected up to this many bytes before they are written (default
    /// 8 KiB): a batch of notices goes out in one write. Costs nothing while idle (the buffer
    /// holds what is waiting, and keeps the largest batch's capacity).
    pub write_buffer_bytes: usize,
    /// How long the identify hook may take (default 2 s; at most 60 s). A hook that has not
    /// answered by then (a session store that hangs) is abandoned and the upgrade answered
    /// **503** Service Unavailable: nothing was started, the client may retry.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "identify_timeout_ms",
            deserialize_with = "occupancy_core::serde_millis::deserialize"
        )
    )]
    pub identify_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ping_interval: Duration::from_secs(4),
            liveness_timeout: Duration::from_secs(10),
            max_frame_bytes: 16 * 1024,
            close_frame_bytes: 64 * 1024,
            messages_per_second: 20,
            message_burst: 40,
            max_violations: 10,
            read_buffer_bytes: 512,
            write_buffer_bytes: 8 * 1024,
            identify_timeout: Duration::from_secs(2),
        }
    }
}

impl Settings {
    /// Checks for values that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.ping_interval.is_zero() || self.ping_interval > Duration::from_secs(3600) {
            return bad("ping_interval must be between 1 ms and 1 hour");
        }
        if self.liveness_timeout <= self.ping_interval {
            return bad("liveness_timeout must be longer than ping_interval");
        }
        if self.liveness_timeout > Duration::from_secs(24 * 3600) {
            return bad("liveness_timeout must be at most 24 hours");
        }
        if self.max_frame_bytes < 256 {
            return bad("max_frame_bytes must be at least 256");
        }
        if self.close_frame_bytes < self.max_frame_bytes {
            return bad("close_frame_bytes must be at least max_frame_bytes");
        }
        if self.messages_per_second == 0 || self.message_burst == 0 {
            return bad("messages_per_second and message_burst must be at least 1");
        }
        if self.max_violations == 0 {
            return bad("max_violations must be at least 1");
        }
        if !(64..=1 << 20).contains(&self.read_buffer_bytes) {
            return bad("read_buffer_bytes must be between 64 bytes and 1 MiB");
        }
        if self.write_buffer_bytes > 1 << 20 {
            return bad("write_buffer_bytes must be at most 1 MiB");
        }
        if self.identify_timeout.is_zero() || self.identify_timeout > Duration::from_secs(60) {
            return bad("identify_timeout must be between 1 ms and 60 s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "serde")]
    #[test]
    fn settings_deserialize_from_a_config_file() {
        let s: super::Settings =
            serde_json::from_str(r#"{"ping_interval_ms": 1000, "max_violations": 3}"#).unwrap();
        assert_eq!(s.ping_interval, std::time::Duration::from_secs(1));
        assert_eq!(s.max_violations, 3);
        assert_eq!(
            s.liveness_timeout,
            super::Settings::default().liveness_timeout
        );
        let e = serde_json::from_str::<super::Settings>(r#"{"ping_interval": 1}"#).unwrap_err();
        assert!(
            e.to_string().contains("unknown field `ping_interval`"),
            "{e}"
        );
    }

    use super::*;

    #[test]
    fn defaults_are_valid_and_detect_a_dead_peer_within_ten_seconds() {
        let s = Settings::default();
        s.validate().unwrap();
        assert!(s.liveness_timeout <= Duration::from_secs(10));
    }

    #[test]
    fn nonsense_is_refused() {
        let cases: [fn(&mut Settings); 8] = [
            |s| s.ping_interval = Duration::ZERO,
            |s| s.liveness_timeout = s.ping_interval,
            |s| s.max_frame_bytes = 10,
            |s| s.close_frame_bytes = s.max_frame_bytes - 1,
            |s| s.messages_per_second = 0,
            |s| s.max_violations = 0,
            |s| s.read_buffer_bytes = 0,
            |s| s.write_buffer_bytes = 64 << 20,
        ];
        for f in cases {
            let mut s = Settings::default();
            f(&mut s);
            assert!(matches!(s.validate(), Err(Error::Config(_))), "{s:?}");
        }
    }
}
