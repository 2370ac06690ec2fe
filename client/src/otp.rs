//! Typed calls to the server's OTP API (`/v1/otp/verifications`), for services that
//! verify their own users with onetrip. Each call is signed with the client's token
//! (proof of possession over method, path and body); the key needs the `otp` scope.

use std::str::FromStr;

use http::Method;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::error::Error;

/// How a code travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpChannel {
    /// Email over the server's SMTP relay.
    Email,
    /// The server's signed webhook (SMS gateways, push).
    Webhook,
    /// An authenticator app enrolled for the account (nothing is sent).
    Totp,
    /// The server's console (development).
    Console,
}

impl OtpChannel {
    /// Name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OtpChannel::Email => "email",
            OtpChannel::Webhook => "webhook",
            OtpChannel::Totp => "totp",
            OtpChannel::Console => "console",
        }
    }
}

/// Lifecycle of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationStatus {
    /// Waiting for the right code.
    Pending,
    /// The right code was given.
    Approved,
    /// Canceled by its owner.
    Canceled,
    /// Past its expiry.
    Expired,
    /// All checks used.
    MaxAttemptsReached,
    /// Delivery failed after the server's retries.
    Failed,
}

impl FromStr for VerificationStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "canceled" => Self::Canceled,
            "expired" => Self::Expired,
            "max_attempts_reached" => Self::MaxAttemptsReached,
            "failed" => Self::Failed,
            other => return Err(unexpected(&format!("unknown verification status {other:?}"))),
        })
    }
}

/// A verification to start.
#[derive(Debug, Clone)]
pub struct NewVerification {
    /// Destination: email address, webhook recipient (e.g. phone number), TOTP account.
    pub to: String,
    /// Channel.
    pub channel: OtpChannel,
    /// BCP 47 language tag for the message.
    pub locale: Option<String>,
    /// Code length, 4 to 10 (server default 6).
    pub code_length: Option<u8>,
    /// Seconds until expiry, 30 to 86400 (server default 600).
    pub ttl_secs: Option<u64>,
}

impl NewVerification {
    /// A verification with the server's defaults.
    pub fn new(channel: OtpChannel, to: impl Into<String>) -> Self {
        Self { to: to.into(), channel, locale: None, code_length: None, ttl_secs: None }
    }
}

/// A verification as the server reports it (the destination is masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Id (32 hex characters).
    pub id: String,
    /// Status.
    pub status: VerificationStatus,
    /// Channel name.
    pub channel: String,
    /// Masked destination.
    pub to: String,
    /// Creation time (Unix seconds).
    pub created_at: u64,
    /// Expiry (Unix seconds); resends never move it.
    pub expires_at: u64,
    /// Checks left.
    pub attempts_left: u32,
    /// Sends left (first send included).
    pub sends_left: u32,
    /// When a resend is allowed, if ever.
    pub resend_available_at: Option<u64>,
}

/// Result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// True only when this check approved the verification.
    pub valid: bool,
    /// The verification after the check.
    pub verification: Verification,
}

fn unexpected(what: &str) -> Error {
    Error::Http { status: 200, code: "unexpected_response".into(), detail: what.to_owned() }
}

fn parse_verification(v: &serde_json::Value) -> Result<Verification, Error> {
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    let missing = |k: &str| unexpected(&format!("the OTP API answer lacks `{k}`: is the server an onetrip server?"));
    Ok(Verification {
        id: text("id").ok_or_else(|| missing("id"))?,
        status: text("status").ok_or_else(|| missing("status"))?.parse()?,
        channel: text("channel").ok_or_else(|| missing("channel"))?,
        to: text("to").ok_or_else(|| missing("to"))?,
        created_at: num("created_at").ok_or_else(|| missing("created_at"))?,
        expires_at: num("expires_at").ok_or_else(|| missing("expires_at"))?,
        attempts_left: num("attempts_left")
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| missing("attempts_left"))?,
        sends_left: num("sends_left").and_then(|n| u32::try_from(n).ok()).ok_or_else(|| missing("sends_left"))?,
        resend_available_at: num("resend_available_at"),
    })
}

fn check_id(id: &str) -> Result<(), Error> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::InvalidRequest("verification ids are 32 hex characters"))
    }
}

impl Client {
    /// One signed JSON call to the OTP API.
    async fn otp_call(&self, method: Method, path: &str, body: Option<&[u8]>) -> Result<serde_json::Value, Error> {
        let signed = self.sign_request(method.as_str(), path, body.unwrap_or_default()).await?;
        let headers = [("authorization", signed.authorization()), (crate::token::POP_HEADER, signed.pop())];
        let bytes = self.transport().json(method, path, body, &headers).await?;
        serde_json::from_slice(&bytes).map_err(|_| unexpected("the OTP API answer is not JSON"))
    }

    /// Starts a verification: the server sends a code to `to` (nothing for TOTP).
    ///
    /// # Errors
    /// [`Error::RateLimited`] when a send limit is reached (with the server's
    /// `Retry-After`); [`Error::Http`] with the problem `code` (`invalid_parameter`,
    /// `channel_unavailable`, `scope_required`, …); any error of [`Client::token`].
    pub async fn otp_create(&self, new: &NewVerification) -> Result<Verification, Error> {
        let mut body = serde_json::json!({ "to": new.to, "channel": new.channel.as_str() });
        if let Some(l) = &new.locale {
            body["locale"] = l.as_str().into();
        }
        if let Some(n) = new.code_length {
            body["code_length"] = n.into();
        }
        if let Some(t) = new.ttl_secs {
            body["ttl"] = t.into();
        }
        let body = body.to_string();
        parse_verification(&self.otp_call(Method::POST, "/v1/otp/verifications", Some(body.as_bytes())).await?)
    }

    /// Checks a code the user typed.
    ///
    /// # Errors
    /// [`Error::Http`] 404 `verification_not_found` (unknown, or another key's),
    /// 409 `verification_not_pending` for an approved verification (codes are single
    /// use); [`Error::InvalidRequest`] for a malformed id.
    pub async fn otp_check(&self, id: &str, code: &str) -> Result<CheckResult, Error> {
        check_id(id)?;
        let body = Zeroizing::new(serde_json::json!({ "code": code }).to_string());
        let path = format!("/v1/otp/verifications/{id}/check");
        let v = self.otp_call(Method::POST, &path, Some(body.as_bytes())).await?;
        let valid = v.get("valid").and_then(serde_json::Value::as_bool).unwrap_or(false);
        Ok(CheckResult { valid, verification: parse_verification(&v)? })
    }

    /// Sends a new code (it replaces the previous one; the expiry does not move).
    ///
    /// # Errors
    /// [`Error::RateLimited`] before the cooldown ends or when sends are used up.
    pub async fn otp_resend(&self, id: &str) -> Result<Verification, Error> {
        check_id(id)?;
        parse_verification(
            &self.otp_call(Method::POST, &format!("/v1/otp/verifications/{id}/resend"), Some(b"")).await?,
        )
    }

    /// Cancels a pending verification.
    ///
    /// # Errors
    /// [`Error::Http`] 409 when it is no longer pending.
    pub async fn otp_cancel(&self, id: &str) -> Result<Verification, Error> {
        check_id(id)?;
        parse_verification(
            &self.otp_call(Method::POST, &format!("/v1/otp/verifications/{id}/cancel"), Some(b"")).await?,
        )
    }

    /// Reads a verification.
    ///
    /// # Errors
    /// [`Error::Http`] 404 for an unknown id or another key's.
    pub async fn otp_get(&self, id: &str) -> Result<Verification, Error> {
        check_id(id)?;
        parse_verification(&self.otp_call(Method::GET, &format!("/v1/otp/verifications/{id}"), None).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_and_gaps_are_typed_errors() {
        let v = serde_json::json!({
            "id": "00112233445566778899aabbccddeeff", "status": "pending", "channel": "email",
            "to": "a***@example.com", "created_at": 10, "expires_at": 610, "attempts_left": 5,
            "sends_left": 4, "resend_available_at": 40
        });
        let parsed = parse_verification(&v).unwrap();
        assert_eq!(parsed.status, VerificationStatus::Pending);
        assert_eq!(parsed.resend_available_at, Some(40));
        let mut broken = v.clone();
        broken["status"] = "weird".into();
        assert!(matches!(parse_verification(&broken), Err(Error::Http { .. })));
        broken = v.clone();
        broken.as_object_mut().unwrap().remove("expires_at");
        let e = parse_verification(&broken).unwrap_err().to_string();
        assert!(e.contains("expires_at"), "{e}");
    }

    #[test]
    fn ids_are_checked_before_anything_is_sent() {
        assert!(check_id("00112233445566778899aabbccddeeff").is_ok());
        for bad in ["", "xyz", "00112233445566778899aabbccddeef", "../../v1/auth/00112233445566778899aa"] {
            assert!(matches!(check_id(bad), Err(Error::InvalidRequest(_))), "{bad}");
        }
    }
}
