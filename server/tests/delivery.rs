//! Code delivery against real servers on loopback: an aiosmtpd SMTP server
//! (`support/smtp_sink.py`) and a hyper webhook receiver that checks signatures. Each
//! retry case checks the attempt count and that the run stays within its time bound.
//! Webhook retries run over a window; the cases here use a 20 ms backoff and a 1 s
//! window so that they finish fast.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use onetrip_protocol::Channel;
use onetrip_server::otp::delivery::{
    verify_webhook_signature, webhook_signature, Deliverer, DeliveryConfig, DeliveryError, OtpMessage, Purpose,
    SmtpSettings, SmtpTls, WebhookSettings,
};
use support::{code_in, SmtpSink};
use zeroize::Zeroizing;

const CODE: &str = "493817";
const SECRET: &str = "whsec-test-0123456789abcdef";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn message<'a>(to: &'a str, purpose: Purpose<'a>) -> OtpMessage<'a> {
    OtpMessage {
        verification_id: "5f0c1e2d3b4a59687766554433221100",
        to,
        code: CODE,
        expires_at: now() + 600,
        ttl_secs: 600,
        locale: Some("en"),
        purpose,
    }
}

/// The webhook retry window of [`fast`].
const WINDOW: Duration = Duration::from_secs(1);

/// Small backoff, window and timeout so failing cases finish quickly.
fn fast(config: DeliveryConfig) -> DeliveryConfig {
    DeliveryConfig {
        max_attempts: 3,
        webhook_retry_window: WINDOW,
        initial_backoff: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        ..config
    }
}

fn smtp_config(port: u16, tls: SmtpTls) -> DeliveryConfig {
    fast(DeliveryConfig {
        smtp: Some(SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            tls,
            username: None,
            password: None,
            from: "onetrip <no-reply@onetrip.test>".into(),
        }),
        ..DeliveryConfig::default()
    })
}

fn assert_no_code(e: &DeliveryError) {
    assert!(!e.to_string().contains(CODE), "the code leaked into an error: {e}");
    assert!(!format!("{e:?}").contains(CODE), "the code leaked into an error: {e:?}");
}

// ---------------------------------------------------------------------------------
// SMTP

#[tokio::test]
async fn email_reaches_a_real_smtp_server() {
    let Some(sink) = SmtpSink::start() else { return };
    let deliverer = Deliverer::new(smtp_config(sink.port, SmtpTls::None)).unwrap();
    deliverer.validate(Channel::Email, "alice@example.com").unwrap();
    let msg = message("alice@example.com", Purpose::StepUp { key_name: "ci-deploy" });
    let report = deliverer.deliver(Channel::Email, &msg).await.unwrap();
    assert_eq!(report.attempts, 1);

    let mail = sink.message(1);
    assert!(mail.contains("X-Sink-Rcpt-To: alice@example.com\r\n"), "{mail}");
    assert!(mail.contains("X-Sink-Mail-From: no-reply@onetrip.test\r\n"), "{mail}");
    assert!(mail.contains("\r\nTo: alice@example.com\r\n"), "{mail}");
    assert!(mail.contains("\r\nSubject: Your verification code\r\n"), "{mail}");
    assert_eq!(code_in(&mail), CODE);
    assert!(mail.contains("expires in 10 minutes"), "{mail}");
    let expiry = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(msg.expires_at));
    assert!(mail.contains(&expiry), "expiry time {expiry} missing: {mail}");
    assert!(mail.contains("\"ci-deploy\""), "key name missing: {mail}");
    let subject = mail.lines().find(|l| l.starts_with("Subject:")).unwrap();
    assert!(!subject.contains(CODE), "the code is in the subject");

    // A plain verification says nothing about API keys.
    deliverer.deliver(Channel::Email, &message("bob@example.com", Purpose::Verification)).await.unwrap();
    let mail = sink.message(2);
    assert!(mail.contains("X-Sink-Rcpt-To: bob@example.com\r\n"));
    assert_eq!(code_in(&mail), CODE);
    assert!(!mail.contains("API key"));
}

#[tokio::test]
async fn a_permanent_smtp_rejection_is_not_retried() {
    let Some(sink) = SmtpSink::start() else { return };
    let deliverer = Deliverer::new(smtp_config(sink.port, SmtpTls::None)).unwrap();
    let started = Instant::now();
    let err =
        deliverer.deliver(Channel::Email, &message("reject@example.com", Purpose::Verification)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Smtp(_)), "{err:?}");
    assert_eq!(err.code(), "delivery_failed");
    assert!(err.to_string().contains("550"), "{err}");
    assert!(err.to_string().contains("after 1 attempt"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_no_code(&err);
    assert_eq!(sink.stored(), 0);
}

#[tokio::test]
async fn a_transient_smtp_refusal_is_retried_then_reported() {
    let Some(sink) = SmtpSink::start() else { return };
    let deliverer = Deliverer::new(smtp_config(sink.port, SmtpTls::None)).unwrap();
    let err = deliverer.deliver(Channel::Email, &message("busy@example.com", Purpose::Verification)).await.unwrap_err();
    assert!(err.to_string().contains("451"), "{err}");
    assert!(err.to_string().contains("gave up after 3 attempts"), "{err}");
    assert_no_code(&err);
}

#[tokio::test]
async fn required_starttls_never_falls_back_to_clear_text() {
    let Some(sink) = SmtpSink::start() else { return };
    let deliverer = Deliverer::new(smtp_config(sink.port, SmtpTls::StartTls)).unwrap();
    let err =
        deliverer.deliver(Channel::Email, &message("alice@example.com", Purpose::Verification)).await.unwrap_err();
    assert!(err.to_string().contains("STARTTLS"), "{err}");
    assert!(err.to_string().contains("after 1 attempt"), "{err}");
    assert_eq!(sink.stored(), 0, "the message went out in clear text");
}

#[tokio::test]
async fn a_closed_smtp_port_fails_after_max_attempts_in_bounded_time() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let deliverer = Deliverer::new(smtp_config(port, SmtpTls::None)).unwrap();
    let started = Instant::now();
    let err =
        deliverer.deliver(Channel::Email, &message("alice@example.com", Purpose::Verification)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Smtp(_)), "{err:?}");
    assert!(err.to_string().contains("gave up after 3 attempts"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_no_code(&err);
}

#[tokio::test]
async fn a_silent_smtp_server_times_out_each_attempt() {
    // Accepts connections and never greets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let deliverer = Deliverer::new(smtp_config(port, SmtpTls::None)).unwrap();
    let started = Instant::now();
    let err =
        deliverer.deliver(Channel::Email, &message("alice@example.com", Purpose::Verification)).await.unwrap_err();
    let elapsed = started.elapsed();
    holder.abort();
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    // 3 × 500 ms timeouts + backoff (≤ 20 + 40 ms), with slack for a loaded machine.
    assert!(elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(6), "{elapsed:?}");
}

#[tokio::test]
async fn destinations_and_channels_are_validated_up_front() {
    let deliverer = Deliverer::new(smtp_config(25, SmtpTls::None)).unwrap();
    for bad in [
        "",
        "alice",
        "alice@",
        "@example.com",
        "a b@example.com",
        "alice@example.com\r\nBcc: x@y.z",
        "<alice@example.com>",
    ] {
        let err = deliverer.validate(Channel::Email, bad).unwrap_err();
        assert!(matches!(err, DeliveryError::InvalidDestination { channel: "email", .. }), "{bad:?}: {err:?}");
        assert_eq!(err.code(), "invalid_destination");
    }
    deliverer.validate(Channel::Email, "alice+otp@example.com").unwrap();
    let err = deliverer.deliver(Channel::Email, &message("alice", Purpose::Verification)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_destination");

    // Webhook is not configured on this deliverer.
    let err = deliverer.validate(Channel::Webhook, "target-7").unwrap_err();
    assert_eq!(err.code(), "channel_not_configured");
    assert_eq!(err.to_string(), "webhook delivery is not configured: set webhook_url and webhook_secret");
    let none = Deliverer::new(DeliveryConfig::default()).unwrap();
    let err = none.validate(Channel::Email, "alice@example.com").unwrap_err();
    assert_eq!(err.to_string(), "email delivery is not configured: set smtp_host and smtp_from");
    let err = none.deliver(Channel::Email, &message("alice@example.com", Purpose::Verification)).await.unwrap_err();
    assert_eq!(err.code(), "channel_not_configured");

    // Nothing to send for TOTP; the console always works.
    assert_eq!(none.deliver(Channel::Totp, &message("totp", Purpose::Verification)).await.unwrap().attempts, 0);
    assert_eq!(none.deliver(Channel::Console, &message("console", Purpose::Verification)).await.unwrap().attempts, 1);
}

#[test]
fn unusable_settings_are_refused_at_start_up() {
    let bad = |c: DeliveryConfig| Deliverer::new(c).unwrap_err();
    let mut c = smtp_config(25, SmtpTls::None);
    c.smtp.as_mut().unwrap().from = "not an address".into();
    assert_eq!(bad(c).code(), "invalid_configuration");
    let mut c = smtp_config(25, SmtpTls::None);
    c.smtp.as_mut().unwrap().host = "mail.example.com".into();
    c.smtp.as_mut().unwrap().username = Some("u".into());
    c.smtp.as_mut().unwrap().password = Some(Zeroizing::new("hunter2".into()));
    let err = bad(c);
    assert!(err.to_string().contains("clear text"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    let mut c = smtp_config(25, SmtpTls::StartTls);
    c.smtp.as_mut().unwrap().username = Some("u".into());
    assert!(bad(c).to_string().contains("set together"));
    assert_eq!(bad(DeliveryConfig { max_attempts: 0, ..DeliveryConfig::default() }).code(), "invalid_configuration");
    for url in ["ftp://example.com/hook", "example.com/hook", "http://", "not a url"] {
        let c = DeliveryConfig { webhook: Some(webhook_settings(url)), ..DeliveryConfig::default() };
        assert_eq!(bad(c).code(), "invalid_configuration", "{url}");
    }
    let mut w = webhook_settings("https://hooks.example.com/otp");
    w.secret = Zeroizing::new("short".into());
    assert!(bad(DeliveryConfig { webhook: Some(w), ..DeliveryConfig::default() }).to_string().contains("16"));
    // TLS modes parse from configuration text.
    for (text, tls) in [("\"none\"", SmtpTls::None), ("\"starttls\"", SmtpTls::StartTls), ("\"tls\"", SmtpTls::Tls)] {
        assert_eq!(serde_json::from_str::<SmtpTls>(text).unwrap(), tls);
    }
}

// ---------------------------------------------------------------------------------
// Webhook

fn webhook_settings(url: &str) -> WebhookSettings {
    WebhookSettings { url: url.into(), secret: Zeroizing::new(SECRET.into()) }
}

/// One request as the receiver saw it.
#[derive(Clone)]
struct Received {
    timestamp: String,
    signature: String,
    content_type: String,
    body: Bytes,
    signature_ok: bool,
    /// When it arrived.
    at: Instant,
}

#[derive(Default)]
struct ReceiverState {
    /// (status, delay) per request, in order; afterwards `fallback`.
    script: VecDeque<(u16, Duration)>,
    fallback: u16,
    /// `Retry-After` sent with every non-2xx answer.
    retry_after: Option<&'static str>,
    received: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1:0 that verifies every signature it gets.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(script: &[(u16, Duration)], fallback: u16) -> Self {
        Self::start_with(script, fallback, None).await
    }

    async fn start_with(script: &[(u16, Duration)], fallback: u16, retry_after: Option<&'static str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.iter().copied().collect(),
            fallback,
            retry_after,
            received: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let header = |name: &str| {
                                req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
                            };
                            let (timestamp, signature) = (header("onetrip-timestamp"), header("onetrip-signature"));
                            let content_type = header("content-type");
                            let body = req.into_body().collect().await?.to_bytes();
                            let signature_ok =
                                verify_webhook_signature(SECRET.as_bytes(), &timestamp, &body, &signature, now(), 300);
                            let at = Instant::now();
                            let (status, delay, retry_after) = {
                                let mut s = state.lock().unwrap();
                                s.received.push(Received {
                                    timestamp,
                                    signature,
                                    content_type,
                                    body,
                                    signature_ok,
                                    at,
                                });
                                let (status, delay) = s.script.pop_front().unwrap_or((s.fallback, Duration::ZERO));
                                (status, delay, s.retry_after)
                            };
                            tokio::time::sleep(delay).await;
                            let status = if signature_ok { status } else { 401 };
                            let mut answer = http::Response::builder().status(status);
                            if let Some(value) = retry_after.filter(|_| status >= 300) {
                                answer = answer.header("retry-after", value);
                            }
                            Ok::<_, hyper::Error>(answer.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn deliverer(&self) -> Deliverer {
        let url = format!("http://{}/hooks/otp", self.addr);
        Deliverer::new(fast(DeliveryConfig { webhook: Some(webhook_settings(&url)), ..DeliveryConfig::default() }))
            .unwrap()
    }

    /// A deliverer with [`fast`] settings but the given retry window.
    fn deliverer_with(&self, window: Duration) -> Deliverer {
        let url = format!("http://{}/hooks/otp", self.addr);
        let config = fast(DeliveryConfig { webhook: Some(webhook_settings(&url)), ..DeliveryConfig::default() });
        Deliverer::new(DeliveryConfig { webhook_retry_window: window, ..config }).unwrap()
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
}

const SLOW: Duration = Duration::from_secs(3);

#[tokio::test]
async fn webhook_delivers_signed_json_on_the_first_try() {
    let receiver = Receiver::start(&[], 200).await;
    let deliverer = receiver.deliverer();
    deliverer.validate(Channel::Webhook, "target-7").unwrap();
    let msg = message("target-7", Purpose::StepUp { key_name: "ci-deploy" });
    assert_eq!(deliverer.deliver(Channel::Webhook, &msg).await.unwrap().attempts, 1);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_ok, "signature did not verify");
    assert_eq!(got[0].content_type, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(json["verification_id"], msg.verification_id);
    assert_eq!(json["to"], "target-7");
    assert_eq!(json["code"], CODE);
    assert_eq!(json["expires_at"], msg.expires_at);
    assert_eq!(json["purpose"], "step_up");
    assert_eq!(json["key_name"], "ci-deploy");

    deliverer.deliver(Channel::Webhook, &message("target-7", Purpose::Verification)).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&receiver.received()[1].body).unwrap();
    assert_eq!(json["purpose"], "verification");
    assert!(json.get("key_name").is_none());
}

#[tokio::test]
async fn webhook_retries_503_then_succeeds() {
    let receiver = Receiver::start(&[(503, Duration::ZERO), (503, Duration::ZERO)], 200).await;
    let report = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    assert_eq!(report.attempts, 3);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|r| r.signature_ok), "every retry is signed");
}

#[tokio::test]
async fn webhook_retries_429() {
    let receiver = Receiver::start(&[(429, Duration::ZERO)], 200).await;
    let report = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    assert_eq!(report.attempts, 2);
}

#[tokio::test]
async fn webhook_retries_503_until_the_receiver_is_back() {
    // Five failures: more than the old fixed three attempts, well inside the window.
    let script = [(503, Duration::ZERO); 5];
    let receiver = Receiver::start(&script, 200).await;
    let report = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    assert_eq!(report.attempts, 6);
    let got = receiver.received();
    assert_eq!(got.len(), 6);
    // Backoff doubles (20 ms base, drawn from the upper half): each gap at least the
    // lower bound of its step, so retries are spaced, not a burst.
    for (i, pair) in got.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(10 << i), "gap {i} is {gap:?}");
    }
    let json: serde_json::Value = serde_json::from_slice(&got[5].body).unwrap();
    assert_eq!(json["code"], CODE);
}

#[tokio::test]
async fn webhook_500_every_time_stops_at_the_retry_window() {
    let receiver = Receiver::start(&[], 500).await;
    let started = Instant::now();
    let err = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, DeliveryError::Webhook { status: Some(500), .. }), "{err:?}");
    assert!(err.to_string().contains("gave up after"), "{err}");
    assert_eq!(err.code(), "delivery_failed");
    // 20 ms doubling with jitter from the upper half: attempt 6 starts by 620 ms, an
    // 8th could not start before 1.27 s, past the 1 s window.
    let attempts = receiver.received().len();
    assert!((6..=7).contains(&attempts), "{attempts} attempts");
    assert!(err.to_string().contains(&format!("after {attempts} attempts")), "{err}");
    assert!(elapsed < WINDOW + Duration::from_millis(500), "{elapsed:?}");
    // Nothing more arrives once the delivery has given up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), attempts);
    assert_no_code(&err);
}

#[tokio::test]
async fn webhook_retries_never_outlive_the_code() {
    let receiver = Receiver::start(&[], 503).await;
    let deliverer = receiver.deliverer_with(Duration::from_secs(120));
    // Expires in 1 s, window 120 s: the code's life is the bound.
    let started = Instant::now();
    let msg = OtpMessage { ttl_secs: 1, ..message("t", Purpose::Verification) };
    let err = deliverer.deliver(Channel::Webhook, &msg).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    let last = receiver.received().last().unwrap().at;
    assert!(last - started < Duration::from_secs(1), "an attempt after expiry");
    assert!(matches!(err, DeliveryError::Webhook { .. }), "{err:?}");

    // Already expired: nothing is sent at all.
    let before = receiver.received().len();
    let msg = OtpMessage { ttl_secs: 0, ..message("t", Purpose::Verification) };
    let err = deliverer.deliver(Channel::Webhook, &msg).await.unwrap_err();
    assert!(err.to_string().contains("expired before it could be sent"), "{err}");
    assert_eq!(receiver.received().len(), before);
}

#[tokio::test]
async fn webhook_429_waits_for_retry_after_within_the_window() {
    let receiver = Receiver::start_with(&[(429, Duration::ZERO)], 200, Some("1")).await;
    let deliverer = receiver.deliverer_with(Duration::from_secs(5));
    let report = deliverer.deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    assert_eq!(report.attempts, 2);
    let got = receiver.received();
    assert!(got[1].at - got[0].at >= Duration::from_secs(1), "retried before Retry-After");

    // A Retry-After past the window ends the delivery at once instead of waiting.
    let receiver = Receiver::start_with(&[], 429, Some("3600")).await;
    let started = Instant::now();
    let err = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Webhook { status: Some(429), .. }), "{err:?}");
    assert_eq!(receiver.received().len(), 1);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn webhook_400_fails_at_once() {
    let receiver = Receiver::start(&[], 400).await;
    let err = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Webhook { status: Some(400), .. }), "{err:?}");
    assert!(err.to_string().contains("not retried after 1 attempt"), "{err}");
    assert_eq!(receiver.received().len(), 1);
    assert_no_code(&err);
}

#[tokio::test]
async fn webhook_4xx_is_permanent_except_408_and_429() {
    for status in [401, 403, 404, 410, 422] {
        let receiver = Receiver::start(&[], status).await;
        let err =
            receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap_err();
        assert!(matches!(err, DeliveryError::Webhook { status: Some(s), .. } if s == status), "{err:?}");
        assert_eq!(receiver.received().len(), 1, "HTTP {status} was retried");
    }
    let receiver = Receiver::start(&[(408, Duration::ZERO), (408, Duration::ZERO)], 200).await;
    let report = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    assert_eq!(report.attempts, 3);
}

#[tokio::test]
async fn tampered_webhooks_do_not_verify() {
    let receiver = Receiver::start(&[], 200).await;
    receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    let r = receiver.received().remove(0);
    let key = SECRET.as_bytes();
    let ts: u64 = r.timestamp.parse().unwrap();
    assert!(verify_webhook_signature(key, &r.timestamp, &r.body, &r.signature, ts, 300));
    assert_eq!(r.signature, webhook_signature(key, &r.timestamp, &r.body));

    let mut body = r.body.to_vec();
    let at = body.windows(CODE.len()).position(|w| w == CODE.as_bytes()).unwrap();
    body[at] = if body[at] == b'9' { b'8' } else { b'9' };
    assert!(!verify_webhook_signature(key, &r.timestamp, &body, &r.signature, ts, 300), "tampered body");
    let mut sig = r.signature.clone().into_bytes();
    let last = sig.len() - 1;
    sig[last] = if sig[last] == b'0' { b'1' } else { b'0' };
    let sig = String::from_utf8(sig).unwrap();
    assert!(!verify_webhook_signature(key, &r.timestamp, &r.body, &sig, ts, 300), "tampered signature");
    let other_ts = (ts + 1).to_string();
    assert!(!verify_webhook_signature(key, &other_ts, &r.body, &r.signature, ts, 300), "moved timestamp");
    assert!(!verify_webhook_signature(key, &r.timestamp, &r.body, &r.signature, ts + 301, 300), "stale");
    assert!(!verify_webhook_signature(b"another-secret-entirely", &r.timestamp, &r.body, &r.signature, ts, 300));
    assert!(!verify_webhook_signature(key, &r.timestamp, &r.body, &r.signature.replace("v1=", "v0="), ts, 300));
}

#[tokio::test]
async fn a_slow_webhook_receiver_is_timed_out_and_retried() {
    // Slow once, then fast: the second attempt succeeds.
    let receiver = Receiver::start(&[(200, SLOW)], 200).await;
    let started = Instant::now();
    let report = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap();
    assert_eq!(report.attempts, 2);
    assert!(started.elapsed() < SLOW, "{:?}", started.elapsed());

    // Always slow: every attempt times out (500 ms each), and the 1 s window ends the
    // delivery after the second.
    let receiver = Receiver::start(&[(200, SLOW); 5], 200).await;
    let started = Instant::now();
    let err = receiver.deliverer().deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, DeliveryError::Webhook { status: None, .. }), "{err:?}");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    assert!(elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn an_unreachable_webhook_fails_when_the_window_ends() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let deliverer =
        Deliverer::new(fast(DeliveryConfig { webhook: Some(webhook_settings(&url)), ..DeliveryConfig::default() }))
            .unwrap();
    let started = Instant::now();
    let err = deliverer.deliver(Channel::Webhook, &message("t", Purpose::Verification)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Webhook { status: None, .. }), "{err:?}");
    assert!(err.to_string().contains("gave up after"), "{err}");
    assert!(started.elapsed() < WINDOW + Duration::from_millis(500), "{:?}", started.elapsed());
    assert_no_code(&err);
}

#[tokio::test]
async fn webhook_destinations_are_checked() {
    let receiver = Receiver::start(&[], 200).await;
    let deliverer = receiver.deliverer();
    let long = "x".repeat(257);
    for bad in ["", long.as_str(), "line\nbreak", "nul\0"] {
        let err = deliverer.validate(Channel::Webhook, bad).unwrap_err();
        assert!(matches!(err, DeliveryError::InvalidDestination { channel: "webhook", .. }), "{err:?}");
    }
    deliverer.validate(Channel::Webhook, &"x".repeat(256)).unwrap();
    deliverer.validate(Channel::Webhook, "+15551234567").unwrap();
    assert!(receiver.received().is_empty());
}
