//! The answers of the admin operations, one type each: the server builds them and
//! the CLI reads them back, so a field one side lacks is a decode error
//! ([`AdminError::Answer`](super::AdminError::Answer)), never an empty string.
//!
//! On the socket and in `--json` output an answer is the JSON object of its type
//! with the keys in alphabetical order (it passes through `serde_json::Value`, whose
//! map is sorted), as it has always been.

use std::fmt;

use onetrip_protocol::api_key::KeyId;
use serde::{Deserialize, Serialize};

use crate::otp::lockout::{Guard, LockoutPolicy};
use crate::otp::totp::TotpEnrolmentAnswer;
use crate::store::ApiKeyRecord;

/// One API key as listed: its record (never its secret) and whether it works now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySummary {
    /// Key id (hex).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Audiences it may request tokens for.
    pub audiences: Vec<String>,
    /// Handshakes need a second factor.
    pub require_otp: bool,
    /// Where codes go.
    pub otp_to: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Last successful handshake (coarse).
    pub last_used_at: Option<u64>,
    /// Revocation time.
    pub revoked_at: Option<u64>,
    /// End of validity (set on the old key by a rotation).
    pub expires_at: Option<u64>,
    /// Key id that replaced this one.
    pub replaced_by: Option<String>,
    /// Usable for a handshake at the time of the answer.
    pub active: bool,
}

impl KeySummary {
    /// The summary of `record` at `now`.
    pub fn new(id: &KeyId, r: &ApiKeyRecord, now: u64) -> Self {
        Self {
            id: id.to_string(),
            name: r.name.clone(),
            scopes: r.scopes.clone(),
            audiences: r.audiences.clone(),
            require_otp: r.require_otp,
            otp_to: r.otp_to.clone(),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
            replaced_by: r.replaced_by.clone(),
            active: r.is_active(now),
        }
    }
}

/// A secret an answer carries (an API key, an audience key): the JSON string as it
/// is, zeroized on drop and never in Debug output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    /// The secret, for printing it to the one who asked.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretText {
    fn from(s: String) -> Self {
        SecretText(s)
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A new key (`keys create`): its summary and the key string, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCreated {
    /// The key's record.
    #[serde(flatten)]
    pub key: KeySummary,
    /// The API key string.
    pub api_key: SecretText,
}

/// `keys create --count`: every key made, secrets included (shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysCreated {
    /// The keys, in the order made.
    pub keys: Vec<KeyCreated>,
}

/// `keys revoke --from`: what became of each id asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysRevoked {
    /// Revoked by this request.
    pub revoked: Vec<String>,
    /// Revoked before; left as they were.
    pub already_revoked: Vec<String>,
    /// No such key.
    pub not_found: Vec<String>,
}

/// `keys rotate`: the new key, and when the old one stops working.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRotated {
    /// The new key, as `keys create` answers it.
    #[serde(flatten)]
    pub new: KeyCreated,
    /// End of the old key's grace period, unix seconds.
    pub old_key_expires_at: u64,
}

/// One page of `keys list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyPage {
    /// The keys, in id order.
    pub keys: Vec<KeySummary>,
    /// Where the next page starts (its `after`); none on the last page.
    pub next_after: Option<String>,
}

/// A key's second-factor lockout (wrong step-up codes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondFactorLock {
    /// Checks are refused now.
    pub locked: bool,
    /// Until when, while locked.
    pub locked_until: Option<u64>,
    /// Wrong codes inside the lockout window.
    pub wrong_codes_last_hour: usize,
    /// Locks since the last right code.
    pub lockouts: u32,
}

impl SecondFactorLock {
    /// The state of `guard` at `now`.
    pub fn new(guard: &Guard, now: u64) -> Self {
        let policy = LockoutPolicy::default();
        let locked = guard.locked(now).is_some();
        Self {
            locked,
            locked_until: locked.then_some(guard.locked_until).flatten(),
            wrong_codes_last_hour: guard.recent_failures(now, &policy),
            lockouts: guard.lockouts,
        }
    }
}

/// `keys show`: the key and its second-factor lockout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyShown {
    /// The key's record.
    #[serde(flatten)]
    pub key: KeySummary,
    /// Its lockout.
    pub second_factor_lock: SecondFactorLock,
}

/// `keys unlock`: the key id and its lockout, cleared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyUnlocked {
    /// Key id (hex).
    pub id: String,
    /// Its lockout after the unlock.
    pub second_factor_lock: SecondFactorLock,
}

/// `keys totp-enroll`: the key and its authenticator enrolment, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyTotpEnrolled {
    /// Key id (hex).
    pub id: String,
    /// Key name (the account name in the app).
    pub name: String,
    /// Secret, URI and code parameters.
    #[serde(flatten)]
    pub enrolment: TotpEnrolmentAnswer,
}

/// The answer to a ping: a server is listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pong {
    /// The only answer.
    #[serde(rename = "pong")]
    Pong,
}

/// One handshake key, as `server-key show` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandshakeKey {
    /// Key id (hex).
    pub key_id: String,
    /// X25519 public key (hex).
    pub public: String,
    /// Validity start.
    pub not_before: u64,
    /// Validity end.
    pub not_after: u64,
    /// Valid at the time of the answer.
    pub valid_now: bool,
}

/// `server-key show`: the identity and the handshake keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerKeys {
    /// Identity fingerprint, as clients pin it.
    pub fingerprint: String,
    /// Private keys are sealed with a passphrase.
    pub sealed: bool,
    /// Where the state is (a file, or a database URL without its password).
    pub store: String,
    /// Handshake keys.
    pub keys: Vec<HandshakeKey>,
}

/// `server-key rotate`: the keys after the rotation, and the new one's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerKeyRotated {
    /// Identity and handshake keys, the new one included.
    #[serde(flatten)]
    pub keys: ServerKeys,
    /// Id of the key made (hex).
    pub new_key_id: String,
}

/// `token-key rotate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKeyRotated {
    /// Id of the key made (hex).
    pub new_key_id: String,
    /// Every token key id now held, newest first.
    pub key_ids: Vec<String>,
    /// When the older keys stop opening tokens, unix seconds.
    pub older_keys_retire_at: u64,
}

/// `tokens revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// Token id (hex).
    pub token_id: String,
    /// The revocation holds until this time (when the token would have expired).
    pub revoked_until: u64,
}

/// One audience key, as a resource server takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudienceKey {
    /// Token key id (hex).
    pub key_id: String,
    /// The audience secret (hex).
    pub key: SecretText,
}

/// `audience-key`: the keys of one audience, current first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudienceKeys {
    /// Audience name.
    pub audience: String,
    /// Its keys.
    pub keys: Vec<AudienceKey>,
}

/// One page of `audit`: the newest events older than the request's cursor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// The events, oldest first.
    pub events: Vec<AuditEvent>,
    /// The cursor (`before`) of the next, older page; none when no older event is left.
    pub next_before: Option<String>,
}

/// One audit event, as `audit` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub at: u64,
    /// Event name.
    pub event: String,
    /// Event details.
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ApiKeyRecord {
        ApiKeyRecord { otp_to: Some("totp".into()), expires_at: Some(50), ..ApiKeyRecord::for_tests(Some(7)) }
    }

    #[test]
    fn a_created_key_is_the_json_object_the_cli_and_scripts_always_read() {
        let id = KeyId::from_bytes([1; 16]);
        let created =
            KeyCreated { key: KeySummary::new(&id, &record(), 100), api_key: String::from("ot_secret").into() };
        let v = serde_json::to_value(&created).unwrap();
        let expected = serde_json::json!({
            "id": id.to_string(), "name": "k", "scopes": [], "audiences": [], "require_otp": false,
            "otp_to": "totp", "created_at": 0, "last_used_at": 7, "revoked_at": null, "expires_at": 50,
            "replaced_by": null, "active": false, "api_key": "ot_secret",
        });
        assert_eq!(v, expected);
        assert!(!format!("{created:?}").contains("ot_secret"), "Debug must not show the key");
    }

    #[test]
    fn an_answer_without_a_field_is_an_error_not_an_empty_value() {
        let v = serde_json::json!({ "token_id": "00", "revoked_until": 5 });
        assert_eq!(serde_json::from_value::<TokenRevoked>(v).unwrap().revoked_until, 5);
        let missing = serde_json::json!({ "token_id": "00" });
        assert!(serde_json::from_value::<TokenRevoked>(missing).is_err());
        let no_key = serde_json::json!({ "id": "00", "name": "k" });
        assert!(serde_json::from_value::<KeyCreated>(no_key).is_err(), "a key answer needs its api_key");
    }

    #[test]
    fn a_rotation_reads_back_as_it_was_written() {
        let id = KeyId::from_bytes([2; 16]);
        let rotated = KeyRotated {
            new: KeyCreated { key: KeySummary::new(&id, &record(), 10), api_key: String::from("ot_new").into() },
            old_key_expires_at: 99,
        };
        let v = serde_json::to_value(&rotated).unwrap();
        assert_eq!(v["old_key_expires_at"], 99);
        let back: KeyRotated = serde_json::from_value(v).unwrap();
        assert_eq!((back.new.key, back.new.api_key), (rotated.new.key, rotated.new.api_key));
    }

    #[test]
    fn the_ping_answer_is_the_string_pong() {
        assert_eq!(serde_json::to_value(Pong::Pong).unwrap(), serde_json::json!("pong"));
    }
}
