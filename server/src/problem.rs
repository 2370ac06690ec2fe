//! `application/problem+json` (RFC 9457) errors with stable machine-readable codes.
//! The `code` values are part of the API: add new ones, never rename.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Response body type of every endpoint.
pub type Body = Full<Bytes>;

/// The stable `code` of a problem response, kept in its extensions so the router can
/// count every refusal by reason without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemCode(pub &'static str);

/// A problem response.
pub fn problem(status: StatusCode, code: &'static str, title: &str, detail: &str) -> Response<Body> {
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
    resp.extensions_mut().insert(ProblemCode(code));
    resp
}

/// 429 with `Retry-After`.
pub fn rate_limited(retry_after: u64, detail: &str) -> Response<Body> {
    let mut resp = problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests", detail);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// 503 for a failing store or shared state. The cause (file paths, engine messages)
/// goes to the log only: a client learns that it should retry, nothing about the host.
pub fn unavailable(cause: &dyn std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %cause, "storage unavailable");
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
        "the server cannot reach its storage right now: retry shortly (the server log has the cause)",
    );
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    r
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

/// 400 `bad_json` for a body that does not parse into the endpoint's request. serde's
/// messages quote offending values (`invalid type: integer `123456``), which may be a
/// code or a token: those are replaced by what was expected and where.
pub fn bad_json(e: &serde_json::Error) -> Response<Body> {
    let message = e.to_string();
    let detail = if ["invalid type", "invalid value", "invalid length"].iter().any(|p| message.starts_with(p)) {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("a field has the wrong type or value: expected {expected}"),
            None => format!("a field has the wrong type or value at line {}, column {}", e.line(), e.column()),
        }
    } else {
        message
    };
    problem(StatusCode::BAD_REQUEST, "bad_json", "Invalid JSON body", &detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(body: &str) -> String {
        let e = serde_json::from_str::<std::collections::BTreeMap<String, String>>(body).unwrap_err();
        let resp = bad_json(&e);
        let v: serde_json::Value = serde_json::from_slice(&resp.into_body().into_inner().unwrap()).unwrap();
        v["detail"].as_str().unwrap().to_owned()
    }

    #[test]
    fn json_errors_never_quote_the_offending_value() {
        let d = detail(r#"{"code":918273}"#);
        assert!(!d.contains("918273"), "{d}");
        assert!(d.contains("expected a string"), "{d}");
        let d = detail(r#"{"code":"x""#);
        assert!(d.contains("line 1"), "syntax errors keep their position: {d}");
    }

    #[test]
    fn storage_failures_never_show_the_host_to_clients() {
        let cause = crate::otp::service::OtpError::Unavailable(
            "cannot write the store /srv/secret-tenant/onetrip.redb: Previous I/O error occurred".into(),
        );
        for resp in [crate::otp::api::error_response(&cause), unavailable(&"/srv/secret-tenant/onetrip.redb")] {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
            let body = String::from_utf8(resp.into_body().into_inner().unwrap().to_vec()).unwrap();
            assert!(!body.contains("/srv") && !body.contains("redb") && !body.contains("I/O"), "{body}");
            assert!(body.contains("\"code\":\"unavailable\""), "{body}");
        }
    }
}
