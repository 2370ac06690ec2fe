//! The webhook channel: signed JSON posted through one pooled HTTP/1.1 client (http or
//! https via rustls), and the signature scheme receivers check (see the parent
//! module's documentation).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{
    describe, is_loopback, unix_now, Budget, DeliveryError, DeliveryReport, Failure, OtpMessage, Purpose, RetryPolicy,
    StillWanted, WebhookSettings,
};

/// Longest webhook destination (`to`), in bytes.
pub const MAX_WEBHOOK_TO_LEN: usize = 256;
/// Header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "onetrip-timestamp";
/// Header carrying the signature(s).
pub const SIGNATURE_HEADER: &str = "onetrip-signature";
/// Shortest accepted secret: HMAC keys below 128 bits invite guessing.
const MIN_SECRET_LEN: usize = 16;
/// Most of a receiver's answer that is read (and discarded) so the connection can be reused.
const MAX_RESPONSE_BODY: usize = 16 * 1024;

/// The receiver and the client that reaches it.
pub(super) struct Webhook {
    pub(super) url: Uri,
    secret: Zeroizing<Vec<u8>>,
    /// How long a delivery keeps retrying (see [`Budget::window`]).
    retry_window: Duration,
    client: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Webhook {
    /// Checks the settings and builds the client (no connection is made yet).
    pub(super) fn new(w: &WebhookSettings, timeout: Duration, retry_window: Duration) -> Result<Self, DeliveryError> {
        let config = DeliveryError::Config;
        let url: Uri = w.url.parse().map_err(|e| config(format!("webhook_url `{}` is not a URL: {e}", w.url)))?;
        match (url.scheme_str(), url.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => {
                if url.scheme_str() == Some("http") && !is_loopback(host) {
                    tracing::warn!(url = %url, "webhook_url is plain http: codes cross the network unencrypted");
                }
            }
            _ => return Err(config(format!("webhook_url `{}` must be an http:// or https:// URL with a host", w.url))),
        }
        if w.secret.len() < MIN_SECRET_LEN {
            return Err(config(format!("webhook_secret must be at least {MIN_SECRET_LEN} characters")));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self { url, secret: Zeroizing::new(w.secret.as_bytes().to_vec()), retry_window, client })
    }

    /// Posts `msg`, retrying connection failures, timeouts, 408, 429 (after its
    /// `Retry-After`) and 5xx until the retry window or the code's life ends; any other
    /// non-2xx answer ends it at once. Each attempt is signed afresh.
    pub(super) async fn send(
        &self,
        retry: &RetryPolicy,
        msg: &OtpMessage<'_>,
        still_wanted: StillWanted<'_>,
    ) -> Result<DeliveryReport, DeliveryError> {
        let body = payload(msg)?;
        let body: &[u8] = &body;
        let budget = Budget::window(self.retry_window, msg.ttl_secs);
        let outcome = retry
            .run("webhook", msg, budget, Some(still_wanted), |timeout| async move {
                let timestamp = unix_now().to_string();
                let request = Request::post(self.url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::USER_AGENT, concat!("onetrip/", env!("CARGO_PKG_VERSION")))
                    .header(TIMESTAMP_HEADER, &timestamp)
                    .header(SIGNATURE_HEADER, webhook_signature(&self.secret, &timestamp, body))
                    .body(Full::new(Bytes::copy_from_slice(body)))
                    .map_err(|e| Failure::permanent(None, format!("cannot build the request: {e}")))?;
                let exchange = async {
                    let response = self.client.request(request).await.map_err(|e| describe(&e))?;
                    let status = response.status();
                    let retry_after = response.headers().get(http::header::RETRY_AFTER).and_then(parse_retry_after);
                    // Drained so the pooled connection can be reused; never logged (a
                    // receiver might echo the code).
                    let _ = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await;
                    Ok::<_, String>((status, retry_after))
                };
                match tokio::time::timeout(timeout, exchange).await {
                    Err(_) => Err(Failure::transient(None, format!("no answer from the receiver within {timeout:?}"))),
                    Ok(Err(e)) => Err(Failure::transient(None, format!("{e}; check webhook_url"))),
                    Ok(Ok((status, _))) if status.is_success() => Ok(()),
                    Ok(Ok((status, retry_after))) => {
                        let message = format!("the receiver answered HTTP {}", status.as_u16());
                        if retryable(status) {
                            Err(Failure { retry_after, ..Failure::transient(Some(status.as_u16()), message) })
                        } else {
                            Err(Failure::permanent(Some(status.as_u16()), message))
                        }
                    }
                }
            })
            .await;
        outcome.map_err(|f| {
            if f.superseded {
                DeliveryError::Superseded(f.message)
            } else {
                DeliveryError::Webhook { status: f.status, message: f.message }
            }
        })
    }
}

/// 429 and 5xx may pass on a later try (so may 408, a receiver-side timeout); any other
/// answer means the receiver rejects this request as it is.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); `None` when
/// unreadable, and then our own backoff applies.
fn parse_retry_after(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// A webhook destination: 1 to 256 bytes, no control characters. Its meaning (phone
/// number, device id) is the receiver's business.
pub(super) fn check_to(to: &str) -> Result<(), DeliveryError> {
    let reason = if to.is_empty() {
        "it is empty"
    } else if to.len() > MAX_WEBHOOK_TO_LEN {
        "it is longer than 256 bytes"
    } else if to.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(DeliveryError::InvalidDestination { channel: "webhook", reason: reason.into() })
}

#[derive(Serialize)]
struct Payload<'a> {
    verification_id: &'a str,
    to: &'a str,
    code: &'a str,
    expires_at: u64,
    ttl_secs: u64,
    purpose: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locale: Option<&'a str>,
}

fn payload(msg: &OtpMessage<'_>) -> Result<Zeroizing<Vec<u8>>, DeliveryError> {
    let (purpose, key_name) = match msg.purpose {
        Purpose::StepUp { key_name } => ("step_up", Some(key_name)),
        Purpose::Verification => ("verification", None),
    };
    let payload = Payload {
        verification_id: msg.verification_id,
        to: msg.to,
        code: msg.code,
        expires_at: msg.expires_at,
        ttl_secs: msg.ttl_secs,
        purpose,
        key_name,
        locale: msg.locale,
    };
    serde_json::to_vec(&payload).map(Zeroizing::new).map_err(|e| DeliveryError::Template(e.to_string()))
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> [u8; 32] {
    // Never fails: HMAC takes keys of any length.
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `Onetrip-Signature` value for `body` signed at `timestamp`: `v1=<hex>`.
pub fn webhook_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!("v1={}", hex::encode(mac(secret, timestamp, body)))
}

/// Checks a received webhook: `timestamp` (the `Onetrip-Timestamp` header) within
/// `tolerance_secs` of `now`, and one of the comma-separated `v1=` entries of `header`
/// (`Onetrip-Signature`; several during a secret rotation) equal, in constant time, to
/// HMAC-SHA256(secret, timestamp "." body).
pub fn verify_webhook_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    header: &str,
    now: u64,
    tolerance_secs: u64,
) -> bool {
    let Ok(ts) = timestamp.parse::<u64>() else { return false };
    if ts.abs_diff(now) > tolerance_secs {
        return false;
    }
    let expected = mac(secret, timestamp, body);
    let mut ok = subtle::Choice::from(0);
    for entry in header.split(',').map(str::trim) {
        let Some(hex_mac) = entry.strip_prefix("v1=") else { continue };
        let mut given = [0u8; 32];
        if hex::decode_to_slice(hex_mac, &mut given).is_ok() {
            ok |= given.ct_eq(&expected);
        }
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_tampering_staleness_and_junk() {
        let key = b"secret-secret-secret";
        let sig = webhook_signature(key, "1000", b"{}");
        assert!(verify_webhook_signature(key, "1000", b"{}", &sig, 1100, 300));
        assert!(verify_webhook_signature(key, "1000", b"{}", &format!("v1=00, {sig}"), 1000, 0), "rotation");
        assert!(!verify_webhook_signature(key, "1000", b"{ }", &sig, 1000, 300));
        assert!(!verify_webhook_signature(b"other-secret-secret!", "1000", b"{}", &sig, 1000, 300));
        assert!(!verify_webhook_signature(key, "1000", b"{}", &sig, 1301, 300));
        assert!(!verify_webhook_signature(key, "x", b"{}", &sig, 1000, 300));
        assert!(!verify_webhook_signature(key, "1000", b"{}", "v1=zz", 1000, 300));
        assert!(!verify_webhook_signature(key, "1000", b"{}", "", 1000, 300));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let parse = |s: &str| parse_retry_after(&http::HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a past date: now");
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse(&later).unwrap();
        assert!((Duration::from_secs(118)..=Duration::from_secs(120)).contains(&d), "{d:?}");
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Independent computation of the documented scheme.
        let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"k").unwrap();
        m.update(b"1700000000.{\"a\":1}");
        let want = format!("v1={}", hex::encode(m.finalize().into_bytes()));
        assert_eq!(webhook_signature(b"k", "1700000000", b"{\"a\":1}"), want);
    }
}
