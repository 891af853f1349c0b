//! The authorization hook: the application's policy on who may join, take over or watch which
//! room. The Hub asks it before the backend runs, so a refusal changes nothing; it only sees room
//! ids that are valid, so a policy never has to guard against garbage.

use crate::error::Error;
use crate::ids::RoomId;

use super::HubInner;

/// What a session asks to do in a room, for the [`Authorize`] hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Stand in the room's line.
    Join,
    /// Take the room over from its holder.
    Takeover,
    /// Watch the room without standing in line.
    Watch,
}

/// The question put to the [`Authorize`] hook.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The session's authenticated principal, if any.
    pub principal: Option<&'a str>,
    /// The room (already validated as a room id).
    pub room: &'a str,
    /// What the session asks to do.
    pub action: Action,
}

/// The application's policy: may this principal join, take over or watch this room? Return the
/// reason on refusal; the caller gets [`Error::Forbidden`] and nothing changes.
///
/// Implemented for closures:
/// ```
/// # use occupancy_core::{Action, AuthRequest, Hub};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = Hub::builder()
///     .authorize(|req: &AuthRequest<'_>| match req.action {
///         Action::Takeover if req.principal != Some("admin") => Err("only admins take over".into()),
///         _ => Ok(()),
///     })
///     .build()
///     .unwrap();
/// # }
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// `Ok(())` to allow, `Err(reason)` to refuse.
    fn authorize(&self, req: &AuthRequest<'_>) -> Result<(), String>;
}

impl<F> Authorize for F
where
    F: Fn(&AuthRequest<'_>) -> Result<(), String> + Send + Sync + 'static,
{
    fn authorize(&self, req: &AuthRequest<'_>) -> Result<(), String> {
        self(req)
    }
}

impl HubInner {
    /// Asks the hook (if any) whether `principal` may do `action` in `room`: [`Error::Forbidden`]
    /// with the hook's reason on refusal, a room id error if `room` is not a valid room id.
    pub(super) fn authorize(
        &self,
        principal: Option<&str>,
        room: &str,
        action: Action,
    ) -> Result<(), Error> {
        if let Some(hook) = &self.authorize {
            RoomId::check(room, self.config.limits.max_room_id_len)?;
            hook.authorize(&AuthRequest {
                principal,
                room,
                action,
            })
            .map_err(|reason| Error::Forbidden { reason })?;
        }
        Ok(())
    }
}
