//! Who is connecting: the application's hook that turns the upgrade request (headers, cookies,
//! query, extensions set by the app's own auth middleware) into a principal and public metadata,
//! or refuses it with an HTTP status before the upgrade.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use occupancy_core::Identity;

/// A refusal from the identify hook: the upgrade is answered with this status and message
/// instead of `101 Switching Protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status (401, 403, 429, ...).
    pub status: StatusCode,
    /// A short text body.
    pub message: String,
}

impl Rejection {
    /// A refusal with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// `401 Unauthorized`: not signed in.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// `403 Forbidden`: signed in but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
}

impl<M: Into<String>> From<(StatusCode, M)> for Rejection {
    fn from((status, message): (StatusCode, M)) -> Self {
        Self::new(status, message)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// The boxed future an identify hook returns.
pub(crate) type IdentifyFuture = Pin<Box<dyn Future<Output = Result<Identity, Rejection>> + Send>>;

/// The stored identify hook.
pub(crate) type IdentifyFn = Arc<dyn Fn(&Parts) -> IdentifyFuture + Send + Sync>;

/// The default hook: everyone is anonymous with no metadata.
pub(crate) fn anonymous_hook() -> IdentifyFn {
    Arc::new(|_: &Parts| Box::pin(async { Ok(Identity::anonymous()) }))
}

/// Reads one query parameter from a request URI, decoded as browsers encode it
/// (`application/x-www-form-urlencoded`, as `URLSearchParams` builds it: `+` is a space, `%XX`
/// escapes; a malformed escape stays as it is and invalid UTF-8 becomes U+FFFD, the WHATWG
/// rules). `None` when absent; the first one when repeated. A helper for identify hooks.
pub fn query_param(parts: &Parts, key: &str) -> Option<String> {
    form_urlencoded::parse(parts.uri.query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(uri: &str) -> Parts {
        Request::builder().uri(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn query_params_are_decoded() {
        let p = parts("/ws?user=u1&name=Ann+Lee&x=%C3%A9t%C3%A9&empty=&flag");
        assert_eq!(query_param(&p, "user").as_deref(), Some("u1"));
        assert_eq!(query_param(&p, "name").as_deref(), Some("Ann Lee"));
        assert_eq!(query_param(&p, "x").as_deref(), Some("été"));
        assert_eq!(query_param(&p, "empty").as_deref(), Some(""));
        assert_eq!(query_param(&p, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&p, "missing"), None);
        // As URLSearchParams reads them: broken escapes stay, invalid UTF-8 is replaced.
        assert_eq!(
            query_param(&parts("/ws?n=%zz"), "n").as_deref(),
            Some("%zz")
        );
        assert_eq!(query_param(&parts("/ws?n=%4"), "n").as_deref(), Some("%4"));
        assert_eq!(query_param(&parts("/ws?n=%"), "n").as_deref(), Some("%"));
        assert_eq!(
            query_param(&parts("/ws?n=%ff"), "n").as_deref(),
            Some("\u{fffd}")
        );
        // An encoded key is decoded too; the first of a repeated key wins.
        let p = parts("/ws?na%6De=A&name=B");
        assert_eq!(query_param(&p, "name").as_deref(), Some("A"));
    }

    #[test]
    fn identity_helpers() {
        let i = Identity::user("u1").with_name("Ann");
        assert_eq!(i.principal.as_deref(), Some("u1"));
        assert_eq!(
            i.meta.get("name"),
            Some(&serde_json::Value::String("Ann".into()))
        );
        assert_eq!(Identity::anonymous().principal, None);
        let r: Rejection = (StatusCode::UNAUTHORIZED, "sign in").into();
        assert_eq!(r, Rejection::unauthorized("sign in"));
    }
}
