//! Who a connecting socket is: the [`Identify`] hook turns the Socket.IO handshake (the auth
//! payload and the HTTP request) into the principal and public metadata of its Hub session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use occupancy_core::{Identity, Meta};
use serde_json::Value;

/// What the hook sees of a connecting socket.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The Socket.IO auth payload (`io(url, { auth: {...} })`); `{}` when the client sent none.
    pub auth: &'a Value,
    /// The HTTP request that opened the connection (headers such as `Cookie` or `Authorization`,
    /// the URI with its query).
    pub request: &'a Parts,
}

/// Decides who a connecting socket is. `Err(message)` refuses the connection: the client's
/// `connect_error` handler receives the message.
///
/// Implemented for closures:
/// ```
/// use occupancy_socketio::{Handshake, Identity};
/// let identify = |h: &Handshake<'_>| -> Result<Identity, String> {
///     // A real application verifies a signed token here.
///     let user = h.auth.get("token").and_then(|t| t.as_str()).ok_or("missing token")?;
///     Ok(Identity { principal: Some(user.to_owned()), ..Identity::default() })
/// };
/// # fn check(_: impl occupancy_socketio::Identify) {}
/// # check(identify);
/// ```
pub trait Identify: Send + Sync + 'static {
    /// The identity of the socket, or why it is refused.
    fn identify(&self, handshake: &Handshake<'_>) -> Result<Identity, String>;
}

impl<F> Identify for F
where
    F: Fn(&Handshake<'_>) -> Result<Identity, String> + Send + Sync + 'static,
{
    fn identify(&self, handshake: &Handshake<'_>) -> Result<Identity, String> {
        self(handshake)
    }
}

/// The default hook: every socket is anonymous (the auth payload cannot prove who anyone is), with
/// the metadata of `auth.meta` when it is an object (`io(url, { auth: { meta: { name: "Ann" } } })`).
/// A `meta` that is not an object refuses the connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl Identify for Anonymous {
    fn identify(&self, handshake: &Handshake<'_>) -> Result<Identity, String> {
        let meta = match handshake.auth.get("meta") {
            None => Meta::empty(),
            Some(v) => Meta::from_value(v.clone())
                .map_err(|e| format!("{}: auth.meta must be a JSON object", e.code()))?,
        };
        Ok(Identity {
            principal: None,
            meta,
        })
    }
}

/// The future of an async identify hook (see [`Occupancy::identify_async`](crate::Occupancy::identify_async)).
pub(crate) type IdentifyFuture = Pin<Box<dyn Future<Output = Result<Identity, String>> + Send>>;

/// The hook as the adapter keeps it: either kind.
#[derive(Clone)]
pub(crate) enum IdentifyHook {
    Sync(Arc<dyn Identify>),
    Async(Arc<dyn Fn(&Handshake<'_>) -> IdentifyFuture + Send + Sync>),
}

impl IdentifyHook {
    /// Runs the hook; an async one that has not answered within `limit` refuses the socket
    /// with `unavailable` (the client may retry).
    pub(crate) async fn run(&self, h: &Handshake<'_>, limit: Duration) -> Result<Identity, String> {
        match self {
            IdentifyHook::Sync(hook) => hook.identify(h),
            IdentifyHook::Async(hook) => match tokio::time::timeout(limit, hook(h)).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::warn!(?limit, "the identify hook did not answer in time");
                    Err(format!(
                        "unavailable: the identify hook did not answer within {limit:?}; try again"
                    ))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts() -> Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn anonymous_reads_meta_and_refuses_a_non_object() {
        let p = parts();
        let id = Anonymous
            .identify(&Handshake {
                auth: &json!({"meta": {"name": "Ann"}, "principal": "admin"}),
                request: &p,
            })
            .unwrap();
        assert_eq!(id.principal, None, "a client cannot claim a principal");
        assert_eq!(id.meta.get("name"), Some(&json!("Ann")));
        let id = Anonymous
            .identify(&Handshake {
                auth: &json!({}),
                request: &p,
            })
            .unwrap();
        assert_eq!(id, Identity::anonymous());
        let err = Anonymous
            .identify(&Handshake {
                auth: &json!({"meta": "Ann"}),
                request: &p,
            })
            .unwrap_err();
        assert!(err.contains("meta_invalid"), "{err}");
    }
}
