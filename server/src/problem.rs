//! `application/problem+json` (RFC 9457) errors with stable machine-readable codes.
//! The `code` values are part of the API: add new ones, never rename.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Response body type of every endpoint.
pub type Body = Full<Bytes>;

/// A problem response.
pub fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": format!("https://onetrip.dev/problems/{code}"),
        "title": title,
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

/// 429 with `Retry-After`.
pub fn rate_limited(retry_after: u64, detail: &str) -> Response<Body> {
    let mut resp = problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests", detail);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A binary response.
pub fn octets(bytes: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
