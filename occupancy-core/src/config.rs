//! Configuration of the state machine: limits and the grace period. The runtime (`Hub`) adds its
//! own settings (notice buffer size, hooks) on top.
//!
//! With the `serde` feature, [`Config`] and [`Limits`] deserialize from a configuration file
//! (config-rs, figment, TOML, JSON): every field optional (missing ones keep their default),
//! unknown fields refused by name, durations in milliseconds (`grace_ms`). Call
//! [`Config::validate`] (or build the Hub, which does) on the result.

use std::time::Duration;

use crate::error::{Error, check_duration};
use crate::ids::RoomId;

/// Limits enforced by the state machine; each breach is a typed [`Error`] and changes nothing.
///
/// `#[non_exhaustive]` (limits may be added): start from the defaults and set what you change.
///
/// ```
/// let mut limits = occupancy_core::Limits::default();
/// limits.max_meta_bytes = 4096;
/// let mut config = occupancy_core::Config::default();
/// config.limits = limits;
/// let machine = occupancy_core::Machine::new(config).unwrap();
/// assert_eq!(machine.config().limits.max_meta_bytes, 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum room id length in bytes (default 256).
    pub max_room_id_len: usize,
    /// Maximum number of rooms one session may join or watch at once (default 32).
    pub max_rooms_per_session: usize,
    /// Maximum number of occupants standing in one room's line (default 100,000).
    pub max_occupants_per_room: usize,
    /// Maximum size of an occupant's metadata as JSON, in bytes (default 1,024).
    pub max_meta_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_room_id_len: RoomId::DEFAULT_MAX_LEN,
            max_rooms_per_session: 32,
            max_occupants_per_room: 100_000,
            max_meta_bytes: 1024,
        }
    }
}

/// Configuration of the [`Machine`](crate::Machine). `#[non_exhaustive]`: start from
/// [`Config::default`] and set fields, or use the [`HubBuilder`](crate::HubBuilder) methods.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// // With the `serde` feature: from a configuration file's section.
/// let c: occupancy_core::Config =
///     serde_json::from_str(r#"{"grace_ms": 2000, "limits": {"max_rooms_per_session": 8}}"#)
///         .unwrap();
/// assert_eq!(c.grace, std::time::Duration::from_secs(2));
/// assert_eq!(c.limits.max_rooms_per_session, 8);
/// assert_eq!(c.presence_occupants, 8, "missing fields keep their default");
/// c.validate().unwrap();
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Config {
    /// The limits.
    pub limits: Limits,
    /// How long a disconnected session keeps its places, waiting for a resume (default 5 s;
    /// zero disables grace: a disconnect leaves at once). `grace_ms` in a configuration file.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "grace_ms", deserialize_with = "millis::deserialize")
    )]
    pub grace: Duration,
    /// How long a session keeps its places after its client closed the connection on purpose
    /// ([`Ending::Closed`]: a page closed or navigated away, a Socket.IO client disconnecting),
    /// long enough for a reload to come back and resume (default 2 s; never longer than
    /// [`Config::grace`]). `close_grace_ms` in a configuration file.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "close_grace_ms", deserialize_with = "millis::deserialize")
    )]
    pub close_grace: Duration,
    /// Idle expiry (default off): a holder none of whose sessions joined, updated or said
    /// `active` in the room for this long keeps it while nobody waits; once someone waits (or
    /// joins), the holder is displaced to place 1 (`displaced` with reason `"idle"`) and the next
    /// in line is released — a page left open by someone who walked away stops blocking others
    /// (Payload's lock duration, WordPress's 150 s lock window). `idle_timeout_ms` in a
    /// configuration file.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "idle_timeout_ms",
            deserialize_with = "millis::deserialize_opt"
        )
    )]
    pub idle_timeout: Option<Duration>,
    /// How many occupants (from the front) a presence notice lists (default 8).
    pub presence_occupants: usize,
    /// A debugging aid (default off): the in-memory backend runs
    /// [`Machine::check_invariants`](crate::Machine::check_invariants) after every operation
    /// and counts the results in [`Stats::invariant_checks`](crate::Stats::invariant_checks) and
    /// [`Stats::invariant_violations`](crate::Stats::invariant_violations) (a violation is also
    /// logged at `error` level). It costs O(all state) per operation, under the backend's lock
    /// (about 2 ms with 5,000 sessions): for tests and soak runs, never for production. The
    /// Redis backend ignores it.
    pub check_invariants: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            grace: Duration::from_secs(5),
            close_grace: Duration::from_secs(2),
            idle_timeout: None,
            presence_occupants: 8,
            check_invariants: false,
        }
    }
}

/// How a connection ended: it decides how long the session keeps its places
/// ([`Config::grace_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ending {
    /// Lost without a word: a network drop, a TCP reset, a ping timeout, a dropped handle. The
    /// session keeps its places for [`Config::grace`], waiting for the client to come back.
    #[default]
    Lost,
    /// Closed on purpose by the client: a WebSocket close frame (1000, 1001 — what a browser
    /// sends when a page closes or navigates away — or no code), a Socket.IO client-side
    /// disconnect. Nobody is coming back unless the page is reloading, so the session keeps its
    /// places for [`Config::close_grace`] only and the next in line is told sooner.
    Closed,
}

impl Config {
    /// How long a session whose connection ended this way keeps its places: [`Config::grace`]
    /// for [`Ending::Lost`], [`Config::close_grace`] (at most `grace`) for [`Ending::Closed`].
    pub fn grace_for(&self, ending: Ending) -> Duration {
        match ending {
            Ending::Lost => self.grace,
            Ending::Closed => self.close_grace.min(self.grace),
        }
    }

    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        check_duration("grace", self.grace, Duration::from_secs(24 * 3600))?;
        check_duration(
            "close_grace",
            self.close_grace,
            Duration::from_secs(24 * 3600),
        )?;
        if let Some(idle) = self.idle_timeout {
            check_duration("idle_timeout", idle, Duration::from_secs(30 * 24 * 3600))?;
            if idle.is_zero() {
                return Err(Error::Config(
                    "idle_timeout must be above zero (leave it unset to turn idle expiry off)"
                        .into(),
                ));
            }
        }
        let l = &self.limits;
        if l.max_room_id_len == 0 {
            return Err(Error::Config("max_room_id_len must be at least 1".into()));
        }
        if l.max_rooms_per_session == 0 || l.max_occupants_per_room == 0 {
            return Err(Error::Config(
                "max_rooms_per_session and max_occupants_per_room must be at least 1".into(),
            ));
        }
        if l.max_meta_bytes < 2 {
            return Err(Error::Config(
                "max_meta_bytes must be at least 2 (`{}`)".into(),
            ));
        }
        Ok(())
    }
}

/// Durations in configuration files: a whole number of milliseconds.
#[cfg(feature = "serde")]
#[doc(hidden)]
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads a number of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }

    /// Reads a number of milliseconds, or `null`.
    pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(Duration::from_millis))
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_overrides_what_it_names_and_keeps_the_rest() {
        let c: Config = serde_json::from_str(
            r#"{"grace_ms": 0, "close_grace_ms": 500, "presence_occupants": 3}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Config {
                grace: Duration::ZERO,
                close_grace: Duration::from_millis(500),
                presence_occupants: 3,
                ..Config::default()
            }
        );
        let empty: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Config::default());
    }

    #[test]
    fn unknown_or_mistyped_fields_are_refused_by_name() {
        let e = serde_json::from_str::<Config>(r#"{"grace": 5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `grace`"), "{e}");
        let e = serde_json::from_str::<Config>(r#"{"limits": {"max_rooms": 5}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `max_rooms`"), "{e}");
        let e = serde_json::from_str::<Config>(r#"{"grace_ms": "5s"}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        // Deserializing does not validate: the Hub (or `validate`) refuses what cannot work.
        let c: Config = serde_json::from_str(r#"{"limits": {"max_meta_bytes": 1}}"#).unwrap();
        assert!(matches!(c.validate(), Err(Error::Config(_))));
    }
}
