//! The authorization hook: the application's policy on who may join, take over or watch which
//! room. The Hub asks it before the backend runs, so a refusal changes nothing; it only sees room
//! ids that are valid, so a policy never has to guard against garbage. A policy that has to wait
//! (permissions in a database) is an [`AuthorizeAsync`] hook, bounded by the Hub's hook timeout:
//! one that does not answer in time is [`Error::Unavailable`], and nothing changes either.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

/// The question put to an [`AuthorizeAsync`] hook: [`AuthRequest`], owned, so that the hook's
/// future can keep it across its `.await`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthQuery {
    /// The session's authenticated principal, if any.
    pub principal: Option<Arc<str>>,
    /// The room (already validated as a room id).
    pub room: String,
    /// What the session asks to do.
    pub action: Action,
}

/// The future an [`AuthorizeAsync`] hook returns.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// [`Authorize`] for a policy that has to wait: permissions in a database, a call to an
/// authorization service. Set with [`HubBuilder::authorize_async`](crate::HubBuilder::authorize_async).
/// A hook that does not answer within the Hub's hook timeout
/// ([`HubBuilder::hook_timeout`](crate::HubBuilder::hook_timeout), 2 s by default) is
/// abandoned: the caller gets [`Error::Unavailable`] and nothing changes.
///
/// Implemented for closures returning a `Send + 'static` future:
/// ```
/// # use occupancy_core::{Action, AuthQuery, Hub};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = Hub::builder()
///     .authorize_async(|q: AuthQuery| async move {
///         // let allowed = db.may(q.principal.as_deref(), &q.room, q.action).await?;
///         let allowed = q.action != Action::Takeover || q.principal.as_deref() == Some("admin");
///         if allowed { Ok(()) } else { Err("only admins take over".to_string()) }
///     })
///     .build()
///     .unwrap();
/// # }
/// ```
pub trait AuthorizeAsync: Send + Sync + 'static {
    /// Resolves to `Ok(())` to allow, `Err(reason)` to refuse.
    fn authorize(&self, query: AuthQuery) -> AuthFuture;
}

impl<F, Fut> AuthorizeAsync for F
where
    F: Fn(AuthQuery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn authorize(&self, query: AuthQuery) -> AuthFuture {
        Box::pin(self(query))
    }
}

/// The Hub's hook, of either kind.
#[derive(Clone)]
pub(super) enum Hook {
    Sync(Arc<dyn Authorize>),
    Async(Arc<dyn AuthorizeAsync>),
}

/// How long an async hook may take by default.
pub(super) const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(2);

impl HubInner {
    /// Asks the hook (if any) whether `principal` may do `action` in `room`: [`Error::Forbidden`]
    /// with the hook's reason on refusal, a room id error if `room` is not a valid room id,
    /// [`Error::Unavailable`] when an async hook does not answer within the hook timeout.
    pub(super) async fn authorize(
        &self,
        principal: Option<&Arc<str>>,
        room: &str,
        action: Action,
    ) -> Result<(), Error> {
        let Some(hook) = &self.authorize else {
            return Ok(());
        };
        RoomId::check(room, self.config.limits.max_room_id_len)?;
        let answer = match hook {
            Hook::Sync(hook) => hook.authorize(&AuthRequest {
                principal: principal.map(|p| &**p),
                room,
                action,
            }),
            Hook::Async(hook) => {
                let query = AuthQuery {
                    principal: principal.cloned(),
                    room: room.to_owned(),
                    action,
                };
                match tokio::time::timeout(self.hook_timeout, hook.authorize(query)).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(Error::Unavailable {
                            reason: format!(
                                "the authorization hook did not answer within {:?}",
                                self.hook_timeout
                            ),
                        });
                    }
                }
            }
        };
        answer.map_err(|reason| Error::Forbidden { reason })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::Limits;
    use crate::error::RoomIdError;
    use crate::hub::Hub;

    type Asked = Arc<Mutex<Vec<(Option<String>, String, Action)>>>;

    async fn ask(
        inner: &HubInner,
        principal: Option<&str>,
        room: &str,
        action: Action,
    ) -> Result<(), Error> {
        let principal: Option<Arc<str>> = principal.map(Arc::from);
        inner.authorize(principal.as_ref(), room, action).await
    }

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
            ask(inner, Some("bob"), "doc", Action::Takeover).await,
            Err(Error::Forbidden {
                reason: "only admins take over".into()
            })
        );
        assert!(
            ask(inner, None, "doc", Action::Takeover).await.is_err(),
            "anonymous is not admin"
        );
        assert_eq!(
            ask(inner, Some("admin"), "doc", Action::Takeover).await,
            Ok(())
        );
        assert_eq!(ask(inner, Some("bob"), "doc", Action::Watch).await, Ok(()));
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
            ask(inner, Some("bob"), "document-1", Action::Takeover).await,
            Err(Error::RoomInvalid(RoomIdError::TooLong { len: 10, max: 8 }))
        );
        assert_eq!(
            ask(inner, Some("bob"), "", Action::Join).await,
            Err(Error::RoomInvalid(RoomIdError::Empty))
        );
        assert!(matches!(
            ask(inner, Some("bob"), "a\nb", Action::Watch).await,
            Err(Error::RoomInvalid(RoomIdError::ControlCharacter { .. }))
        ));
        assert!(
            asked.lock().unwrap().is_empty(),
            "the hook saw no bad room id"
        );
        assert_eq!(
            ask(inner, Some("bob"), "document", Action::Join).await,
            Ok(())
        );
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    /// An async hook is asked the same questions, owned; its refusal is `forbidden`. One that
    /// does not answer within the hook timeout is `unavailable`, and the join changes nothing.
    #[tokio::test(start_paused = true)]
    async fn an_async_hook_refuses_or_times_out_and_nothing_changes() {
        let hub = Hub::builder()
            .hook_timeout(Duration::from_millis(500))
            .authorize_async(|q: AuthQuery| async move {
                match q.room.as_str() {
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        Ok(())
                    }
                    "secret" if q.principal.as_deref() != Some("admin") => {
                        Err(format!("{:?} may not {:?} here", q.principal, q.action))
                    }
                    _ => Ok(()),
                }
            })
            .build()
            .unwrap();
        let (bob, _n) = hub
            .connect(Some("bob".into()), crate::ids::Meta::empty())
            .await
            .unwrap();
        assert!(bob.join("doc", None).await.unwrap().holding);
        assert_eq!(
            bob.watch("secret").await.err(),
            Some(Error::Forbidden {
                reason: "Some(\"bob\") may not Watch here".into()
            })
        );
        let started = tokio::time::Instant::now();
        assert_eq!(
            bob.join("slow", None).await.err(),
            Some(Error::Unavailable {
                reason: "the authorization hook did not answer within 500ms".into()
            })
        );
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(hub.room("slow").await.unwrap(), None);
        assert_eq!(hub.room("secret").await.unwrap(), None);
        assert_eq!(hub.stats().await.unwrap().rooms, 1);
    }

    #[tokio::test]
    async fn the_hook_timeout_is_checked() {
        for d in [Duration::ZERO, Duration::from_secs(61)] {
            match Hub::builder().hook_timeout(d).build() {
                Err(Error::Config(msg)) => assert!(msg.starts_with("hook_timeout is"), "{msg}"),
                other => panic!("{d:?}: {other:?}"),
            }
        }
    }
}
