//! The Origin check made before a WebSocket upgrade: the core's [`OriginPolicy`] (one policy
//! for both adapters) applied to the request's headers.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

use occupancy_core::OriginPolicy;

/// Whether a request with these headers may upgrade; otherwise the reason, for the 403 response.
pub(crate) fn check(policy: &OriginPolicy, headers: &HeaderMap) -> Result<(), String> {
    let bytes = |name| {
        headers
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.as_bytes())
    };
    policy.check_header_bytes(bytes(ORIGIN), bytes(HOST))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn headers_reach_the_policy_and_a_binary_origin_is_malformed() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("example.com"));
        assert!(
            check(&OriginPolicy::default(), &h).is_ok(),
            "no Origin: not a browser"
        );
        h.insert(ORIGIN, HeaderValue::from_static("https://example.com"));
        assert!(check(&OriginPolicy::default(), &h).is_ok());
        h.insert(
            ORIGIN,
            HeaderValue::from_bytes(b"https://\xffexample.com").unwrap(),
        );
        assert_eq!(
            check(&OriginPolicy::default(), &h),
            Err("malformed Origin header".to_string())
        );
    }
}
