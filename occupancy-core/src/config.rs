//! Configuration of the state machine: limits and the grace period. The runtime (`Hub`) adds its
//! own settings (notice buffer size, hooks) on top.

use std::time::Duration;

use crate::error::{Error, check_duration};
use crate::ids::RoomId;

/// Limits enforced by the state machine; each breach is a typed [`Error`] and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Configuration of the [`Machine`](crate::Machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The limits.
    pub limits: Limits,
    /// How long a disconnected session keeps its places, waiting for a resume (default 5 s;
    /// zero disables grace: a disconnect leaves at once).
    pub grace: Duration,
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
            presence_occupants: 8,
            check_invariants: false,
        }
    }
}

impl Config {
    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        check_duration("grace", self.grace, Duration::from_secs(24 * 3600))?;
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
