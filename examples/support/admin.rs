//! The documents demo's admin endpoints, guarded by a bearer token (`ADMIN_TOKEN`): list the
//! rooms a page at a time, force a release, kick a session, and follow room changes as a
//! server-sent event stream (what an audit log or a webhook forwarder would read).
//!
//! ```text
//! curl -H 'authorization: Bearer s3cret' 'http://127.0.0.1:3000/admin/rooms?limit=20'
//! curl -H 'authorization: Bearer s3cret' 'http://127.0.0.1:3000/admin/rooms?after=doc-20'
//! curl -X POST -H 'authorization: Bearer s3cret' http://127.0.0.1:3000/admin/rooms/doc-1/release
//! curl -X POST -H 'authorization: Bearer s3cret' http://127.0.0.1:3000/admin/sessions/5f0c9a3e1b2d4c6f/kick
//! curl -N -H 'authorization: Bearer s3cret' http://127.0.0.1:3000/admin/changes
//! ```
//!
//! A demo: a real application puts these behind its own authentication and audit trail.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use occupancy::{Error, ForcedRelease, Hub, SessionId};
use serde::Deserialize;
use serde_json::json;

/// The most rooms one page lists.
pub const MAX_PAGE: usize = 500;

/// `/admin/...` on `hub`, answering only requests with `Authorization: Bearer <token>`.
pub fn router(hub: Hub, token: String) -> Router {
    let token = Arc::new(format!("Bearer {token}"));
    Router::new()
        .route("/admin/rooms", get(rooms))
        .route("/admin/rooms/{id}/release", post(release))
        .route("/admin/sessions/{id}/kick", post(kick))
        .route("/admin/changes", get(changes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move {
                let given = req.headers().get(header::AUTHORIZATION);
                // Compared without an early exit, so the time taken does not tell how much of
                // a guess was right.
                let ok = given.is_some_and(|g| {
                    let (g, t) = (g.as_bytes(), token.as_bytes());
                    g.len() == t.len() && g.iter().zip(t).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
                });
                if ok {
                    next.run(req).await
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        "admin: missing or wrong bearer token\n",
                    )
                        .into_response()
                }
            }
        }))
        .with_state(hub)
}

/// A JSON body with its content type (the examples' axum has no `json` feature).
struct Json(serde_json::Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

fn error(e: Error) -> Response {
    let status = match e {
        Error::RoomInvalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        Json(json!({"code": e.code(), "message": e.to_string()})),
    )
        .into_response()
}

/// `GET /admin/rooms?after=&limit=`: `{"rooms": [summary...], "next": id or null}`.
async fn rooms(State(hub): State<Hub>, Query(page): Query<Page>) -> Response {
    let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    match hub.rooms(page.after.as_deref(), limit).await {
        Ok(rooms) => {
            let next = (rooms.len() == limit).then(|| rooms.last().map(|r| r.room.clone()));
            Json(json!({"rooms": rooms, "next": next.flatten()})).into_response()
        }
        Err(e) => error(e),
    }
}

/// `POST /admin/rooms/{id}/release`: `{"outcome": "handed_over" | "pending" | "vacant", ...}`.
async fn release(State(hub): State<Hub>, Path(id): Path<String>) -> Response {
    match hub.release(&id).await {
        Ok(ForcedRelease::HandedOver { version, to }) => {
            Json(json!({"outcome": "handed_over", "version": version, "to": to})).into_response()
        }
        Ok(ForcedRelease::Pending) => Json(json!({"outcome": "pending"})).into_response(),
        Ok(ForcedRelease::Vacant) => Json(json!({"outcome": "vacant"})).into_response(),
        Ok(other) => Json(json!({"outcome": format!("{other:?}")})).into_response(),
        Err(e) => error(e),
    }
}

/// `POST /admin/sessions/{id}/kick` (the session id as in `hello.session`): `{"kicked": bool}`.
async fn kick(State(hub): State<Hub>, Path(id): Path<String>) -> Response {
    let Ok(session) = id.parse::<SessionId>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "bad_message", "message": "a session id is 16 hex digits"})),
        )
            .into_response();
    };
    match hub.kick(session).await {
        Ok(kicked) => Json(json!({"kicked": kicked})).into_response(),
        Err(e) => error(e),
    }
}

/// `GET /admin/changes`: one server-sent event per changed room,
/// `{"room", "version", "now": summary or null}`; a slow reader skips to each room's latest.
async fn changes(State(hub): State<Hub>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(hub.changes(), |mut changes| async move {
        let c = changes.recv().await;
        let data = json!({"room": c.room, "version": c.version, "now": c.now});
        Some((Ok(Event::default().data(data.to_string())), changes))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
