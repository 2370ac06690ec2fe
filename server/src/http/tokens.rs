//! The token endpoints for resource servers and clients: `POST /v1/introspect`,
//! `GET /v1/revocations` and `GET /v1/whoami`.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{PopProof, Token};
use serde::Deserialize;

use super::request::{read_body, ConnInfo, MAX_JSON_BODY};
use super::token_auth::{authenticate, authenticate_resource_server};
use crate::problem::{json, problem, Body};
use crate::state::{AppState, TokenCheckError};

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
pub(super) async fn introspect(state: &AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match read_body(state, Request::from_parts(parts.clone(), body), MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let now = state.now();
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
pub(super) async fn revocations(state: &AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let now = state.now();
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

pub(super) async fn whoami(state: &AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let pop_verified = parts.headers.contains_key(POP_HEADER);
    match authenticate(state, &parts, b"", conn, state.now()).await {
        Ok(c) => json(StatusCode::OK, &claims_json(&c, pop_verified)),
        Err(resp) => resp,
    }
}
