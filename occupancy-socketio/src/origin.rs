//! The origin check: a tower layer that refuses, with 403, browser requests to the Socket.IO
//! endpoint whose `Origin` is not allowed.
//!
//! CORS does not protect a WebSocket upgrade (browsers send it cross-origin without asking), and
//! Socket.IO's polling transport is plain `GET`/`POST` requests, so any page a user visits could
//! otherwise open a connection that joins rooms in their name. Requests without an `Origin`
//! header (non-browser clients such as Node's `socket.io-client`) are let through: the header is
//! only a defence for browser users. Put the layer *inside* a CORS layer, so preflight requests
//! are answered by the CORS layer and refusals still carry no CORS headers.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::header::{HOST, ORIGIN};
use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use occupancy_core::{Error, OriginPolicy};

/// Which `Origin`s may connect: a tower layer refusing, with 403, browser requests whose
/// `Origin` is not allowed by an [`OriginPolicy`] (the same policy, with the same normalization,
/// as the axum endpoint's). CORS does not protect a WebSocket upgrade and Socket.IO polling is
/// plain `GET`/`POST`, so without it any page a user visits could connect in their name. Requests
/// without an `Origin` header (non-browser clients) pass. Put it inside a CORS layer (in axum,
/// `.layer(origin_layer)` before `.layer(cors)`), so preflights are answered by CORS.
///
/// ```
/// use occupancy_socketio::OriginLayer;
/// // The page's own host, plus the article's Vite dev server.
/// let layer = OriginLayer::same_host().allow("http://localhost:5173")?;
/// assert!(layer.is_allowed(Some("http://localhost:5173"), Some("localhost:9000")));
/// assert!(layer.is_allowed(Some("http://localhost:9000"), Some("localhost:9000")));
/// assert!(!layer.is_allowed(Some("https://evil.example"), Some("localhost:9000")));
/// assert!(layer.is_allowed(None, Some("localhost:9000")), "non-browser clients send no Origin");
/// # Ok::<(), occupancy_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct OriginLayer {
    policy: Arc<OriginPolicy>,
}

impl From<OriginPolicy> for OriginLayer {
    fn from(policy: OriginPolicy) -> Self {
        OriginLayer {
            policy: Arc::new(policy),
        }
    }
}

impl OriginLayer {
    /// Allows browser pages served from the same host (and port) as the request's `Host` header:
    /// the library's default ([`OriginPolicy::same_host`]).
    pub fn same_host() -> Self {
        OriginPolicy::same_host().into()
    }

    /// Allows exactly these origins (`scheme://host[:port]`, e.g. `http://localhost:5173`), and
    /// not the same host unless listed ([`OriginPolicy::allow`]). A malformed origin (a path, a
    /// trailing slash, another scheme) is an [`Error::Config`] naming it.
    pub fn list<I, S>(origins: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(OriginPolicy::allow(origins)?.into())
    }

    /// Allows every origin: only for development, or when another layer checks it.
    pub fn any() -> Self {
        OriginPolicy::any().into()
    }

    /// Also allows `origin` (`scheme://host[:port]`); a malformed one is an [`Error::Config`].
    pub fn allow(self, origin: impl AsRef<str>) -> Result<Self, Error> {
        Ok(OriginPolicy::clone(&self.policy)
            .also(origin.as_ref())?
            .into())
    }

    /// The policy this layer applies.
    pub fn policy(&self) -> &OriginPolicy {
        &self.policy
    }

    /// Whether a request with this `Origin` and `Host` is let through.
    pub fn is_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        self.policy.is_allowed(origin, host)
    }

    fn check<B>(&self, req: &Request<B>) -> bool {
        let header = |name| req.headers().get(name).map(HeaderValue::as_bytes);
        // HTTP/2 has no `Host` header: the URI's authority stands in for it.
        let host = header(HOST).or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
        self.policy.check_header_bytes(header(ORIGIN), host).is_ok()
    }
}

impl<S> Layer<S> for OriginLayer {
    type Service = OriginService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`OriginLayer`].
#[derive(Clone, Debug)]
pub struct OriginService<S> {
    inner: S,
    layer: OriginLayer,
}

impl<S, B, RB> Service<Request<B>> for OriginService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<RB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.layer.check(&req) {
            return Either::Left(self.inner.call(own_head(req)));
        }
        tracing::debug!(
            origin = ?req.headers().get(ORIGIN),
            uri = %req.uri(),
            "refused a request from a disallowed origin"
        );
        let mut res = Response::new(RB::default());
        *res.status_mut() = StatusCode::FORBIDDEN;
        Either::Right(ready(Ok(res)))
    }
}

/// The request with its own copy of its head (header values and URI). hyper parses them as
/// slices of the connection's read buffer (8 to 16 KiB), and socketioxide keeps the head of the
/// request that opened each Socket.IO session for the session's whole life (`req_parts`), so that
/// whole buffer lived as long as the connection: 7 KiB of RSS per idle connection, a quarter of
/// it (measured with `loadgen/src/bin/heap_census.rs` and `idle_conns.rs`). The copy is a dozen
/// small allocations per request.
fn own_head<B>(req: Request<B>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // `from_bytes` copies; the value was valid, so it still is.
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), copy);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = http::Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_compares_authority_with_default_ports() {
        let l = OriginLayer::same_host();
        assert!(l.is_allowed(Some("http://Example.com"), Some("example.com")));
        assert!(l.is_allowed(Some("http://example.com"), Some("example.com:80")));
        assert!(l.is_allowed(Some("https://example.com:443"), Some("example.com")));
        assert!(l.is_allowed(Some("http://127.0.0.1:9000"), Some("127.0.0.1:9000")));
        assert!(!l.is_allowed(Some("http://127.0.0.1:9001"), Some("127.0.0.1:9000")));
        assert!(!l.is_allowed(Some("http://evil.com"), Some("example.com")));
        assert!(!l.is_allowed(Some("null"), Some("example.com")));
        assert!(!l.is_allowed(Some("http://example.com"), None));
        assert!(!l.is_allowed(Some("http://example.com/x"), Some("example.com/x")));
        assert!(l.is_allowed(None, None));
    }

    #[test]
    fn lists_and_any() {
        let l = OriginLayer::list(["http://localhost:5173"]).unwrap();
        assert!(l.is_allowed(Some("http://LOCALHOST:5173"), Some("localhost:9000")));
        assert!(!l.is_allowed(Some("http://localhost:9000"), Some("localhost:9000")));
        // The same check as the axum endpoint's: a trailing slash is refused, not trimmed.
        let e = OriginLayer::list(["http://localhost:5173/"]).unwrap_err();
        assert!(
            matches!(e, Error::Config(ref m) if m.contains("no trailing slash")),
            "{e}"
        );
        let l = OriginLayer::same_host().allow("http://a.test").unwrap();
        assert!(l.is_allowed(Some("http://a.test"), Some("b.test")));
        assert!(l.is_allowed(Some("http://b.test"), Some("b.test")));
        assert!(OriginLayer::any().is_allowed(Some("null"), None));
    }

    #[test]
    fn the_service_refuses_with_403_and_calls_through_otherwise() {
        let mut svc = OriginLayer::same_host().layer(Inner);
        let req = |origin: &str| {
            Request::builder()
                .header(HOST, "localhost:9000")
                .header(ORIGIN, origin)
                .body(())
                .unwrap()
        };
        let run = |f: Either<InnerFuture, InnerFuture>| match f {
            Either::Left(r) | Either::Right(r) => r.into_inner().unwrap(),
        };
        assert_eq!(run(svc.call(req("http://localhost:9000"))).body(), "inner");
        let refused = run(svc.call(req("http://evil.test")));
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.body(), "");
    }

    #[test]
    fn the_request_passed_on_does_not_keep_the_connection_buffer() {
        use tokio_tungstenite::tungstenite::Bytes;
        // As hyper parses a request: the URI and header values are slices of its read buffer.
        let head = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1 localhost:9000 x";
        let mut buf = head.to_vec();
        buf.resize(16 * 1024, b' ');
        let buf = Bytes::from(buf);
        let uri = http::Uri::from_maybe_shared(buf.slice(4..41)).unwrap();
        let host = HeaderValue::from_maybe_shared(buf.slice(51..65)).unwrap();
        let mut key = HeaderValue::from_maybe_shared(buf.slice(66..67)).unwrap();
        key.set_sensitive(true);
        let req = Request::builder()
            .uri(uri)
            .header(HOST, host)
            .header("sec-websocket-key", key)
            .header("x-twice", "1")
            .header("x-twice", "2")
            .body(())
            .unwrap();
        assert!(!buf.is_unique());

        let kept = Arc::new(std::sync::Mutex::new(None));
        let mut svc = OriginLayer::same_host().layer(Keep(kept.clone()));
        drop(svc.call(req));
        let kept = kept.lock().unwrap().take().expect("called through");
        assert!(
            buf.is_unique(),
            "the request passed on still refers to the buffer"
        );
        assert_eq!(kept.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(kept.headers()[HOST], "localhost:9000");
        assert_eq!(kept.headers()["sec-websocket-key"], "x");
        assert!(kept.headers()["sec-websocket-key"].is_sensitive());
        let twice: Vec<_> = kept.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["1", "2"]);
    }

    /// Keeps the request it is called with.
    #[derive(Clone)]
    struct Keep(Arc<std::sync::Mutex<Option<Request<()>>>>);

    impl Service<Request<()>> for Keep {
        type Response = Response<String>;
        type Error = std::convert::Infallible;
        type Future = InnerFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            *self.0.lock().unwrap() = Some(req);
            ready(Ok(Response::new(String::new())))
        }
    }

    type InnerFuture = Ready<Result<Response<String>, std::convert::Infallible>>;

    #[derive(Clone)]
    struct Inner;

    impl Service<Request<()>> for Inner {
        type Response = Response<String>;
        type Error = std::convert::Infallible;
        type Future = InnerFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            ready(Ok(Response::new("inner".to_owned())))
        }
    }
}
