//! Who is connecting: the application's hook that turns the upgrade request (headers, cookies,
//! query, extensions set by the app's own auth middleware) into a principal and public metadata,
//! or refuses it with an HTTP status before the upgrade.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use occupancy_core::Meta;

/// The result of the identify hook: who this connection is, as the Hub will see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The authenticated user id. All connections of one principal are one occupant (two tabs
    /// hold together and never wait behind each other). `None`: an anonymous connection, its own
    /// occupant.
    pub principal: Option<String>,
    /// Public metadata shown to the others in the room (a display name, an avatar URL). A `join`
    /// may override it per room with its own `meta`.
    pub meta: Meta,
}

impl Identity {
    /// An anonymous connection with no metadata.
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// An authenticated user.
    pub fn user(principal: impl Into<String>) -> Self {
        Identity {
            principal: Some(principal.into()),
            meta: Meta::empty(),
        }
    }

    /// Replaces the metadata.
    pub fn with_meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }

    /// Sets the metadata to `{"name": name}`, the display name the example page shows.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let mut map = Map::new();
        map.insert("name".into(), Value::String(name.into()));
        self.meta = Meta::from_map(map);
        self
    }
}

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

/// Reads one query parameter from a request URI, percent-decoded (`+` is a space). `None` when
/// absent or not valid UTF-8 after decoding. A helper for identify hooks.
pub fn query_param(parts: &Parts, key: &str) -> Option<String> {
    let query = parts.uri.query()?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k).as_deref() == Some(key) {
            return percent_decode(v);
        }
    }
    None
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
                continue;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
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
        // Broken escapes and invalid UTF-8 are absent, not a panic.
        assert_eq!(query_param(&parts("/ws?n=%zz"), "n"), None);
        assert_eq!(query_param(&parts("/ws?n=%4"), "n"), None);
        assert_eq!(query_param(&parts("/ws?n=%"), "n"), None);
        assert_eq!(query_param(&parts("/ws?n=%ff"), "n"), None);
    }

    #[test]
    fn identity_helpers() {
        let i = Identity::user("u1").with_name("Ann");
        assert_eq!(i.principal.as_deref(), Some("u1"));
        assert_eq!(i.meta.get("name"), Some(&Value::String("Ann".into())));
        assert_eq!(Identity::anonymous().principal, None);
        let r: Rejection = (StatusCode::UNAUTHORIZED, "sign in").into();
        assert_eq!(r, Rejection::unauthorized("sign in"));
    }
}
