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
//! | `/v1/otp/*` | the OTP API ([`crate::otp_api`]) |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of the JSON endpoints |
//! | `GET /healthz`, `GET /metrics` | liveness, Prometheus text |

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use onetrip_protocol::handshake::{REQUEST_LEN, RESPONSE_LEN};
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{PopProof, ServerKeyDocument, Token};
use serde::Deserialize;

use crate::problem::{json, octets, problem, rate_limited, Body};
use crate::shared::{RateDecision, SharedState};
use crate::state::{unix_now, AppState, TokenCheckError};

/// Largest JSON body accepted.
pub(crate) const MAX_JSON_BODY: usize = 16 * 1024;

/// The routes [`route`] serves besides `/v1/otp/*` ([`crate::otp_api::ROUTES`]), as
/// (method, OpenAPI path); a test checks them against `openapi.yaml` and the router.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/auth"),
    ("get", "/v1/server-key"),
    ("post", "/v1/introspect"),
    ("get", "/v1/whoami"),
    ("get", "/v1/revocations"),
    ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/metrics"),
];

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Client address.
    pub peer: IpAddr,
    /// The connection is TLS (bearer tokens allowed).
    pub tls: bool,
}

/// Serves one request.
pub async fn route<S: SharedState>(
    state: AppState<S>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Result<Response<Body>, std::convert::Infallible> {
    state.metrics.http_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        // Liveness: the process answers. Handshakes of known keys go on without the
        // store (the key directory is in memory), so a down store is `degraded`, not down.
        (&Method::GET, "/healthz") if state.store_up() => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/healthz") => {
            json(StatusCode::OK, &serde_json::json!({ "status": "degraded", "store": "unreachable" }))
        }
        (&Method::GET, "/v1/openapi.json") => crate::otp_api::openapi_json(),
        (_, path) if crate::otp_api::handles(path) => crate::otp_api::route(&state, req, conn).await,
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
            | "/metrics" | "/v1/openapi.json",
        ) => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "see the API documentation",
        ),
        _ => problem(StatusCode::NOT_FOUND, "not_found", "Not found", "no such endpoint"),
    };
    Ok(resp)
}

/// The per-address limit of the public documents (`/v1/server-key`,
/// `/v1/openapi.json`): cheap answers, but no route is open to an unbounded rate from
/// one address. `/healthz` stays unlimited for load balancers' checks.
fn over_public_limit<S>(state: &AppState<S>, conn: ConnInfo) -> bool {
    let decision = state.public_ip_limiter.check(conn.peer, state.settings.auth_rate_per_ip, unix_now());
    matches!(decision, RateDecision::Limited { .. })
}

/// The token-checking routes' per-address guard, before their body or token is read:
/// an address over its budget of failed authentications ([`authenticate`] counts
/// them) gets no AEAD open, store or shared-state work.
pub(crate) fn failed_auth_guard<S>(state: &AppState<S>, conn: ConnInfo) -> Option<Response<Body>> {
    match state.otp_ip_limiter.check(conn.peer, state.settings.otp.api_rate_per_ip, unix_now()) {
        RateDecision::Allowed => None,
        RateDecision::Limited { retry_after } => {
            Some(rate_limited(retry_after, "too many failed authentications from this address"))
        }
    }
}

/// Reads a body of at most `max` bytes within the configured time.
pub(crate) async fn read_body<S>(
    state: &AppState<S>,
    req: Request<Incoming>,
    max: usize,
) -> Result<Bytes, Response<Body>> {
    if let Some(len) = content_length(req.headers()) {
        if len > max as u64 {
            return Err(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Body too large",
                &format!("this endpoint accepts at most {max} bytes"),
            ));
        }
    }
    let timeout = Duration::from_millis(state.settings.body_timeout_ms);
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Body too large",
            &format!("this endpoint accepts at most {max} bytes"),
        )),
        Ok(Err(_)) => {
            Err(problem(StatusCode::BAD_REQUEST, "bad_body", "Unreadable body", "the request body was cut off"))
        }
        Err(_) => Err(problem(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Body too slow",
            "the request body did not arrive in time",
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn auth<S: SharedState>(state: &AppState<S>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let now = unix_now();
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

fn server_key<S: SharedState>(state: &AppState<S>, query: Option<&str>) -> Response<Body> {
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

fn metrics<S: SharedState>(state: &AppState<S>) -> Response<Body> {
    let text =
        state.metrics.render(state.keys.len(), state.shared.replay_entries(), state.keys.cached_static_statics());
    let mut resp = Response::new(Body::new(Bytes::from(text)));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrospectRequest {
    token: String,
    pop: Option<String>,
    method: Option<String>,
    path: Option<String>,
    /// Request body the proof covers, base64 (standard).
    body: Option<String>,
}

/// `POST /v1/introspect`: a resource server asks about a token of its own audience.
/// The caller authenticates like any API call (a token for the server's audience with
/// the `introspect` scope, PoP-signed) and learns only about tokens for the audiences
/// its own key lists; anything else reads `{"active": false}`.
async fn introspect<S: SharedState>(state: &AppState<S>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match read_body(state, Request::from_parts(parts.clone(), body), MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let now = unix_now();
    let caller = match authenticate_resource_server(state, &parts, &body, conn, now).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let audiences = state.keys.get(&caller.api_key_id).map(|k| k.record.audiences.clone()).unwrap_or_default();
    let r: IntrospectRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return crate::problem::bad_json(&e),
    };
    let Ok(token) = Token::from_base64(&r.token) else {
        return json(StatusCode::OK, &serde_json::json!({ "active": false }));
    };
    let pop = match &r.pop {
        Some(p) => match PopProof::from_header(p) {
            Ok(p) => Some(p),
            Err(e) => {
                return problem(StatusCode::BAD_REQUEST, "pop_invalid", "Invalid proof of possession", &e.to_string())
            }
        },
        None => None,
    };
    let pop_body = match r.body.as_deref().map(decode_base64_body) {
        Some(Some(b)) => b,
        Some(None) => return problem(StatusCode::BAD_REQUEST, "bad_json", "Invalid JSON body", "body must be base64"),
        None => Vec::new(),
    };
    let (method, path) = (r.method.as_deref().unwrap_or(""), r.path.as_deref().unwrap_or(""));
    let checked = state
        .check_token_for(&audiences, &token, pop.as_ref().map(|p| (p, method, path, &pop_body[..])), conn.tls, now)
        .await;
    match checked {
        Ok(c) => json(StatusCode::OK, &claims_json(&c, pop.is_some())),
        Err(TokenCheckError::PopRequired) => problem(
            StatusCode::BAD_REQUEST,
            "pop_required",
            "Proof of possession required",
            "over plain HTTP a token is only checked together with its Onetrip-PoP proof (pop, method, path, body)",
        ),
        Err(TokenCheckError::Shared(e)) => crate::problem::unavailable(&e),
        Err(e) => {
            tracing::debug!(error = %e, "introspection: inactive");
            json(StatusCode::OK, &serde_json::json!({ "active": false }))
        }
    }
}

/// `GET /v1/revocations`: the token revocations in force, for resource servers that
/// verify tokens in-process (poll it; each entry lasts until the token would have
/// expired). Authenticated like introspection (scope `introspect`).
async fn revocations<S: SharedState>(state: &AppState<S>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let now = unix_now();
    let caller = match authenticate_resource_server(state, &parts, b"", conn, now).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    // API keys of the caller's audiences that stopped (revoked, or past a rotation's
    // grace) within a token lifetime: their tokens may still be in circulation.
    let audiences = state.keys.get(&caller.api_key_id).map(|k| k.record.audiences.clone()).unwrap_or_default();
    let since = now.saturating_sub(crate::config::MAX_TOKEN_TTL_SECS);
    let mut keys = Vec::new();
    state.keys.for_each(|e| {
        let r = &e.record;
        let stopped = r.revoked_at.or(r.expires_at.filter(|x| *x < now));
        if stopped.is_some_and(|at| at >= since) && r.audiences.iter().any(|a| audiences.contains(a)) {
            keys.push(serde_json::json!({ "key_id": e.id.to_string(), "since": stopped }));
        }
    });
    match state.store.revoked_tokens(now).await {
        Ok(revoked) => {
            let tokens: Vec<_> = revoked
                .iter()
                .map(|(id, until)| serde_json::json!({ "token_id": hex::encode(id), "until": until }))
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "at": now, "tokens": tokens, "keys": keys }))
        }
        Err(e) => crate::problem::unavailable(&e),
    }
}

/// [`authenticate`], then the `introspect` scope that `/v1/introspect` and
/// `/v1/revocations` need (403 `scope_required` without it).
async fn authenticate_resource_server<S: SharedState>(
    state: &AppState<S>,
    parts: &http::request::Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
) -> Result<onetrip_protocol::Claims, Response<Body>> {
    let caller = authenticate(state, parts, body, conn, now).await?;
    if !caller.has_scope(INTROSPECT_SCOPE) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "scope_required",
            "Scope required",
            "this needs a token for audience `onetrip` with the `introspect` scope: create the resource \
             server's key with --scope introspect --audience <its audience>",
        ));
    }
    Ok(caller)
}

/// Scope a resource server's key needs for `/v1/introspect`.
pub const INTROSPECT_SCOPE: &str = "introspect";

/// Standard base64, with or without its `=` padding (PROTOCOL.md §8 says no padding;
/// common encoders add it).
fn decode_base64_body(text: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

fn claims_json(c: &onetrip_protocol::Claims, pop_verified: bool) -> serde_json::Value {
    serde_json::json!({
        "active": true,
        "token_id": hex::encode(c.token_id),
        "key_id": c.api_key_id.to_string(),
        "audience": c.audience(),
        "scope": c.scopes(),
        "iat": c.issued_at,
        "exp": c.expires_at,
        "second_factor": c.second_factor,
        "pop_verified": pop_verified,
    })
}

/// 401 with `WWW-Authenticate: Onetrip`.
pub(crate) fn unauthorized(code: &str, detail: &str) -> Response<Body> {
    let mut r = problem(StatusCode::UNAUTHORIZED, code, "Unauthorized", detail);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Onetrip"));
    r
}

/// Checks the token presented on a request (PoP over method, path and `body`, or
/// bearer on TLS) and returns its claims, or the 401/503 answer.
pub(crate) async fn authenticate<S: SharedState>(
    state: &AppState<S>,
    parts: &http::request::Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
) -> Result<onetrip_protocol::Claims, Response<Body>> {
    authenticate_with(state, parts, body, conn, now, false).await
}

/// [`authenticate`] for writes: the proof of possession is also accepted only once
/// (PROTOCOL.md §8), so a captured request cannot be sent again within its window,
/// nor after a restart. Bearer calls carry no proof: TLS is what keeps them from
/// being captured and replayed.
pub(crate) async fn authenticate_once<S: SharedState>(
    state: &AppState<S>,
    parts: &http::request::Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
) -> Result<onetrip_protocol::Claims, Response<Body>> {
    authenticate_with(state, parts, body, conn, now, true).await
}

async fn authenticate_with<S: SharedState>(
    state: &AppState<S>,
    parts: &http::request::Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
    once: bool,
) -> Result<onetrip_protocol::Claims, Response<Body>> {
    let checked = match crate::otp_api::presented_token(parts, conn.tls) {
        Ok((token, proof)) => {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let pop = proof.as_ref().map(|p| (p, parts.method.as_str(), path, body));
            match state.check_own_token(&token, pop, conn.tls, now).await.map_err(crate::otp_api::token_error) {
                // Only a proof that verified is recorded: nobody else can fill the cache.
                Ok(claims) => match proof.filter(|_| once) {
                    Some(proof) => proof_used_once(state, &proof, token.binding(), now).await.map(|()| claims),
                    None => Ok(claims),
                },
                Err(resp) => Err(resp),
            }
        }
        Err((code, detail)) => Err(unauthorized(code, detail)),
    };
    // Counted per address: the guard in front of every token route refuses an
    // address that keeps failing before its next token is even parsed.
    if checked.as_ref().is_err_and(|resp| resp.status() == StatusCode::UNAUTHORIZED) {
        state.otp_ip_limiter.record_failure(conn.peer, state.settings.otp.api_rate_per_ip, now);
    }
    checked
}

/// 401 `pop_replayed` for a proof seen before (or older than the server's start),
/// 503 when the replay cache or the store cannot record it.
async fn proof_used_once<S: SharedState>(
    state: &AppState<S>,
    proof: &PopProof,
    binding: &[u8; onetrip_protocol::pop::TOKEN_BINDING_LEN],
    now: u64,
) -> Result<(), Response<Body>> {
    use crate::replay_guard::ProofUse;
    match crate::replay_guard::accept_proof(state, proof, binding, now).await {
        Ok(ProofUse::Fresh) => Ok(()),
        Ok(ProofUse::Replayed) => {
            Err(unauthorized("pop_replayed", "this proof of possession was used already: sign each request anew"))
        }
        Ok(ProofUse::BeforeStart) => Err(unauthorized(
            "pop_replayed",
            "this proof of possession is stamped before the server started: sign the request anew",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot record a proof of possession; refusing the request");
            Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "cannot record the request's proof of possession; retry later",
            ))
        }
    }
}

async fn whoami<S: SharedState>(state: &AppState<S>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let pop_verified = parts.headers.contains_key(POP_HEADER);
    match authenticate(state, &parts, b"", conn, unix_now()).await {
        Ok(c) => json(StatusCode::OK, &claims_json(&c, pop_verified)),
        Err(resp) => resp,
    }
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
