//! [`RedisConfig`]: where Redis is and how a node behaves towards it (key prefix, lease, time
//! limit of a call), checked before anything connects.

use std::time::Duration;

use occupancy_core::Error;

/// Settings of a [`RedisBackend`](crate::RedisBackend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where Redis is, e.g. `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key and of the channel (default `occ`): nodes sharing a prefix share rooms.
    /// ASCII letters, digits, `_`, `-`, `.` and `:` only.
    pub prefix: String,
    /// How long a node's lease lasts (default 10 s; 100 ms..=10 min). A node renews it every third
    /// of that; when it ends, the other nodes sweep the node's sessions out of their rooms.
    pub lease: Duration,
    /// Longest a call waits for Redis before failing with [`Error::Unavailable`] (default 2 s).
    pub op_timeout: Duration,
}

impl RedisConfig {
    /// The defaults for Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "occ".into(),
            lease: Duration::from_secs(10),
            op_timeout: Duration::from_secs(2),
        }
    }

    /// Sets [`RedisConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`RedisConfig::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`RedisConfig::op_timeout`].
    pub fn op_timeout(mut self, t: Duration) -> Self {
        self.op_timeout = t;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
        if self.prefix.is_empty() || !self.prefix.chars().all(ok) {
            return Err(Error::Config(format!(
                "redis prefix {:?}: use ASCII letters, digits, _ - . :",
                self.prefix
            )));
        }
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(600) {
            return Err(Error::Config(format!(
                "redis lease {:?}: use 100 ms to 10 min",
                self.lease
            )));
        }
        if self.op_timeout.is_zero() || self.op_timeout > Duration::from_secs(60) {
            return Err(Error::Config(format!(
                "redis op_timeout {:?}: use more than 0 and at most 60 s",
                self.op_timeout
            )));
        }
        Ok(())
    }
}
