//! Sending one-time codes: email over SMTP (lettre), a signed webhook for SMS
//! gateways and push services, and the development console. Each attempt has a
//! timeout; transient failures are retried with exponential backoff and jitter, and a
//! delivery that still fails is an error for the caller to record, never silence.
//! Email gets a fixed number of attempts; the webhook keeps retrying over a window
//! (`[otp.webhook] retry_window_secs`) so that a gateway blip of a minute or two does
//! not cost the code, and never past the code's own expiry.
//!
//! # Webhook signatures
//!
//! A webhook is a `POST` of JSON (`verification_id`, `to`, `code`, `expires_at`,
//! `ttl_secs`, `purpose` = `"step_up"` | `"verification"`, and `key_name` for step-up,
//! `locale` when known) with two headers, as Stripe signs its events:
//!
//! ```text
//! Onetrip-Timestamp: <unix seconds>
//! Onetrip-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>
//! ```
//!
//! Receivers recompute the MAC over the raw body, compare in constant time and refuse
//! timestamps outside a tolerance (e.g. 300 s), which bounds replays; see
//! [`verify_webhook_signature`]. Each retry is signed afresh with its own timestamp,
//! and carries the same `verification_id` and `code`, so receivers can drop duplicates.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onetrip_protocol::Channel;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::otp::mask_destination;

mod email;
mod webhook;

use email::Smtp;
use webhook::Webhook;
pub use webhook::{
    verify_webhook_signature, webhook_signature, MAX_WEBHOOK_TO_LEN, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

/// Longest backoff between two attempts, whatever the attempt count: over a two-minute
/// window a receiver back from an outage hears from us within 15 s.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Longest `Retry-After` honoured; beyond it the window ends the delivery anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text: only for a relay on loopback (tests, a local MTA).
    None,
    /// STARTTLS, required: a server that does not offer it is refused, never used in clear.
    #[default]
    StartTls,
    /// Implicit TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// The SMTP relay.
#[derive(Clone)]
pub struct SmtpSettings {
    /// Relay host name (also the name its certificate must carry).
    pub host: String,
    /// Relay port (25, 587 for STARTTLS, 465 for TLS).
    pub port: u16,
    /// Connection protection.
    pub tls: SmtpTls,
    /// Login, if the relay wants one (requires `password`).
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<Zeroizing<String>>,
    /// Sender, `addr@example.com` or `Name <addr@example.com>`.
    pub from: String,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .finish()
    }
}

/// The webhook receiver.
#[derive(Clone)]
pub struct WebhookSettings {
    /// `http://` or `https://` URL the JSON is posted to.
    pub url: String,
    /// HMAC-SHA256 key shared with the receiver.
    pub secret: Zeroizing<String>,
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings").field("url", &self.url).field("secret", &"<redacted>").finish()
    }
}

/// Channels and retry policy.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Email channel; `None`: email is refused as not configured.
    pub smtp: Option<SmtpSettings>,
    /// Webhook channel; `None`: webhook is refused as not configured.
    pub webhook: Option<WebhookSettings>,
    /// Print console-channel codes on stderr (development only).
    pub console_codes: bool,
    /// Email attempts per delivery, the first included (at least 1).
    pub max_attempts: u32,
    /// How long a webhook delivery keeps retrying after its first attempt; never past
    /// the code's expiry. Zero: one attempt.
    pub webhook_retry_window: Duration,
    /// Wait before the second attempt; doubled for each further one, with jitter.
    pub initial_backoff: Duration,
    /// Limit for one attempt (connect, send, answer).
    pub timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            smtp: None,
            webhook: None,
            console_codes: false,
            max_attempts: 3,
            webhook_retry_window: Duration::from_secs(120),
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a code is for; changes the wording of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose<'a> {
    /// Second factor for an API key's handshake.
    StepUp {
        /// The API key's name, so the recipient knows what is being unlocked.
        key_name: &'a str,
    },
    /// A verification created through the OTP API.
    Verification,
}

/// One code to send.
#[derive(Clone, Copy)]
pub struct OtpMessage<'a> {
    /// Printable verification (or step-up operation) id.
    pub verification_id: &'a str,
    /// Destination: email address, webhook target.
    pub to: &'a str,
    /// The code itself.
    pub code: &'a str,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Seconds left until expiry, for "expires in N minutes".
    pub ttl_secs: u64,
    /// Recipient's language tag, passed to webhooks (the email text is English).
    pub locale: Option<&'a str>,
    /// What the code is for.
    pub purpose: Purpose<'a>,
}

impl fmt::Debug for OtpMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpMessage")
            .field("verification_id", &self.verification_id)
            .field("to", &mask_destination(self.to))
            .field("code", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// Why a code could not be sent. Messages never contain the code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The channel has no settings on this server.
    #[error("{channel} delivery is not configured: {}", setup_hint(channel))]
    NotConfigured {
        /// Channel name.
        channel: &'static str,
    },
    /// The destination cannot be used on this channel.
    #[error("invalid {channel} destination: {reason}")]
    InvalidDestination {
        /// Channel name.
        channel: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The SMTP relay refused the message or could not be reached, after the retries.
    #[error("email delivery failed: {0}")]
    Smtp(String),
    /// The webhook receiver refused the request or could not be reached, after the retries.
    #[error("webhook delivery failed: {message}")]
    Webhook {
        /// Last HTTP status, if the receiver answered.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// The message could not be built.
    #[error("cannot build the message: {0}")]
    Template(String),
    /// The delivery settings are unusable (at start-up).
    #[error("invalid delivery settings: {0}")]
    Config(String),
    /// Retries stopped because the code is no longer wanted (a resend replaced it, or
    /// the verification was checked or cancelled): not a failure of the channel.
    #[error("delivery stopped: {0}")]
    Superseded(String),
}

/// Asked before each retry: `false` stops the delivery with
/// [`DeliveryError::Superseded`]. A retry window lasts minutes, and a code replaced or
/// settled meanwhile must not reach the recipient late.
pub type StillWanted<'a> = &'a (dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync);

fn setup_hint(channel: &str) -> &'static str {
    match channel {
        "email" => "set smtp_host and smtp_from",
        "webhook" => "set webhook_url and webhook_secret",
        _ => "this server cannot send on that channel",
    }
}

impl DeliveryError {
    /// Stable machine-readable code for APIs and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            DeliveryError::NotConfigured { .. } => "channel_not_configured",
            DeliveryError::InvalidDestination { .. } => "invalid_destination",
            DeliveryError::Smtp(_) | DeliveryError::Webhook { .. } | DeliveryError::Template(_) => "delivery_failed",
            DeliveryError::Config(_) => "invalid_configuration",
            DeliveryError::Superseded(_) => "superseded",
        }
    }
}

/// A successful delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Attempts made, the successful one included (0: nothing to send, as for TOTP).
    pub attempts: u32,
}

/// Sends codes on every configured channel. Cheap to clone; the SMTP transport and
/// the HTTP connection pool are built once and shared.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    console_codes: bool,
    retry: RetryPolicy,
    smtp: Option<Smtp>,
    webhook: Option<Webhook>,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer")
            .field("email", &self.inner.smtp.is_some())
            .field("webhook", &self.inner.webhook.as_ref().map(|w| w.url.to_string()))
            .field("console_codes", &self.inner.console_codes)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl Deliverer {
    /// Checks the settings and builds the SMTP transport and the HTTP client.
    pub fn new(config: DeliveryConfig) -> Result<Self, DeliveryError> {
        if config.max_attempts == 0 || config.max_attempts > 10 {
            return Err(DeliveryError::Config("max_attempts must be between 1 and 10".into()));
        }
        if config.timeout.is_zero() {
            return Err(DeliveryError::Config("the delivery timeout must be above zero".into()));
        }
        let retry = RetryPolicy {
            max_attempts: config.max_attempts,
            initial_backoff: config.initial_backoff,
            timeout: config.timeout,
        };
        let smtp = config.smtp.as_ref().map(|s| Smtp::new(s, config.timeout)).transpose()?;
        let webhook = config
            .webhook
            .as_ref()
            .map(|w| Webhook::new(w, config.timeout, config.webhook_retry_window))
            .transpose()?;
        Ok(Self { inner: Arc::new(Inner { console_codes: config.console_codes, retry, smtp, webhook }) })
    }

    /// Whether `channel` can be used on this server.
    pub fn is_configured(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.inner.smtp.is_some(),
            Channel::Webhook => self.inner.webhook.is_some(),
            Channel::Totp | Channel::Console => true,
            _ => false,
        }
    }

    /// Checks, when a verification is created, that `to` can be delivered to on
    /// `channel`: the channel is configured and the destination well formed.
    pub fn validate(&self, channel: Channel, to: &str) -> Result<(), DeliveryError> {
        if !self.is_configured(channel) {
            return Err(DeliveryError::NotConfigured { channel: channel.as_str() });
        }
        match channel {
            Channel::Email => email::parse_address(to).map(drop),
            Channel::Webhook => webhook::check_to(to),
            _ => Ok(()),
        }
    }

    /// Sends `msg` on `channel`, retrying transient failures; `Err` once the attempts
    /// (email) or the retry window (webhook) are spent, on a permanent refusal, or when
    /// the code expired (`msg.ttl_secs` is 0) before it could be sent.
    pub async fn deliver(&self, channel: Channel, msg: &OtpMessage<'_>) -> Result<DeliveryReport, DeliveryError> {
        self.deliver_while(channel, msg, &|| Box::pin(async { true })).await
    }

    /// [`Deliverer::deliver`], asking `still_wanted` before each webhook retry.
    pub async fn deliver_while(
        &self,
        channel: Channel,
        msg: &OtpMessage<'_>,
        still_wanted: StillWanted<'_>,
    ) -> Result<DeliveryReport, DeliveryError> {
        self.validate(channel, msg.to)?;
        match (channel, &self.inner.smtp, &self.inner.webhook) {
            (Channel::Totp, _, _) => Ok(DeliveryReport { attempts: 0 }),
            (Channel::Console, _, _) => {
                self.console(msg);
                Ok(DeliveryReport { attempts: 1 })
            }
            (Channel::Email, Some(smtp), _) => smtp.send(&self.inner.retry, msg).await,
            (Channel::Webhook, _, Some(webhook)) => webhook.send(&self.inner.retry, msg, still_wanted).await,
            _ => Err(DeliveryError::NotConfigured { channel: channel.as_str() }),
        }
    }

    /// The development channel: says that a code was sent; shows it only when asked to.
    fn console(&self, msg: &OtpMessage<'_>) {
        let to = mask_destination(msg.to);
        if self.inner.console_codes {
            // One write of the whole line: a reader of the log never sees half a code.
            let line = zeroize::Zeroizing::new(format!(
                "[onetrip console channel] code for {} (operation {}): {}\n",
                msg.to, msg.verification_id, msg.code
            ));
            eprint!("{}", line.as_str());
        } else {
            tracing::info!(destination = %to, operation = msg.verification_id,
                "console channel: code sent (start with --otp-console-codes to see it)");
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An error and its causes on one line (hyper's and lettre's top-level messages alone
/// say little, e.g. "client error (Connect)").
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// One failed attempt.
struct Failure {
    retry: bool,
    status: Option<u16>,
    message: String,
    /// The receiver's `Retry-After`, if it gave one.
    retry_after: Option<Duration>,
    /// Stopped because the code is no longer wanted, not because the channel failed.
    superseded: bool,
}

impl Failure {
    fn transient(status: Option<u16>, message: String) -> Self {
        Self { retry: true, status, message, retry_after: None, superseded: false }
    }
    fn permanent(status: Option<u16>, message: String) -> Self {
        Self { retry: false, status, message, retry_after: None, superseded: false }
    }
}

/// When a delivery stops retrying.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// A fixed number of attempts, the first included (email).
    Attempts(u32),
    /// No attempt starts at or after `retry_until`, and none runs past `expires` (the
    /// code's expiry: a code that can no longer be used must not be sent).
    Window {
        /// End of the retry window (at most `expires`).
        retry_until: Instant,
        /// The code's expiry.
        expires: Instant,
    },
}

impl Budget {
    /// The retry window starting now: `window`, cut short by a code that expires in
    /// `ttl_secs`.
    fn window(window: Duration, ttl_secs: u64) -> Self {
        let now = Instant::now();
        let expires = now + Duration::from_secs(ttl_secs.min(86_400 * 366));
        Budget::Window { retry_until: (now + window).min(expires), expires }
    }
}

#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    timeout: Duration,
}

impl RetryPolicy {
    /// Runs `attempt` (given its time limit) until it succeeds, fails permanently, or
    /// `budget` is spent. The final failure's message says how many attempts were made.
    async fn run<F, Fut>(
        &self,
        channel: &'static str,
        msg: &OtpMessage<'_>,
        budget: Budget,
        still_wanted: Option<StillWanted<'_>>,
        mut attempt: F,
    ) -> Result<DeliveryReport, Failure>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        let mut n = 0;
        loop {
            let timeout = match budget {
                Budget::Attempts(_) => self.timeout,
                Budget::Window { expires, .. } => {
                    let left = expires.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Failure::permanent(
                            None,
                            format!("the code expired before it could be sent (after {n} attempt{})", plural(n)),
                        ));
                    }
                    // An attempt still in flight at expiry would hand over a dead code.
                    self.timeout.min(left)
                }
            };
            n += 1;
            match attempt(timeout).await {
                Ok(()) => return Ok(DeliveryReport { attempts: n }),
                Err(mut f) if !f.retry => {
                    f.message = format!("{} (not retried after {n} attempt{})", f.message, plural(n));
                    return Err(f);
                }
                Err(mut f) => {
                    // A receiver's Retry-After is honoured (never retried sooner), but
                    // never below our own backoff: `Retry-After: 0` must not become a
                    // tight loop over the whole window.
                    let backoff = self.backoff(n);
                    let wait = f.retry_after.map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER).max(backoff));
                    let spent = match budget {
                        Budget::Attempts(max) => n >= max,
                        Budget::Window { retry_until, .. } => Instant::now() + wait >= retry_until,
                    };
                    if spent {
                        f.message = format!("{} (gave up after {n} attempt{})", f.message, plural(n));
                        return Err(f);
                    }
                    tracing::warn!(channel, operation = msg.verification_id, destination = %mask_destination(msg.to),
                        attempt = n, error = %f.message, retry_in = ?wait, "OTP delivery attempt failed");
                    tokio::time::sleep(wait).await;
                    if let Some(wanted) = still_wanted {
                        if !wanted().await {
                            let message = format!("the code was replaced or settled after {n} attempt{}", plural(n));
                            return Err(Failure { superseded: true, ..Failure::permanent(f.status, message) });
                        }
                    }
                }
            }
        }
    }

    /// `initial_backoff · 2^(n-1)`, capped, then drawn uniformly from its upper half so
    /// that deliveries failing together do not retry in lockstep.
    fn backoff(&self, failed_attempts: u32) -> Duration {
        use rand::Rng;
        let full = self.initial_backoff.saturating_mul(1 << failed_attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF);
        let half = full / 2;
        let jitter_ns = rand::thread_rng().gen_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_nanos(jitter_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(purpose: Purpose<'_>) -> OtpMessage<'_> {
        OtpMessage {
            verification_id: "op-1",
            to: "alice@example.com",
            code: "493817",
            expires_at: 1_795_600_000,
            ttl_secs: 600,
            locale: None,
            purpose,
        }
    }

    #[test]
    fn debug_redacts_the_code() {
        assert!(!format!("{:?}", msg(Purpose::Verification)).contains("493817"));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let (a, b) = (p.backoff(1), p.backoff(3));
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&a), "{a:?}");
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&b), "{b:?}");
            assert!(p.backoff(40) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(DeliveryError::NotConfigured { channel: "email" }.code(), "channel_not_configured");
        assert_eq!(
            DeliveryError::NotConfigured { channel: "email" }.to_string(),
            "email delivery is not configured: set smtp_host and smtp_from"
        );
        assert_eq!(DeliveryError::Smtp("x".into()).code(), "delivery_failed");
        assert_eq!(DeliveryError::Webhook { status: Some(500), message: "x".into() }.code(), "delivery_failed");
    }

    #[test]
    fn settings_debug_redacts_secrets() {
        let s = SmtpSettings {
            host: "h".into(),
            port: 25,
            tls: SmtpTls::None,
            username: Some("u".into()),
            password: Some(Zeroizing::new("hunter2".into())),
            from: "a@b.c".into(),
        };
        let w = WebhookSettings { url: "http://x".into(), secret: Zeroizing::new("hunter2".into()) };
        assert!(!format!("{s:?}{w:?}").contains("hunter2"));
    }
}
