//! The standalone OTP API (`/v1/otp/*`): JSON over HTTP for services that verify
//! their own users with onetrip. Every call needs a token with the `otp` scope, and a
//! verification is only visible to the API key that created it.

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use onetrip_protocol::{Channel, Claims};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::http::{read_body, ConnInfo, MAX_JSON_BODY};
use crate::otp::service::{self, NewVerification, OtpError};
use crate::otp::totp::{TotpEnrolmentAnswer, TotpParams};
use crate::otp::{CheckOutcome, Policy, Purpose, Status, Verification};
use crate::problem::{bad_json, json, problem, Body};
use crate::shared::RateDecision;
use crate::state::AppState;

/// Scope a token needs for `/v1/otp/*`.
pub const OTP_SCOPE: &str = "otp";
/// Path prefix of the verification resources.
pub const VERIFICATIONS: &str = "/v1/otp/verifications";
/// TOTP enrolment endpoint.
pub const TOTP_ENROLL: &str = "/v1/otp/totp";

/// The routes this module serves, as (method, OpenAPI path template); the OpenAPI
/// test compares this list with `openapi.yaml`.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/otp/verifications"),
    ("get", "/v1/otp/verifications/{id}"),
    ("post", "/v1/otp/verifications/{id}/check"),
    ("post", "/v1/otp/verifications/{id}/resend"),
    ("post", "/v1/otp/verifications/{id}/cancel"),
    ("post", "/v1/otp/totp"),
];

/// The OpenAPI document, committed as YAML and served as JSON.
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    to: String,
    channel: String,
    locale: Option<String>,
    code_length: Option<usize>,
    ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    code: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    account: String,
    /// Replace an existing enrolment's secret (audited as `otp.totp_replace`).
    #[serde(default)]
    replace: bool,
}

/// What the path names.
enum Target {
    Collection,
    Item([u8; 16], Option<&'static str>),
    Totp,
}

fn parse_target(path: &str) -> Option<Result<Target, ()>> {
    if path == TOTP_ENROLL {
        return Some(Ok(Target::Totp));
    }
    let rest = path.strip_prefix(VERIFICATIONS)?;
    if rest.is_empty() {
        return Some(Ok(Target::Collection));
    }
    let rest = rest.strip_prefix('/')?;
    let (id, action) = match rest.split_once('/') {
        Some((id, "check")) => (id, Some("check")),
        Some((id, "resend")) => (id, Some("resend")),
        Some((id, "cancel")) => (id, Some("cancel")),
        Some(_) => return Some(Err(())),
        None => (rest, None),
    };
    let mut raw = [0u8; 16];
    match hex::decode_to_slice(id, &mut raw) {
        Ok(()) => Some(Ok(Target::Item(raw, action))),
        Err(_) => Some(Err(())),
    }
}

/// True when `path` belongs to this module.
pub fn handles(path: &str) -> bool {
    path == TOTP_ENROLL || path == VERIFICATIONS || path.starts_with("/v1/otp/")
}

/// Serves one `/v1/otp/*` request.
pub async fn route(state: &AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let now = state.now();
    // Before the token is even parsed: an address that keeps failing authentication
    // gets no more token work. Authenticated calls are limited per key below instead,
    // so one backend address can carry a whole tenant.
    if let Some(limited) = crate::http::failed_auth_guard(state, conn) {
        return limited;
    }
    let target = match parse_target(req.uri().path()) {
        Some(Ok(t)) => t,
        Some(Err(())) => {
            return problem(
                StatusCode::NOT_FOUND,
                "verification_not_found",
                "Not found",
                "verification ids are 32 hex characters; actions are check, resend and cancel",
            )
        }
        None => return problem(StatusCode::NOT_FOUND, "not_found", "Not found", "no such endpoint"),
    };
    let allowed = matches!(
        (&target, req.method()),
        (Target::Collection | Target::Totp | Target::Item(_, Some(_)), &Method::POST)
            | (Target::Item(_, None), &Method::GET)
    );
    if !allowed {
        return problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "see GET /v1/openapi.json",
        );
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(state, Request::from_parts(parts.clone(), body), MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    // Every OTP route that changes state is a POST; its proof is accepted once, so a
    // captured create, check or resend cannot be sent again (and a replayed check
    // costs no attempt: it never reaches the store).
    let once = parts.method == Method::POST;
    let claims = match authorize(state, &parts, &body, conn, now, once).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let owner = *claims.api_key_id.as_bytes();
    match crate::limits::charge_api_call(&*state.shared, &state.settings.otp, &owner, now).await {
        Ok(RateDecision::Allowed) => {}
        Ok(RateDecision::Limited { retry_after }) => return key_rate_limited(retry_after),
        Err(e) => return error_response(&OtpError::Unavailable(e.to_string())),
    }
    let owner_name = state.keys.get(&claims.api_key_id).map(|k| k.record.name.clone()).unwrap_or_default();
    let result = match target {
        Target::Collection => create(state, owner, owner_name, &body, now).await,
        Target::Totp => enroll(state, owner, &body, conn, now).await,
        Target::Item(id, None) => {
            service::get(state, owner, Purpose::Api, id, now).await.map(|v| json(StatusCode::OK, &view(&v, now)))
        }
        Target::Item(id, Some("check")) => check(state, owner, id, &body, now).await,
        Target::Item(id, Some("resend")) => {
            service::resend(state, owner, owner_name, id, now).await.map(|v| json(StatusCode::OK, &view(&v, now)))
        }
        Target::Item(id, Some(_)) => {
            service::cancel(state, owner, id, now).await.map(|v| json(StatusCode::OK, &view(&v, now)))
        }
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// Verifies the presented token (PoP over the method, path and body, accepted `once`
/// for writes; bearer only on TLS) and that it carries the `otp` scope.
async fn authorize(
    state: &AppState,
    parts: &Parts,
    body: &[u8],
    conn: ConnInfo,
    now: u64,
    once: bool,
) -> Result<Claims, Response<Body>> {
    let claims = if once {
        crate::http::authenticate_once(state, parts, body, conn, now).await?
    } else {
        crate::http::authenticate(state, parts, body, conn, now).await?
    };
    if !claims.has_scope(OTP_SCOPE) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "scope_required",
            "Scope required",
            "the OTP API needs a token with the `otp` scope: create the key with --scope otp and request it",
        ));
    }
    Ok(claims)
}

async fn create(
    state: &AppState,
    owner: [u8; 16],
    owner_name: String,
    body: &[u8],
    now: u64,
) -> Result<Response<Body>, OtpError> {
    let b: CreateBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Ok(bad_json(&e)),
    };
    let channel = service::parse_channel(&b.channel).ok_or_else(|| {
        OtpError::InvalidParameter(format!("unknown channel {:?}: use email, webhook, totp or console", b.channel))
    })?;
    if let Some(locale) = &b.locale {
        if locale.is_empty() || locale.len() > 35 || !locale.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            return Err(OtpError::InvalidParameter("locale must be a BCP 47 tag such as en or pt-BR".into()));
        }
    }
    if channel == Channel::Totp && b.code_length.is_some_and(|l| l != 6) {
        return Err(OtpError::InvalidParameter("TOTP codes have 6 digits".into()));
    }
    let d = Policy::default();
    let policy =
        Policy { code_length: b.code_length.unwrap_or(d.code_length), ttl_secs: b.ttl.unwrap_or(d.ttl_secs), ..d };
    let new = NewVerification { owner, owner_name, purpose: Purpose::Api, channel, to: b.to, policy, locale: b.locale };
    let v = service::create(state, new, now).await?;
    Ok(json(StatusCode::CREATED, &view(&v, now)))
}

async fn check(
    state: &AppState,
    owner: [u8; 16],
    id: [u8; 16],
    body: &[u8],
    now: u64,
) -> Result<Response<Body>, OtpError> {
    let code = match serde_json::from_slice::<CheckBody>(body) {
        // Wraps the parsed string's own buffer, so it is wiped after the check.
        Ok(b) => Zeroizing::new(b.code),
        Err(e) => return Ok(bad_json(&e)),
    };
    if code.is_empty() || code.len() > 16 {
        return Err(OtpError::InvalidParameter("code must be 1 to 16 characters".into()));
    }
    let (outcome, v) = service::check(state, owner, Purpose::Api, id, code, now).await?;
    if outcome == CheckOutcome::NotPending(Status::Approved) {
        // Codes are single use: a second check of an approved verification must not
        // read as another success.
        return Err(OtpError::NotPending(Status::Approved));
    }
    let mut body = view(&v, now);
    body["valid"] = serde_json::Value::Bool(outcome == CheckOutcome::Approved);
    Ok(json(StatusCode::OK, &body))
}

async fn enroll(
    state: &AppState,
    owner: [u8; 16],
    body: &[u8],
    conn: ConnInfo,
    now: u64,
) -> Result<Response<Body>, OtpError> {
    if !conn.tls {
        return Ok(problem(
            StatusCode::FORBIDDEN,
            "tls_required",
            "TLS required",
            "a TOTP secret is only handed out over HTTPS: start the server with --tls-cert and --tls-key",
        ));
    }
    let b: EnrollBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Ok(bad_json(&e)),
    };
    validate_account(&b.account)?;
    let secret = service::enroll_totp(&*state.store, owner, &b.account, b.replace, now).await?;
    let params = TotpParams::default();
    let answer = TotpEnrolled {
        account: b.account.clone(),
        enrolment: TotpEnrolmentAnswer::new(&secret, &params, &state.settings.otp.totp_issuer, &b.account),
    };
    let body = serde_json::to_value(&answer).map_err(|e| OtpError::Unavailable(e.to_string()))?;
    Ok(json(StatusCode::CREATED, &body))
}

/// The answer to `POST /v1/otp/totp/enroll`: the account and its enrolment.
#[derive(Debug, Serialize)]
struct TotpEnrolled {
    account: String,
    #[serde(flatten)]
    enrolment: TotpEnrolmentAnswer,
}

/// TOTP account names: printable, 1 to 128 bytes, not starting with `@` (reserved
/// for the API key's own step-up enrolment).
pub fn validate_account(account: &str) -> Result<(), OtpError> {
    if account.is_empty() || account.len() > 128 || account.starts_with('@') || account.chars().any(char::is_control) {
        return Err(OtpError::InvalidParameter(
            "account must be 1 to 128 printable characters and not start with @".into(),
        ));
    }
    Ok(())
}

/// The JSON view of a verification (destination masked, never the code).
pub fn view(v: &Verification, now: u64) -> serde_json::Value {
    let mut v = v.clone();
    v.refresh(now);
    let pending = v.status == Status::Pending;
    serde_json::json!({
        "id": hex::encode(v.id),
        "status": v.status.as_str(),
        "channel": v.channel,
        "to": crate::otp::mask_destination(&v.to),
        "created_at": v.created_at,
        "expires_at": v.expires_at,
        "attempts_left": v.policy.max_attempts.saturating_sub(v.attempts),
        "sends_left": (v.policy.max_resends + 1).saturating_sub(v.sends),
        "resend_available_at": if pending && v.channel != Channel::Totp.as_str() { v.resend_available_at() } else { None },
    })
}

/// problem+json for an [`OtpError`], with `Retry-After` on 429.
pub fn error_response(e: &OtpError) -> Response<Body> {
    let (status, title) = match e {
        OtpError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "Invalid parameter"),
        OtpError::ChannelUnavailable(_) => (StatusCode::BAD_REQUEST, "Channel unavailable"),
        OtpError::SendLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "Send limit reached"),
        OtpError::NotFound => (StatusCode::NOT_FOUND, "Verification not found"),
        OtpError::NotPending(_) => (StatusCode::CONFLICT, "Verification not pending"),
        OtpError::ResendTooSoon { .. } => (StatusCode::TOO_MANY_REQUESTS, "Resend too soon"),
        OtpError::ResendsExhausted => (StatusCode::TOO_MANY_REQUESTS, "Max sends reached"),
        OtpError::NothingToSend => (StatusCode::CONFLICT, "Nothing to send"),
        OtpError::TotpNotEnrolled(_) => (StatusCode::BAD_REQUEST, "TOTP not enrolled"),
        OtpError::TotpAlreadyEnrolled(_) => (StatusCode::CONFLICT, "TOTP already enrolled"),
        OtpError::Locked { .. } => (StatusCode::TOO_MANY_REQUESTS, "Second factor locked"),
        OtpError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
    };
    if matches!(e, OtpError::Unavailable(_)) {
        return crate::problem::unavailable(e);
    }
    let mut resp = problem(status, e.code(), title, &e.to_string());
    let retry_after = match e {
        OtpError::SendLimited { retry_after, .. }
        | OtpError::ResendTooSoon { retry_after }
        | OtpError::Locked { retry_after } => Some(*retry_after),
        _ => None,
    };
    if let Some(secs) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// 429 `key_rate_limited`: the calling key is over `otp.api_rate_per_key`.
fn key_rate_limited(retry_after: u64) -> Response<Body> {
    let mut resp = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "key_rate_limited",
        "Too many requests",
        "too many OTP API calls for this API key: slow down or raise otp.api_rate_per_key",
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// `GET /v1/openapi.json`: the committed `openapi.yaml`, converted to JSON at build time.
pub fn openapi_json() -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
