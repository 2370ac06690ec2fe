//! Authentication of the token routes: the token presented on a request (with its
//! proof of possession, or bearer on TLS), checked for the server's own audience;
//! writes accept a proof once; resource servers also need the `introspect` scope.

use http::request::Parts;
use http::{header, Response, StatusCode};
use onetrip_protocol::pop::POP_HEADER;
use onetrip_protocol::{PopProof, Token};

use super::request::ConnInfo;
use crate::problem::{problem, Body};
use crate::state::{AppState, TokenCheckError};

/// 401 with `WWW-Authenticate: Onetrip`.
pub(crate) fn unauthorized(code: &'static str, detail: &str) -> Response<Body> {
    let mut r = problem(StatusCode::UNAUTHORIZED, code, "Unauthorized", detail);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Onetrip"));
    r
}

/// Checks the token presented on a request (PoP over method, path and `body`, or
/// bearer on TLS) and returns its claims, or the 401/503 answer.
pub(crate) async fn authenticate(
    state: &AppState,
    parts: &Parts,
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
pub(crate) async fn authenticate_once(
    state: &AppState,
    parts: &Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
) -> Result<onetrip_protocol::Claims, Response<Body>> {
    authenticate_with(state, parts, body, conn, now, true).await
}

async fn authenticate_with(
    state: &AppState,
    parts: &Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
    once: bool,
) -> Result<onetrip_protocol::Claims, Response<Body>> {
    let checked = match presented_token(parts, conn.tls) {
        Ok((token, proof)) => {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let pop = proof.as_ref().map(|p| (p, parts.method.as_str(), path, body));
            match state.check_own_token(&token, pop, conn.tls, now).await.map_err(token_error) {
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
async fn proof_used_once(
    state: &AppState,
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

/// [`authenticate`], then the `introspect` scope that `/v1/introspect` and
/// `/v1/revocations` need (403 `scope_required` without it).
pub(crate) async fn authenticate_resource_server(
    state: &AppState,
    parts: &Parts,
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

/// Token parsing shared with `/v1/whoami`: `Authorization: Onetrip <token>` plus
/// `Onetrip-PoP`, or `Bearer` on TLS.
pub(crate) fn presented_token(
    parts: &Parts,
    tls: bool,
) -> Result<(Token, Option<PopProof>), (&'static str, &'static str)> {
    let Some(auth) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(("token_missing", "send Authorization: Onetrip <token> with an Onetrip-PoP header"));
    };
    let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    if !bearer && !scheme.eq_ignore_ascii_case("onetrip") {
        return Err(("token_invalid", "unsupported authorization scheme; use Onetrip"));
    }
    if bearer && !tls {
        return Err(("bearer_requires_tls", "bearer tokens are refused on plain HTTP: use Onetrip with Onetrip-PoP"));
    }
    let Ok(token) = Token::from_base64(value.trim()) else {
        return Err(("token_invalid", "the token is not valid"));
    };
    let proof = match parts.headers.get(POP_HEADER).map(|v| v.to_str().map(PopProof::from_header)) {
        Some(Ok(Ok(p))) => Some(p),
        Some(_) => return Err(("pop_invalid", "the Onetrip-PoP header is malformed")),
        None if bearer => None,
        None => return Err(("pop_required", "send the Onetrip-PoP header signed with the session key")),
    };
    Ok((token, proof))
}

/// Maps a token check failure to 401/503.
pub(crate) fn token_error(e: TokenCheckError) -> Response<Body> {
    match e {
        TokenCheckError::Shared(e) => crate::problem::unavailable(&e),
        e => unauthorized("token_invalid", &e.to_string()),
    }
}
