//! What every endpoint does with a request before its own work: the connection's
//! facts, bounded body reads, and the per-address guard of the token routes.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::problem::{problem, rate_limited, Body};
use crate::shared::RateDecision;
use crate::state::AppState;

/// Largest JSON body accepted.
pub(crate) const MAX_JSON_BODY: usize = 16 * 1024;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Client address.
    pub peer: IpAddr,
    /// The connection is TLS (bearer tokens allowed).
    pub tls: bool,
}

/// The token-checking routes' per-address guard, before their body or token is read:
/// an address over its budget of failed authentications ([`super::token_auth::authenticate`]
/// counts them) gets no AEAD open, store or shared-state work.
pub(crate) fn failed_auth_guard(state: &AppState, conn: ConnInfo) -> Option<Response<Body>> {
    match state.otp_ip_limiter.check(conn.peer, state.settings.otp.api_rate_per_ip, state.now()) {
        RateDecision::Allowed => None,
        RateDecision::Limited { retry_after } => {
            Some(rate_limited(retry_after, "too many failed authentications from this address"))
        }
    }
}

/// Reads a body of at most `max` bytes within the configured time.
pub(crate) async fn read_body(state: &AppState, req: Request<Incoming>, max: usize) -> Result<Bytes, Response<Body>> {
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
