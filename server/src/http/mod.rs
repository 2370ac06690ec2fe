//! HTTP endpoints: routing, body limits and timeouts, and the JSON views. Handlers
//! are thin: `/v1/auth` hands bytes to [`crate::handshake`], token endpoints to
//! [`AppState::check_own_token`] (the server's own audience only).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /v1/server-key` | signed server key document (binary; `?format=json` for humans) |
//! | `POST /v1/auth` | the fixed-size handshake |
//! | `POST /v1/introspect` | a resource server's token (+ PoP) → claims or `{"active": false}` |
//! | `GET /v1/whoami` | claims of the presented token (PoP, or bearer on TLS) |
//! | `/v1/otp/*` | the OTP API ([`crate::otp::api`]) |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of the JSON endpoints |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness, readiness (the store takes writes), Prometheus text |

use std::net::IpAddr;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use onetrip_protocol::handshake::{REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::ServerKeyDocument;

mod request;
pub mod request_id;
mod token_auth;
mod tokens;

pub use request::ConnInfo;
pub(crate) use request::{failed_auth_guard, read_body, MAX_JSON_BODY};
pub use token_auth::INTROSPECT_SCOPE;
pub(crate) use token_auth::{authenticate, authenticate_once};
use tokens::{introspect, revocations, whoami};

use crate::problem::{json, octets, problem, rate_limited, Body, ProblemCode};
use crate::shared::RateDecision;
use crate::state::AppState;

/// The routes [`route`] serves besides `/v1/otp/*` ([`crate::otp::api::ROUTES`]), as
/// (method, OpenAPI path); a test checks them against `openapi.yaml` and the router.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/auth"),
    ("get", "/v1/server-key"),
    ("post", "/v1/introspect"),
    ("get", "/v1/whoami"),
    ("get", "/v1/revocations"),
    ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// Serves one request, under its request id ([`request_id`]): a span field of every
/// log line it causes, and the `X-Request-Id` header of the answer.
pub async fn route(
    state: AppState,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Result<Response<Body>, std::convert::Infallible> {
    use tracing::Instrument;
    let id = request_id::of(req.headers());
    // The client's address (behind a trusted proxy, the one its PROXY header named).
    let span = tracing::info_span!("request", id = id.to_str().unwrap_or("-"), client = %conn.peer);
    let mut resp = dispatch(state, req, conn).instrument(span).await;
    resp.headers_mut().insert(request_id::HEADER, id);
    Ok(resp)
}

async fn dispatch(state: AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    state.metrics.http_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let route = route_label(req.uri().path());
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/auth") => auth(&state, req, conn).await,
        (&Method::GET, "/v1/server-key" | "/v1/openapi.json") if over_public_limit(&state, conn) => {
            rate_limited(1, "too many requests from this address")
        }
        (&Method::GET, "/v1/server-key") => server_key(&state, req.uri().query()),
        (&Method::POST, "/v1/introspect") => match failed_auth_guard(&state, conn) {
            Some(limited) => limited,
            None => introspect(&state, req, conn).await,
        },
        (&Method::GET, "/v1/revocations") => match failed_auth_guard(&state, conn) {
            Some(limited) => limited,
            None => revocations(&state, req, conn).await,
        },
        (&Method::GET, "/v1/whoami") => match failed_auth_guard(&state, conn) {
            Some(limited) => limited,
            None => whoami(&state, req, conn).await,
        },
        // Shutting down (SIGTERM, --drain-secs): the load balancer takes this replica
        // out while every other route is still served.
        (&Method::GET, "/healthz") if state.metrics.draining.load(std::sync::atomic::Ordering::Relaxed) == 1 => {
            let mut resp = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "Draining",
                "this replica is shutting down; it still serves requests until its listener closes",
            );
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            resp
        }
        // Replica-shared state (Redis) down: handshakes and OTP fail closed here, so
        // the load balancer should send them to another replica.
        (&Method::GET, "/healthz") if !state.shared.healthy() => crate::shared_redis::unhealthy(),
        // Liveness: the process answers. Handshakes of known keys go on without the
        // store (the key directory is in memory), so a down store is `degraded`, not down.
        (&Method::GET, "/healthz") if state.store_up() => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/healthz") => {
            json(StatusCode::OK, &serde_json::json!({ "status": "degraded", "store": "unreachable" }))
        }
        // Readiness: a load balancer sends writes (key changes, OTP) elsewhere while
        // this replica's store cannot take them.
        (&Method::GET, "/readyz") if state.store_up() => {
            json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
        }
        (&Method::GET, "/readyz") => {
            let mut resp = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "Not ready",
                "the store does not answer or does not take writes now; see the server log",
            );
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            resp
        }
        (&Method::GET, "/v1/openapi.json") => crate::otp::api::openapi_json(),
        (_, path) if crate::otp::api::handles(path) => crate::otp::api::route(&state, req, conn).await,
        (&Method::GET, "/metrics") if metrics_allowed(&state.settings, conn.peer, req.headers()) => metrics(&state),
        (&Method::GET, "/metrics") => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "metrics are served to loopback clients or with ONETRIP_METRICS_TOKEN",
        ),
        (
            _,
            "/v1/auth" | "/v1/server-key" | "/v1/introspect" | "/v1/whoami" | "/v1/revocations" | "/healthz"
            | "/readyz" | "/metrics" | "/v1/openapi.json",
        ) => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "see the API documentation",
        ),
        _ => problem(StatusCode::NOT_FOUND, "not_found", "Not found", "no such endpoint"),
    };
    if let Some(ProblemCode(code)) = resp.extensions().get::<ProblemCode>().copied() {
        state.metrics.record_refusal(route, code);
        if route == "auth" && resp.status().is_client_error() {
            // Refused before any cryptography: rate limits and body limits as well
            // as undecodable bodies (counted in the handshake code).
            if code != "bad_request" {
                state.metrics.handshakes_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        tracing::debug!(route, code, status = resp.status().as_u16(), "request refused");
    }
    resp
}

/// The metrics label of a request path: one of a fixed set, so a client cannot grow
/// the label set with made-up paths.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/auth" => "auth",
        "/v1/server-key" => "server_key",
        "/v1/openapi.json" => "openapi",
        "/v1/introspect" => "introspect",
        "/v1/revocations" => "revocations",
        "/v1/whoami" => "whoami",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        p if crate::otp::api::handles(p) => "otp",
        _ => "other",
    }
}

/// The per-address limit of the public documents (`/v1/server-key`,
/// `/v1/openapi.json`): cheap answers, but no route is open to an unbounded rate from
/// one address. `/healthz` and `/readyz` stay unlimited for load balancers' checks.
fn over_public_limit(state: &AppState, conn: ConnInfo) -> bool {
    let decision = state.public_ip_limiter.check(conn.peer, state.settings.auth_rate_per_ip, state.now());
    matches!(decision, RateDecision::Limited { .. })
}

async fn auth(state: &AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let now = state.now();
    if let RateDecision::Limited { retry_after } =
        state.ip_limiter.check(conn.peer, state.settings.auth_rate_per_ip, now)
    {
        return rate_limited(retry_after, "too many handshakes from this address");
    }
    let body = match read_body(state, req, REQUEST_LEN).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let mut out = [0u8; RESPONSE_LEN];
    match crate::handshake::handle_auth(state, &body, now, &mut out).await {
        Ok(_) => octets(Bytes::copy_from_slice(&out)),
        Err(e @ onetrip_protocol::RequestError::KeySet(_)) => {
            tracing::error!(error = %e, "no handshake key is valid now: rotate the server key");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "the server has no valid handshake key",
            )
        }
        Err(e) => problem(StatusCode::BAD_REQUEST, "bad_request", "Not a handshake request", &e.to_string()),
    }
}

fn server_key(state: &AppState, query: Option<&str>) -> Response<Body> {
    let hs = state.handshake.load();
    if query.is_some_and(|q| q.split('&').any(|p| p == "format=json")) {
        let Ok(doc) = ServerKeyDocument::parse(&hs.document) else {
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "document unreadable");
        };
        let keys: Vec<_> = doc
            .entries()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "key_id": hex::encode(e.key_id),
                    "public": hex::encode(e.public),
                    "not_before": e.not_before,
                    "not_after": e.not_after,
                })
            })
            .collect();
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "fingerprint": doc.fingerprint().to_string(),
                "identity_public": hex::encode(doc.identity()),
                "issued_at": doc.issued_at(),
                "expires_at": doc.expires_at(),
                "keys": keys,
            }),
        );
    }
    octets(hs.document.clone())
}

/// Who may read `/metrics`: its per-status counters reveal individual outcomes on a
/// quiet server, so with `ONETRIP_METRICS_TOKEN` set only a caller with
/// `Authorization: Bearer <token>` (compared in constant time), and otherwise only
/// clients on this host.
pub(crate) fn metrics_allowed(settings: &crate::config::Settings, peer: IpAddr, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    match &settings.metrics_token {
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| bool::from(presented.trim().as_bytes().ct_eq(token.0.as_bytes()))),
        None => {
            peer.is_loopback()
                || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
    }
}

fn metrics(state: &AppState) -> Response<Body> {
    let mut text = state.metrics.render(
        state.keys.active_len(state.now()),
        state.shared.local_replay_entries(),
        state.keys.cached_static_statics(),
    );
    crate::metrics::render_store_stats(&mut text, &state.store.store_stats());
    state.metrics.otp.render(&mut text);
    crate::shared_redis::render_metrics(&mut text, state.shared.as_ref());
    let expiry = state.handshake.load().responder.entries().map(|e| e.not_after).max();
    crate::metrics::render_state_gauges(&mut text, state.settings.replay_cache_capacity, expiry);
    let mut resp = Response::new(Body::new(Bytes::from(text)));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_for_this_host_or_for_the_token_holder() {
        let mut settings = crate::config::Settings::defaults("/tmp/x".into());
        let none = HeaderMap::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for local in ["127.0.0.1", "127.0.0.9", "::1", "::ffff:127.0.0.1"] {
            assert!(metrics_allowed(&settings, ip(local), &none), "{local}");
        }
        for remote in ["192.0.2.7", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.7"] {
            assert!(!metrics_allowed(&settings, ip(remote), &none), "{remote}");
        }
        settings.metrics_token = Some(crate::config::SecretSetting("a-long-metrics-token".to_owned().into()));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(!metrics_allowed(&settings, ip("127.0.0.1"), &none), "a token, once set, is required of everyone");
        assert!(!metrics_allowed(&settings, ip("127.0.0.1"), &with("Bearer a-long-metrics-tokem")));
        assert!(!metrics_allowed(&settings, ip("127.0.0.1"), &with("Basic a-long-metrics-token")));
        assert!(metrics_allowed(&settings, ip("192.0.2.7"), &with("Bearer a-long-metrics-token")));
    }
}
