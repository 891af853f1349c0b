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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::Limits;
    use crate::error::RoomIdError;
    use crate::hub::Hub;

    type Asked = Arc<Mutex<Vec<(Option<String>, String, Action)>>>;

    /// A Hub whose hook records each question and refuses take overs by anyone but "admin".
    fn hub_with_hook(max_room_id_len: usize) -> (Hub, Asked) {
        let asked = Asked::default();
        let log = asked.clone();
        let hub = Hub::builder()
            .limits(Limits {
                max_room_id_len,
                ..Limits::default()
            })
            .authorize(move |req: &AuthRequest<'_>| {
                log.lock().unwrap().push((
                    req.principal.map(str::to_string),
                    req.room.to_string(),
                    req.action,
                ));
                match req.action {
                    Action::Takeover if req.principal != Some("admin") => {
                        Err("only admins take over".into())
                    }
                    _ => Ok(()),
                }
            })
            .build()
            .unwrap();
        (hub, asked)
    }

    #[tokio::test]
    async fn a_closure_hook_refuses_with_forbidden_and_its_reason() {
        let (hub, asked) = hub_with_hook(16);
        let inner = &hub.inner;
        assert_eq!(
            inner.authorize(Some("bob"), "doc", Action::Takeover),
            Err(Error::Forbidden {
                reason: "only admins take over".into()
            })
        );
        assert!(
            inner.authorize(None, "doc", Action::Takeover).is_err(),
            "anonymous is not admin"
        );
        assert_eq!(
            inner.authorize(Some("admin"), "doc", Action::Takeover),
            Ok(())
        );
        assert_eq!(inner.authorize(Some("bob"), "doc", Action::Watch), Ok(()));
        assert_eq!(
            asked.lock().unwrap().as_slice(),
            [
                (Some("bob".into()), "doc".into(), Action::Takeover),
                (None, "doc".into(), Action::Takeover),
                (Some("admin".into()), "doc".into(), Action::Takeover),
                (Some("bob".into()), "doc".into(), Action::Watch),
            ]
        );
    }

    #[tokio::test]
    async fn the_room_id_is_checked_before_the_hook_runs() {
        let (hub, asked) = hub_with_hook(8);
        let inner = &hub.inner;
        // With the configured limit, not the default one; a room error wins over a refusal.
        assert_eq!(
            inner.authorize(Some("bob"), "document-1", Action::Takeover),
            Err(Error::RoomInvalid(RoomIdError::TooLong { len: 10, max: 8 }))
        );
        assert_eq!(
            inner.authorize(Some("bob"), "", Action::Join),
            Err(Error::RoomInvalid(RoomIdError::Empty))
        );
        assert!(matches!(
            inner.authorize(Some("bob"), "a\nb", Action::Watch),
            Err(Error::RoomInvalid(RoomIdError::ControlCharacter { .. }))
        ));
        assert!(
            asked.lock().unwrap().is_empty(),
            "the hook saw no bad room id"
        );
        assert_eq!(
            inner.authorize(Some("bob"), "document", Action::Join),
            Ok(())
        );
        assert_eq!(asked.lock().unwrap().len(), 1);
    }
}
