//! The email channel: one SMTP transport (lettre) built at start-up, and the message
//! written by hand as plain RFC 5322 text (lettre's builder would pull in a crate
//! under a licence deny.toml does not allow, and a one-part text mail is short).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rand::RngCore;
use zeroize::Zeroizing;

use super::{
    describe, is_loopback, Budget, DeliveryError, DeliveryReport, Failure, OtpMessage, Purpose, RetryPolicy,
    SmtpSettings, SmtpTls,
};

/// Subject of every code mail; it carries no code, so lock-screen previews and mail
/// logs show none.
pub(super) const SUBJECT: &str = "Your verification code";
/// RFC 5322 §2.1.1: a line is at most 998 characters; longer ones force base64.
const MAX_LINE: usize = 998;

/// The relay and the sender.
pub(super) struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Sender,
}

/// `addr` or `Display Name <addr>`.
struct Sender {
    name: Option<String>,
    address: Address,
}

impl Smtp {
    /// Checks the settings and builds the transport (no connection is made yet).
    pub(super) fn new(s: &SmtpSettings, timeout: Duration) -> Result<Self, DeliveryError> {
        let config = DeliveryError::Config;
        let from = parse_sender(&s.from).map_err(|why| config(format!("smtp_from `{}`: {why}", s.from)))?;
        if s.host.trim().is_empty() {
            return Err(config("smtp_host is empty".into()));
        }
        let builder = match s.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str()),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                .map_err(|e| config(format!("SMTP STARTTLS setup for `{}`: {}", s.host, describe(&e))))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
                .map_err(|e| config(format!("SMTP TLS setup for `{}`: {}", s.host, describe(&e))))?,
        };
        let mut builder = builder.port(s.port).timeout(Some(timeout));
        match (&s.username, &s.password) {
            (Some(user), Some(password)) => {
                // A password in clear text is acceptable only to a relay on this machine.
                if s.tls == SmtpTls::None && !is_loopback(&s.host) {
                    return Err(config(format!(
                        "smtp_tls = none would send the SMTP password to `{}` in clear text: use starttls or tls",
                        s.host
                    )));
                }
                // lettre keeps its own (not zeroized) copy for the connection's lifetime.
                builder = builder.credentials(Credentials::new(user.clone(), password.to_string()));
            }
            (None, None) => {}
            _ => return Err(config("smtp_username and smtp_password must be set together".into())),
        }
        Ok(Self { transport: builder.build(), from })
    }

    /// Sends `msg`, retrying connection failures, timeouts and 4xx answers; a 5xx
    /// answer (the relay refuses the address or the message) ends it at once.
    pub(super) async fn send(
        &self,
        retry: &RetryPolicy,
        msg: &OtpMessage<'_>,
    ) -> Result<DeliveryReport, DeliveryError> {
        let to = parse_address(msg.to)?;
        let envelope = Envelope::new(Some(self.from.address.clone()), vec![to.clone()])
            .map_err(|e| DeliveryError::Template(e.to_string()))?;
        let raw = format_message(&self.from, &to, msg, SystemTime::now());
        let timeout = retry.timeout;
        let outcome = retry
            .run("email", msg, Budget::Attempts(retry.max_attempts), None, |_| async {
                match tokio::time::timeout(timeout, self.transport.send_raw(&envelope, raw.as_bytes())).await {
                    Err(_) => {
                        Err(Failure::transient(None, format!("no answer from the SMTP relay within {timeout:?}")))
                    }
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() || e.is_client() => Err(Failure::permanent(None, describe(&e))),
                    Ok(Err(e)) if e.status().is_some() => Err(Failure::transient(None, describe(&e))),
                    Ok(Err(e)) => Err(Failure::transient(
                        None,
                        format!("{}; check smtp_host, smtp_port and smtp_tls", describe(&e)),
                    )),
                }
            })
            .await;
        outcome.map_err(|f| DeliveryError::Smtp(f.message))
    }
}

/// A destination address (lettre's parser: `local@domain`, no display name, no
/// whitespace, so nothing can spill into another header).
pub(super) fn parse_address(to: &str) -> Result<Address, DeliveryError> {
    to.parse::<Address>().map_err(|e| DeliveryError::InvalidDestination {
        channel: "email",
        reason: format!("not an email address ({})", e.to_string().to_lowercase()),
    })
}

/// Why `smtp_from` is not a sender (shown after the setting's name and value).
#[derive(Debug, thiserror::Error)]
enum SenderError {
    /// The address part does not parse.
    #[error("not an email address ({0})")]
    Address(#[from] lettre::address::AddressError),
    /// `Name <addr` without the closing bracket.
    #[error("missing `>` after the address")]
    Unclosed,
    /// The display name could break out of its quoted string in the header.
    #[error("the display name must be printable ASCII without quotes or backslashes")]
    DisplayName,
}

/// `addr@example.com`, `Name <addr@example.com>` or `"Name" <addr@example.com>`; the
/// name must be printable ASCII without quotes or backslashes (it goes into a header
/// as a quoted string).
fn parse_sender(from: &str) -> Result<Sender, SenderError> {
    let from = from.trim();
    let Some(open) = from.rfind('<') else {
        return Ok(Sender { name: None, address: from.parse::<Address>()? });
    };
    let address = from[open + 1..].strip_suffix('>').ok_or(SenderError::Unclosed)?;
    let address = address.parse::<Address>()?;
    let name = from[..open].trim();
    let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(name);
    if name.chars().any(|c| !(' '..='~').contains(&c) || c == '"' || c == '\\') {
        return Err(SenderError::DisplayName);
    }
    Ok(Sender { name: (!name.is_empty()).then(|| name.to_owned()), address })
}

/// Subject-less plain-text body: the code on a line of its own, the expiry, what it is
/// for, and the reference id. Control characters in the key name are replaced.
pub(super) fn body_text(msg: &OtpMessage<'_>) -> Zeroizing<String> {
    let expires = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(msg.expires_at));
    // Nearest minute: a TTL computed a moment after creation (599 s) still reads "10".
    let ttl = match msg.ttl_secs {
        s if s < 60 => format!("{s} seconds"),
        s if s < 90 => "1 minute".to_owned(),
        s => format!("{} minutes", (s + 30) / 60),
    };
    let mut body = Zeroizing::new(String::with_capacity(512));
    let _ = write!(body, "Your verification code is:\r\n\r\n    {}\r\n\r\n", msg.code);
    let _ = write!(body, "It expires in {ttl} (at {expires}) and works only once.\r\n\r\n");
    match msg.purpose {
        Purpose::StepUp { key_name } => {
            let name: String = key_name.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
            let _ = write!(
                body,
                "It was requested to confirm a sign-in with the API key \"{name}\".\r\n\
                 If you did not ask for it, someone else may hold that key: revoke it.\r\n"
            );
        }
        Purpose::Verification => body.push_str("If you did not ask for this code, ignore this message.\r\n"),
    }
    let _ = write!(body, "\r\nReference: {}\r\n", msg.verification_id);
    body
}

/// The whole message, CRLF line ends. ASCII bodies go as 7bit so the code is readable
/// in the raw mail; anything else (a non-ASCII key name) as base64.
fn format_message(from: &Sender, to: &Address, msg: &OtpMessage<'_>, now: SystemTime) -> Zeroizing<String> {
    let body = body_text(msg);
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    // RFC 5322 §3.3 wants a numeric zone; httpdate writes the obsolete "GMT".
    let date = httpdate::fmt_http_date(now).replace(" GMT", " +0000");
    let mut out = Zeroizing::new(String::with_capacity(body.len() * 2 + 512));
    let _ = write!(out, "Date: {date}\r\n");
    let _ = match &from.name {
        Some(name) => write!(out, "From: \"{name}\" <{}>\r\n", from.address),
        None => write!(out, "From: {}\r\n", from.address),
    };
    let _ = write!(out, "To: {to}\r\nSubject: {SUBJECT}\r\n");
    let _ = write!(out, "Message-ID: <{}@{}>\r\n", hex::encode(id), from.address.domain());
    // RFC 3834: keeps vacation responders from answering a robot.
    out.push_str("Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    if body.is_ascii() && body.split("\r\n").all(|l| l.len() <= MAX_LINE) {
        out.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        out.push_str(&body);
    } else {
        out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(body.as_bytes()));
        for line in encoded.as_bytes().chunks(76) {
            // base64 output is ASCII: chunks are valid UTF-8.
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push_str("\r\n");
        }
    }
    out
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
    fn senders_parse_with_and_without_a_name() {
        let s = parse_sender("no-reply@example.com").unwrap();
        assert_eq!((s.name, s.address.to_string()), (None, "no-reply@example.com".into()));
        let s = parse_sender("onetrip <no-reply@example.com>").unwrap();
        assert_eq!(s.name.as_deref(), Some("onetrip"));
        let s = parse_sender("\"Example Co\" <no-reply@example.com>").unwrap();
        assert_eq!(s.name.as_deref(), Some("Example Co"));
        for bad in ["", "x", "<not an address>"] {
            assert!(matches!(parse_sender(bad), Err(SenderError::Address(_))), "{bad:?}");
        }
        assert!(matches!(parse_sender("a <b@c"), Err(SenderError::Unclosed)));
        for bad in ["a\r\nBcc: x@y.z <b@c.d>", "Ünïcode <b@c.d>"] {
            assert!(matches!(parse_sender(bad), Err(SenderError::DisplayName)), "{bad:?}");
        }
    }

    #[test]
    fn the_message_is_well_formed_and_the_code_only_in_the_body() {
        let from = parse_sender("onetrip <no-reply@example.com>").unwrap();
        let to: Address = "alice@example.com".parse().unwrap();
        let raw = format_message(&from, &to, &msg(Purpose::StepUp { key_name: "ci-deploy" }), UNIX_EPOCH);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"), "{head}");
        assert!(head.contains("\r\nFrom: \"onetrip\" <no-reply@example.com>\r\n"));
        assert!(head.contains("\r\nTo: alice@example.com\r\nSubject: Your verification code\r\n"));
        assert!(head.contains("@example.com>\r\n"), "Message-ID on the sender's domain");
        assert!(!head.contains("493817"));
        assert!(body.contains("\r\n    493817\r\n"));
        assert!(body.contains("expires in 10 minutes"));
        assert!(body.contains("\"ci-deploy\""));
        assert!(!raw.replace("\r\n", "").contains('\n'), "bare LF");
    }

    #[test]
    fn non_ascii_bodies_are_base64() {
        let from = parse_sender("no-reply@example.com").unwrap();
        let to: Address = "alice@example.com".parse().unwrap();
        let raw = format_message(&from, &to, &msg(Purpose::StepUp { key_name: "clé\nü" }), UNIX_EPOCH);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with("Content-Transfer-Encoding: base64"));
        let decoded = base64::engine::general_purpose::STANDARD.decode(body.replace("\r\n", "")).unwrap();
        let text = String::from_utf8(decoded).unwrap();
        assert!(text.contains("\"clé?ü\""), "{text}");
        assert!(text.contains("    493817\r\n"));
    }
}
