//! Which browser origins may connect: one policy for every adapter (the axum endpoint checks it
//! before a WebSocket upgrade, the Socket.IO layer on every polling request and upgrade).
//!
//! Why: CORS does not protect a WebSocket upgrade, and Socket.IO's polling transport is plain
//! `GET`/`POST` requests, so a page on any site could open a connection with the user's cookies
//! (cross-site WebSocket hijacking). Browsers always send `Origin`; the server refuses origins it
//! does not trust. Non-browser clients send none and are let through (they cannot carry a
//! victim's cookies). Transport-free: the adapters pass the header values.

use crate::error::Error;

/// Which browser origins may connect.
///
/// The default, [`OriginPolicy::same_host`], allows a page served by the same host (`Host`
/// header, port included) as the endpoint. Behind a reverse proxy that rewrites `Host`,
/// or for a frontend served from another origin (a dev server on `localhost:5173`), list the
/// origins with [`OriginPolicy::allow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    same_host: bool,
    any: bool,
    /// Normalized `scheme://host[:port]` (lowercase, default port removed), or `null`.
    list: Vec<String>,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        Self::same_host()
    }
}

impl OriginPolicy {
    /// Only pages whose origin's host and port equal the request's `Host` (the default).
    pub fn same_host() -> Self {
        OriginPolicy {
            same_host: true,
            any: false,
            list: Vec::new(),
        }
    }

    /// Exactly the listed origins (`"https://app.example.com"`, `"http://localhost:5173"`); the
    /// same-host rule no longer applies unless [`OriginPolicy::with_same_host`] adds it back.
    /// Each must be `http` or `https` with a host and an optional port, and no path, or the
    /// literal `null` (sandboxed iframes, `file:` pages — rarely what you want).
    pub fn allow<I, S>(origins: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = origins
            .into_iter()
            .map(|o| parse_allowed(o.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy {
            same_host: false,
            any: false,
            list,
        })
    }

    /// Also allow same-host pages (see [`OriginPolicy::same_host`]).
    pub fn with_same_host(mut self) -> Self {
        self.same_host = true;
        self
    }

    /// No check at all: any site's page may connect with the user's cookies. Only for endpoints
    /// that do not authenticate by cookie (or for local experiments).
    pub fn any() -> Self {
        OriginPolicy {
            same_host: false,
            any: true,
            list: Vec::new(),
        }
    }

    /// Also allows `origin` (same form as in [`OriginPolicy::allow`]).
    pub fn also(mut self, origin: &str) -> Result<Self, Error> {
        self.list.push(parse_allowed(origin)?);
        Ok(self)
    }

    /// Whether a request with this `Origin` and `Host` header may connect. `Ok(())` when allowed;
    /// otherwise the reason, for the 403 response. No `Origin` means not a browser, which cannot
    /// be carrying a victim's cookies: allowed. An `Origin` that is not valid text is passed as
    /// `Some` of anything malformed (it is refused as malformed).
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let Some(origin) = normalize_origin(origin) else {
            return Err("malformed Origin header".into());
        };
        if self.list.contains(&origin) {
            return Ok(());
        }
        if self.same_host
            && let Some(host) = host
            && same_host(&origin, host)
        {
            return Ok(());
        }
        Err(format!("origin {origin} is not allowed to connect"))
    }

    /// [`OriginPolicy::check`] on raw header bytes, as an adapter reads them: a value that is not
    /// visible ASCII text (what `http::HeaderValue::to_str` accepts) is a malformed `Origin`, and
    /// a `Host` nothing can equal.
    pub fn check_header_bytes(
        &self,
        origin: Option<&[u8]>,
        host: Option<&[u8]>,
    ) -> Result<(), String> {
        fn text(b: &[u8]) -> &str {
            let visible = b.iter().all(|&c| (32..127).contains(&c) || c == b'\t');
            match std::str::from_utf8(b) {
                Ok(s) if visible => s,
                // Refused as malformed by `normalize_origin`, equal to no host.
                _ => "\u{0}",
            }
        }
        self.check(origin.map(text), host.map(text))
    }

    /// [`OriginPolicy::check`] as a yes or no.
    pub fn is_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        self.check(origin, host).is_ok()
    }
}

fn parse_allowed(o: &str) -> Result<String, Error> {
    normalize_origin(o).ok_or_else(|| {
        Error::Config(format!(
            "allowed origin {o:?} is not like \"https://host[:port]\" (no path, no trailing slash)"
        ))
    })
}

/// Lowercases an origin and drops its default port: `HTTPS://Example.com:443` → `https://example.com`.
/// `None` when it is not `scheme://authority` with scheme http(s) (ws(s) accepted too), or `null`.
fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim();
    if origin == "null" {
        return Some("null".into());
    }
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return None,
    };
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
        || authority.chars().any(|c| c.is_control())
    {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// True when the normalized origin's authority equals the Host header (default port ignored).
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let default_port = if matches!(scheme, "https" | "wss") {
        ":443"
    } else {
        ":80"
    };
    let host = host.strip_suffix(default_port).unwrap_or(&host);
    authority == host
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_is_the_default() {
        let p = OriginPolicy::default();
        assert!(
            p.check(Some("http://127.0.0.1:3000"), Some("127.0.0.1:3000"))
                .is_ok()
        );
        assert!(
            p.check(Some("https://Example.COM"), Some("example.com:443"))
                .is_ok()
        );
        assert!(
            p.check(Some("http://example.com:80"), Some("example.com"))
                .is_ok()
        );
        // Another port is another origin.
        assert!(
            p.check(Some("http://127.0.0.1:3001"), Some("127.0.0.1:3000"))
                .is_err()
        );
        assert!(
            p.check(Some("https://evil.example"), Some("example.com"))
                .is_err()
        );
        assert!(p.check(Some("null"), Some("example.com")).is_err());
        assert!(p.check(Some("garbage"), Some("example.com")).is_err());
        // No Host: nothing to compare with.
        assert!(p.check(Some("http://a"), None).is_err());
    }

    #[test]
    fn no_origin_header_means_not_a_browser_and_is_allowed() {
        assert!(OriginPolicy::default().check(None, None).is_ok());
        let p = OriginPolicy::allow(["https://app.example.com"]).unwrap();
        assert!(p.check(None, Some("x")).is_ok());
    }

    #[test]
    fn allow_list_replaces_same_host_unless_added_back() {
        let p = OriginPolicy::allow(["https://app.example.com", "http://localhost:5173"]).unwrap();
        assert!(
            p.check(Some("https://app.example.com:443"), Some("api.example.com"))
                .is_ok()
        );
        assert!(
            p.check(Some("http://localhost:5173"), Some("localhost:3000"))
                .is_ok()
        );
        assert!(
            p.check(Some("http://localhost:3000"), Some("localhost:3000"))
                .is_err()
        );
        let p = p.with_same_host();
        assert!(
            p.check(Some("http://localhost:3000"), Some("localhost:3000"))
                .is_ok()
        );
        assert!(
            OriginPolicy::any()
                .check(Some("https://evil"), None)
                .is_ok()
        );
    }

    #[test]
    fn malformed_allowed_origins_are_config_errors() {
        for bad in [
            "example.com",
            "https://a/",
            "ftp://a",
            "https://",
            "https://a/path",
        ] {
            assert!(OriginPolicy::allow([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_bytes_that_are_not_visible_ascii_are_malformed() {
        let p = OriginPolicy::same_host();
        assert_eq!(
            p.check_header_bytes(Some(b"https://\xffexample.com"), Some(b"example.com")),
            Err("malformed Origin header".to_string())
        );
        assert_eq!(
            p.check_header_bytes(Some("https://é.com".as_bytes()), Some("é.com".as_bytes())),
            Err("malformed Origin header".to_string())
        );
        assert!(
            p.check_header_bytes(Some(b"https://a.com"), Some(b"a.com"))
                .is_ok()
        );
        assert!(
            p.check_header_bytes(Some(b"https://a.com"), Some(b"a\x01.com"))
                .is_err()
        );
        assert!(
            p.check_header_bytes(None, Some(b"\xff")).is_ok(),
            "not a browser"
        );
    }

    #[test]
    fn also_adds_a_checked_origin_and_both_adapters_normalize_alike() {
        let p = OriginPolicy::same_host()
            .also("HTTP://LocalHost:5173")
            .unwrap();
        assert!(p.is_allowed(Some("http://localhost:5173"), Some("localhost:9000")));
        assert!(p.is_allowed(Some("http://localhost:9000"), Some("localhost:9000")));
        assert!(!p.is_allowed(Some("https://evil.example"), Some("localhost:9000")));
        // A listed origin with its default port equals the one without.
        let p = OriginPolicy::allow(["https://app.example.com:443"]).unwrap();
        assert!(p.is_allowed(Some("https://app.example.com"), None));
        assert_eq!(
            OriginPolicy::same_host()
                .also("https://a/")
                .unwrap_err()
                .code(),
            "config"
        );
    }
}
