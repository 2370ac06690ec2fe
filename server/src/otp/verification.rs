//! One-time-password verifications: code generation (CSPRNG, uniform over the
//! alphabet by rejection sampling), keyed-hash storage, and the state machine every
//! check, resend and cancel goes through. Pure logic with the clock passed in; the
//! caller makes each transition atomic (one lock or one store transaction) and
//! persists the state *before* answering, so attempt counters survive restarts.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Characters a code is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alphabet {
    /// `0-9`: SMS, email, voice.
    Digits,
    /// Upper-case letters and digits without look-alikes (no 0/O, 1/I/L): push, links.
    Alphanumeric,
}

impl Alphabet {
    fn symbols(self) -> &'static [u8] {
        match self {
            Alphabet::Digits => b"0123456789",
            Alphabet::Alphanumeric => b"23456789ABCDEFGHJKMNPQRSTUVWXYZ",
        }
    }
}

/// Shortest allowed code.
pub const MIN_CODE_LEN: usize = 4;
/// Longest allowed code.
pub const MAX_CODE_LEN: usize = 10;

/// Rules for one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Code length, 4 to 10.
    pub code_length: usize,
    /// Alphabet.
    pub alphabet: Alphabet,
    /// Seconds from creation until the verification expires (resends never extend it).
    pub ttl_secs: u64,
    /// Checks allowed; the counter is incremented before comparing.
    pub max_attempts: u32,
    /// Resends allowed after the first send.
    pub max_resends: u32,
    /// Seconds between two sends.
    pub resend_cooldown_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            code_length: 6,
            alphabet: Alphabet::Digits,
            ttl_secs: 600,
            max_attempts: 5,
            max_resends: 3,
            resend_cooldown_secs: 30,
        }
    }
}

/// Why a policy or request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Code length outside 4..=10.
    #[error("code_length must be between 4 and 10")]
    CodeLength,
    /// TTL outside 30 s ..= 24 h.
    #[error("ttl must be between 30 and 86400 seconds")]
    Ttl,
}

impl Policy {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(MIN_CODE_LEN..=MAX_CODE_LEN).contains(&self.code_length) {
            return Err(PolicyError::CodeLength);
        }
        if !(30..=86_400).contains(&self.ttl_secs) {
            return Err(PolicyError::Ttl);
        }
        Ok(())
    }
}

/// A fresh code: each symbol uniform over the alphabet. Bytes at or above the largest
/// multiple of the alphabet size are redrawn, so no symbol is more likely than another
/// (a plain `byte % n` would favour the first `256 % n` symbols).
pub fn generate_code(rng: &mut (impl RngCore + CryptoRng), length: usize, alphabet: Alphabet) -> Zeroizing<String> {
    let symbols = alphabet.symbols();
    let n = symbols.len();
    let limit = 256 - (256 % n);
    let mut code = Zeroizing::new(String::with_capacity(length));
    let mut buf = Zeroizing::new([0u8; 32]);
    while code.len() < length {
        rng.fill_bytes(&mut buf[..]);
        for &b in buf.iter() {
            if usize::from(b) < limit && code.len() < length {
                code.push(char::from(symbols[usize::from(b) % n]));
            }
        }
    }
    code
}

/// The stored form of a code: BLAKE3 keyed with the server's OTP key over the
/// verification id and the code, so a leaked store does not reveal codes and a hash
/// cannot be moved to another verification.
pub fn code_hash(key: &[u8; 32], verification_id: &[u8; 16], code: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"onetrip v1 otp code\0");
    h.update(verification_id);
    h.update(code.as_bytes());
    *h.finalize().as_bytes()
}

/// Lifecycle of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the right code.
    Pending,
    /// The right code was given (single use: further checks are refused).
    Approved,
    /// Canceled by its owner.
    Canceled,
    /// Past its expiry.
    Expired,
    /// All attempts used.
    MaxAttemptsReached,
    /// Delivery failed after retries.
    Failed,
}

impl Status {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Canceled => "canceled",
            Status::Expired => "expired",
            Status::MaxAttemptsReached => "max_attempts_reached",
            Status::Failed => "failed",
        }
    }
}

/// Who a verification serves: the handshake's step-up for the owning key itself, or
/// the JSON API for the owner's own users. Neither path can see the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// `/v1/otp/verifications`.
    #[default]
    Api,
    /// Second factor of a handshake.
    StepUp,
}

/// One verification's persistent state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Random id.
    pub id: [u8; 16],
    /// API key that created it; no other key may see or touch it.
    pub owner: [u8; 16],
    /// Delivery channel name.
    pub channel: String,
    /// Destination (address, phone, target id).
    pub to: String,
    /// Rules fixed at creation.
    pub policy: Policy,
    /// Creation time.
    pub created_at: u64,
    /// Expiry; fixed at creation.
    pub expires_at: u64,
    /// Current status.
    pub status: Status,
    /// Checks made so far.
    pub attempts: u32,
    /// Sends made so far (first send included).
    pub sends: u32,
    /// Time of the last send.
    pub last_sent_at: u64,
    /// Keyed hash of the current code (unused for TOTP: the authenticator app holds the secret).
    pub code_hash: [u8; 32],
    /// Step-up or API.
    #[serde(default)]
    pub purpose: Purpose,
    /// Language of the message (BCP 47 tag), as asked at creation.
    #[serde(default)]
    pub locale: Option<String>,
}

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Right code: approved now.
    Approved,
    /// Wrong code; this many checks remain.
    Wrong {
        /// Checks left.
        attempts_left: u32,
    },
    /// Not pending (already approved, canceled, expired, failed, or out of attempts):
    /// nothing was compared.
    NotPending(Status),
}

/// Result of a resend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendOutcome {
    /// Send the new code (its hash is already stored).
    Send,
    /// Too early or too many: retry after this many seconds (`None`: never).
    Refused {
        /// Seconds until a resend is allowed, if ever.
        retry_after: Option<u64>,
    },
    /// Not pending.
    NotPending(Status),
}

impl Verification {
    /// A new pending verification; returns it and the code to deliver.
    pub fn create(
        rng: &mut (impl RngCore + CryptoRng),
        key: &[u8; 32],
        owner: [u8; 16],
        channel: &str,
        to: &str,
        policy: Policy,
        now: u64,
    ) -> Result<(Self, Zeroizing<String>), PolicyError> {
        policy.validate()?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let code = generate_code(rng, policy.code_length, policy.alphabet);
        let v = Self {
            id,
            owner,
            channel: channel.to_owned(),
            to: to.to_owned(),
            policy,
            created_at: now,
            expires_at: now + policy.ttl_secs,
            status: Status::Pending,
            attempts: 0,
            sends: 1,
            last_sent_at: now,
            code_hash: code_hash(key, &id, &code),
            purpose: Purpose::Api,
            locale: None,
        };
        Ok((v, code))
    }

    /// Moves a pending verification past its expiry to `Expired`.
    pub fn refresh(&mut self, now: u64) {
        if self.status == Status::Pending && now > self.expires_at {
            self.status = Status::Expired;
        }
    }

    /// Checks `code`. The attempt is counted before comparing, and the comparison is
    /// constant time; the caller must persist `self` before answering.
    pub fn check(&mut self, key: &[u8; 32], code: &str, now: u64) -> CheckOutcome {
        let (id, stored) = (self.id, self.code_hash);
        self.check_with(now, || bool::from(code_hash(key, &id, code.trim()).ct_eq(&stored)))
    }

    /// Like [`Verification::check`], but the code is judged by `accept` (TOTP: the
    /// authenticator's code against the enrolled secret and its replay rule). The
    /// attempt is counted before `accept` runs.
    pub fn check_with(&mut self, now: u64, accept: impl FnOnce() -> bool) -> CheckOutcome {
        self.refresh(now);
        if self.status != Status::Pending {
            return CheckOutcome::NotPending(self.status);
        }
        if self.attempts >= self.policy.max_attempts {
            self.status = Status::MaxAttemptsReached;
            return CheckOutcome::NotPending(self.status);
        }
        self.attempts += 1;
        if accept() {
            self.status = Status::Approved;
            return CheckOutcome::Approved;
        }
        let attempts_left = self.policy.max_attempts - self.attempts;
        if attempts_left == 0 {
            self.status = Status::MaxAttemptsReached;
        }
        CheckOutcome::Wrong { attempts_left }
    }

    /// A new code for a resend, within the cooldown and cap. The expiry does not move:
    /// the new code replaces the old one and lives until the original `expires_at`.
    pub fn resend(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        key: &[u8; 32],
        now: u64,
    ) -> (ResendOutcome, Option<Zeroizing<String>>) {
        self.refresh(now);
        if self.status != Status::Pending {
            return (ResendOutcome::NotPending(self.status), None);
        }
        if self.sends > self.policy.max_resends {
            return (ResendOutcome::Refused { retry_after: None }, None);
        }
        let ready_at = self.last_sent_at + self.policy.resend_cooldown_secs;
        if now < ready_at {
            return (ResendOutcome::Refused { retry_after: Some(ready_at - now) }, None);
        }
        let code = generate_code(rng, self.policy.code_length, self.policy.alphabet);
        self.code_hash = code_hash(key, &self.id, &code);
        self.sends += 1;
        self.last_sent_at = now;
        (ResendOutcome::Send, Some(code))
    }

    /// Cancels a pending verification; `false` when it was not pending.
    pub fn cancel(&mut self, now: u64) -> bool {
        self.refresh(now);
        if self.status != Status::Pending {
            return false;
        }
        self.status = Status::Canceled;
        true
    }

    /// Marks delivery as failed (after the channel's retries).
    pub fn delivery_failed(&mut self) {
        if self.status == Status::Pending {
            self.status = Status::Failed;
        }
    }

    /// When the next resend is allowed (for `resend_available_at`).
    pub fn resend_available_at(&self) -> Option<u64> {
        (self.sends <= self.policy.max_resends).then_some(self.last_sent_at + self.policy.resend_cooldown_secs)
    }
}

/// Delivery channel named by a key's `--otp-to` destination: `console[:label]`
/// (development), an email address, `webhook:<target>`, or `totp`.
pub fn channel_for(destination: &str) -> onetrip_protocol::Channel {
    use onetrip_protocol::Channel;
    if destination == "console" || destination.starts_with("console:") {
        Channel::Console
    } else if destination == "totp" {
        Channel::Totp
    } else if destination.starts_with("webhook:") {
        Channel::Webhook
    } else {
        Channel::Email
    }
}

/// Masks a destination for display: `alice@example.com` → `a***@example.com`,
/// `+15551234567` → `+*******4567`, anything else → first and last character.
pub fn mask_destination(to: &str) -> String {
    if let Some((user, domain)) = to.split_once('@') {
        let first = user.chars().next().map(String::from).unwrap_or_default();
        return format!("{first}***@{domain}");
    }
    let chars: Vec<char> = to.chars().collect();
    if to.starts_with('+') && chars.len() > 5 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        return format!("+{}{tail}", "*".repeat(chars.len() - 5));
    }
    match chars.as_slice() {
        [] => String::new(),
        [only] => format!("{only}***"),
        [first, .., last] => format!("{first}***{last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    const KEY: [u8; 32] = [7; 32];

    fn new(policy: Policy) -> (Verification, Zeroizing<String>) {
        Verification::create(&mut OsRng, &KEY, [1; 16], "email", "alice@example.com", policy, 1000).unwrap()
    }

    #[test]
    fn codes_are_uniform_over_the_alphabet() {
        // 600,000 symbols. The critical values are chi-square at p = 1e-6 (df = n - 1),
        // so a fair generator fails one run in a million; modulo bias (256 % 10 = 6
        // digits 4% likelier than the rest) scores ~200 here, far above 46.
        for alphabet in [Alphabet::Digits, Alphabet::Alphanumeric] {
            let n = alphabet.symbols().len();
            let mut counts = vec![0u64; n];
            let mut total = 0u64;
            for _ in 0..60_000 {
                let code = generate_code(&mut OsRng, 10, alphabet);
                assert_eq!(code.len(), 10);
                for b in code.bytes() {
                    let i = alphabet.symbols().iter().position(|s| *s == b).expect("symbol from the alphabet");
                    counts[i] += 1;
                    total += 1;
                }
            }
            let expected = total as f64 / n as f64;
            let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
            let critical = if n == 10 { 46.0 } else { 82.6 }; // p = 1e-6, df = n - 1
            assert!(chi2 < critical, "{alphabet:?}: chi-square {chi2:.1} >= {critical}: codes are not uniform");
        }
    }

    #[test]
    fn modulo_reduction_would_fail_the_same_test() {
        // The detector above is sensitive enough: biased digits (byte % 10) fail it.
        let mut counts = [0u64; 10];
        let mut buf = vec![0u8; 600_000];
        OsRng.fill_bytes(&mut buf);
        for b in buf {
            counts[usize::from(b % 10)] += 1;
        }
        let expected = 60_000.0;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 > 46.0, "biased generator not detected (chi-square {chi2:.1})");
    }

    #[test]
    fn only_the_keyed_hash_is_stored_and_it_is_bound_to_the_verification() {
        let (v, code) = new(Policy::default());
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains(code.as_str()), "code stored in the clear");
        assert_ne!(code_hash(&KEY, &[2; 16], &code), v.code_hash, "hash bound to the id");
        assert_ne!(code_hash(&[8; 32], &v.id, &code), v.code_hash, "hash keyed");
    }

    #[test]
    fn right_code_approves_once() {
        let (mut v, code) = new(Policy::default());
        assert_eq!(v.check(&KEY, &code, 1001), CheckOutcome::Approved);
        assert_eq!(v.check(&KEY, &code, 1002), CheckOutcome::NotPending(Status::Approved));
        assert_eq!(v.attempts, 1);
    }

    #[test]
    fn attempts_are_counted_before_comparing_and_capped() {
        let (mut v, code) = new(Policy::default());
        for left in (0..5).rev() {
            assert_eq!(v.check(&KEY, "000000x", 1001), CheckOutcome::Wrong { attempts_left: left });
        }
        assert_eq!(v.status, Status::MaxAttemptsReached);
        assert_eq!(v.check(&KEY, &code, 1001), CheckOutcome::NotPending(Status::MaxAttemptsReached));
        assert_eq!(v.attempts, 5, "no comparison after the cap");
    }

    #[test]
    fn expiry_is_fixed_at_creation_and_resend_does_not_extend_it() {
        let (mut v, _) = new(Policy::default());
        let expires = v.expires_at;
        assert_eq!(v.resend(&mut OsRng, &KEY, 1010).0, ResendOutcome::Refused { retry_after: Some(20) });
        let (outcome, new_code) = v.resend(&mut OsRng, &KEY, 1030);
        assert_eq!(outcome, ResendOutcome::Send);
        assert_eq!(v.expires_at, expires);
        let new_code = new_code.unwrap();
        assert_eq!(v.check(&KEY, &new_code, expires + 1), CheckOutcome::NotPending(Status::Expired));
    }

    #[test]
    fn resend_replaces_the_code_and_is_capped() {
        let (mut v, first) = new(Policy::default());
        let mut now = 1000;
        let mut last = None;
        for _ in 0..3 {
            now += 30;
            let (o, c) = v.resend(&mut OsRng, &KEY, now);
            assert_eq!(o, ResendOutcome::Send);
            last = c;
        }
        now += 30;
        assert_eq!(v.resend(&mut OsRng, &KEY, now).0, ResendOutcome::Refused { retry_after: None });
        assert_eq!(v.resend_available_at(), None);
        assert!(matches!(v.check(&KEY, &first, now), CheckOutcome::Wrong { .. }), "old code replaced");
        assert_eq!(v.check(&KEY, &last.unwrap(), now), CheckOutcome::Approved);
    }

    #[test]
    fn cancel_and_failed_stop_checks() {
        let (mut v, code) = new(Policy::default());
        assert!(v.cancel(1001));
        assert!(!v.cancel(1001));
        assert_eq!(v.check(&KEY, &code, 1001), CheckOutcome::NotPending(Status::Canceled));
        let (mut w, code) = new(Policy::default());
        w.delivery_failed();
        assert_eq!(w.check(&KEY, &code, 1001), CheckOutcome::NotPending(Status::Failed));
    }

    #[test]
    fn policy_bounds_are_enforced() {
        assert_eq!(Policy { code_length: 3, ..Policy::default() }.validate(), Err(PolicyError::CodeLength));
        assert_eq!(Policy { code_length: 11, ..Policy::default() }.validate(), Err(PolicyError::CodeLength));
        assert_eq!(Policy { ttl_secs: 5, ..Policy::default() }.validate(), Err(PolicyError::Ttl));
        assert!(Policy { code_length: 10, ..Policy::default() }.validate().is_ok());
    }

    #[test]
    fn destinations_are_masked() {
        assert_eq!(mask_destination("alice@example.com"), "a***@example.com");
        assert_eq!(mask_destination("+15551234567"), "+*******4567");
        assert_eq!(mask_destination("target-7"), "t***7");
        assert_eq!(mask_destination(""), "");
    }
}

#[cfg(test)]
mod store_tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Store;

    #[test]
    fn fifty_parallel_wrong_checks_evaluate_exactly_five() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_or_init(dir.path(), None, 1000).unwrap();
        let store = Arc::new(store);
        let key = *store.otp_key().unwrap().expose();
        let (v, code) =
            Verification::create(&mut rand_core::OsRng, &key, [1; 16], "console", "dev", Policy::default(), 1000)
                .unwrap();
        store.put_verification(&v, None).unwrap();
        let wrong = if code.as_str() == "000000" { "111111" } else { "000000" };
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    store.update_verification(&v.id, |v| v.check(&key, wrong, 1001)).unwrap().unwrap()
                })
            })
            .collect();
        let outcomes: Vec<CheckOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let evaluated = outcomes.iter().filter(|o| matches!(o, CheckOutcome::Wrong { .. })).count();
        let refused = outcomes.iter().filter(|o| **o == CheckOutcome::NotPending(Status::MaxAttemptsReached)).count();
        assert_eq!((evaluated, refused), (5, 45));
        // The right code is refused too: the counter, not luck, ended it.
        let after = store.update_verification(&v.id, |v| v.check(&key, &code, 1002)).unwrap().unwrap();
        assert_eq!(after, CheckOutcome::NotPending(Status::MaxAttemptsReached));
    }

    #[test]
    fn audit_events_are_written_with_the_change_they_record() {
        use crate::store::AuditEntry;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_or_init(dir.path(), None, 1000).unwrap();
        let key = *store.otp_key().unwrap().expose();
        let (v, _) =
            Verification::create(&mut rand_core::OsRng, &key, [1; 16], "console", "dev", Policy::default(), 1000)
                .unwrap();
        let entry = |event: &'static str, outcome: &str| AuditEntry {
            at: 1000,
            event,
            detail: serde_json::json!({ "verification": hex::encode(v.id), "outcome": outcome }),
        };
        let events = |store: &Store| -> Vec<(String, String)> {
            store
                .audit_since(1000, 100)
                .unwrap()
                .into_iter()
                .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("otp.")))
                .map(|e| (e["event"].as_str().unwrap().into(), e["detail"]["outcome"].as_str().unwrap().into()))
                .collect()
        };
        store.put_verification(&v, Some(entry("otp.generate", "created"))).unwrap();
        let outcome = store
            .update_verification_audited(
                &v.id,
                |v| v.check(&key, "nope00", 1001),
                |stored, outcome| {
                    assert_eq!(stored.attempts, 1, "the audit sees the state being written");
                    Some(entry("otp.check", if matches!(outcome, CheckOutcome::Wrong { .. }) { "wrong" } else { "?" }))
                },
            )
            .unwrap();
        assert!(matches!(outcome, Some(CheckOutcome::Wrong { .. })));
        // No event when the audit closure declines, and none for an unknown id.
        store.update_verification_audited(&v.id, |v| v.status, |_, _| None).unwrap();
        let unknown = store.update_verification_audited(&[9; 16], |v| v.status, |_, _| Some(entry("otp.x", "x")));
        assert_eq!(unknown.unwrap(), None);
        assert_eq!(
            events(&store),
            vec![("otp.generate".into(), "created".into()), ("otp.check".into(), "wrong".into())]
        );
    }

    #[test]
    fn attempts_survive_a_reopen_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        let key;
        let code;
        {
            let (store, _) = Store::open_or_init(dir.path(), None, 1000).unwrap();
            key = *store.otp_key().unwrap().expose();
            let (v, c) =
                Verification::create(&mut rand_core::OsRng, &key, [1; 16], "console", "dev", Policy::default(), 1000)
                    .unwrap();
            store.put_verification(&v, None).unwrap();
            for _ in 0..4 {
                store.update_verification(&v.id, |v| v.check(&key, "nope00", 1001)).unwrap();
            }
            id = v.id;
            code = c;
        }
        let (store, created) = Store::open_or_init(dir.path(), None, 1002).unwrap();
        assert!(!created);
        assert_eq!(*store.otp_key().unwrap().expose(), key, "the OTP key persists");
        assert_eq!(
            store.update_verification(&id, |v| v.check(&key, "nope00", 1003)).unwrap(),
            Some(CheckOutcome::Wrong { attempts_left: 0 })
        );
        assert_eq!(
            store.update_verification(&id, |v| v.check(&key, &code, 1003)).unwrap(),
            Some(CheckOutcome::NotPending(Status::MaxAttemptsReached)),
            "a restart does not reset the counter"
        );
        assert_eq!(store.update_verification(&[9; 16], |v| v.status).unwrap(), None);
        assert_eq!(store.sweep_verifications(1000 + 600 + 3601, 3600).unwrap(), 1);
    }
}
