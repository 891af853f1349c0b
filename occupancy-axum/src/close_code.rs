//! Close codes this adapter uses (besides 1000 and 1001), and what each tells a client to do.

/// Policy violation: too many bad or rate-limited messages, or a slow consumer.
pub const POLICY: u16 = 1008;
/// A frame over the size limit.
pub const TOO_BIG: u16 = 1009;
/// The Hub ended the session for a reason of its own, or could not start it (for example
/// metadata from the identify hook over the limit).
pub const INTERNAL: u16 = 1011;
/// The server could not set the session up (backend unavailable): retry later, with the same
/// resume token.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The session was resumed by another connection (the same resume token used twice).
pub const REPLACED: u16 = 4000;
/// Nothing arrived within the liveness timeout.
pub const LIVENESS: u16 = 4001;
/// The application ended the session ([`Hub::kick`](occupancy_core::Hub::kick)): do not
/// reconnect with the resume token (it no longer works).
pub const KICKED: u16 = 4002;
