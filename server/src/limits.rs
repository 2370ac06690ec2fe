//! Who pays for an OTP code, and who may call the OTP API how often.
//!
//! - A send is charged to the asking key first, so a key over its own budget never
//!   touches a destination's; then to the key's budget for that destination; then, for
//!   API sends only, to the destination's budget across all keys, which protects a
//!   recipient from many tenants. A key's step-up sends (to its own registered
//!   destination) are charged to that key's own buckets only: no other tenant can
//!   spend them, so no other tenant can lock a key out of its step-up.
//! - Destinations are normalised for these budgets only (never for delivery), so
//!   `A+1@X.com` and `a@x.com` share one bucket ([`destination_key`]).
//! - On `/v1/otp/*`, [`AuthFailureGuard`] counts the requests whose token fails, per
//!   client address, and refuses an address over its budget before any token work;
//!   authenticated calls are limited per key instead (`otp.api_rate_per_key`).

use std::net::IpAddr;

use dashmap::DashMap;
use onetrip_protocol::Channel;

use crate::config::OtpSettings;
use crate::otp::service::OtpError;
use crate::otp::Purpose;
use crate::shared::{gcra, RateDecision, SharedState};

/// Window of the per-key and per-destination send limits.
pub const SEND_WINDOW_SECS: u64 = 600;
/// Window of the OTP API's per-key and per-address request limits.
pub const API_WINDOW_SECS: u64 = 1;
/// Addresses the failure guard tracks before it drops refilled entries.
const GUARD_SWEEP_AT: usize = 100_000;

/// The destination as the send budgets see it: channel plus normalised address,
/// hashed (bucket names may live in Redis; they need not spell out addresses).
///
/// - email: lowercased; a `+tag` in the local part is dropped; for `gmail.com` and
///   `googlemail.com` the dots of the local part are dropped and the domain is
///   `gmail.com` (Gmail delivers all those variants to one mailbox);
/// - webhook: trimmed; a phone number (digits, spaces, `+-().`) keeps only `+` and
///   digits; anything else is also lowercased;
/// - console and TOTP labels: trimmed and lowercased.
///
/// Merging two addresses only ever makes a budget stricter, never looser.
pub fn destination_key(channel: Channel, to: &str) -> String {
    let normal = match channel {
        Channel::Email => normalise_email(to),
        Channel::Webhook => normalise_recipient(to),
        _ => to.trim().to_lowercase(),
    };
    let hash = blake3::hash(format!("{}\0{normal}", channel.as_str()).as_bytes());
    hash.to_hex()[..32].to_owned()
}

fn normalise_email(to: &str) -> String {
    let lower = to.trim().to_lowercase();
    let Some((local, domain)) = lower.rsplit_once('@') else { return lower };
    let domain = domain.trim_end_matches('.');
    let local = local.split('+').next().unwrap_or(local);
    match domain {
        "gmail.com" | "googlemail.com" => format!("{}@gmail.com", local.replace('.', "")),
        _ => format!("{local}@{domain}"),
    }
}

fn normalise_recipient(to: &str) -> String {
    let to = to.trim();
    let phone =
        to.bytes().any(|b| b.is_ascii_digit()) && to.bytes().all(|b| b.is_ascii_digit() || b" +-().".contains(&b));
    if phone {
        let digits: String = to.chars().filter(char::is_ascii_digit).collect();
        if to.starts_with('+') {
            format!("+{digits}")
        } else {
            digits
        }
    } else {
        to.to_lowercase()
    }
}

/// Charges one code sent by `owner` to `to`, cheapest refusal first (see the module
/// doc). `purpose` is [`Purpose::StepUp`] only for a key's step-up, whose destination
/// is the key's own registered one.
pub async fn charge_send(
    shared: &dyn SharedState,
    limits: &OtpSettings,
    owner: &[u8; 16],
    purpose: Purpose,
    channel: Channel,
    to: &str,
    now: u64,
) -> Result<(), OtpError> {
    let key = hex::encode(owner);
    let dest = destination_key(channel, to);
    charge(shared, &format!("otp-key:{key}"), limits.sends_per_key, now, "for this API key").await?;
    let own = format!("otp-key-dest:{key}:{dest}");
    charge(shared, &own, limits.sends_per_destination, now, "to this destination by this API key").await?;
    if purpose == Purpose::StepUp {
        return Ok(());
    }
    charge(shared, &format!("otp-dest:{dest}"), limits.sends_per_destination_global, now, "to this destination").await
}

async fn charge(
    shared: &dyn SharedState,
    bucket: &str,
    limit: u64,
    now: u64,
    scope: &'static str,
) -> Result<(), OtpError> {
    match shared.rate_limit(bucket, limit, SEND_WINDOW_SECS, now).await {
        Ok(RateDecision::Allowed) => Ok(()),
        Ok(RateDecision::Limited { retry_after }) => Err(OtpError::SendLimited { retry_after, scope }),
        Err(e) => Err(OtpError::Unavailable(e.to_string())),
    }
}

/// Counts one authenticated OTP API call of `owner` (replica-shared, so the budget
/// is the key's whichever replica answers).
pub async fn charge_api_call(
    shared: &dyn SharedState,
    limits: &OtpSettings,
    owner: &[u8; 16],
    now: u64,
) -> Result<RateDecision, crate::shared::SharedError> {
    shared.rate_limit(&format!("otp-api:{}", hex::encode(owner)), limits.api_rate_per_key, API_WINDOW_SECS, now).await
}

/// Per-replica count of failed authentications per client address on `/v1/otp/*`
/// (GCRA, `per_second` with bursts of as many). [`AuthFailureGuard::check`] only
/// reads, so successful requests never use an address's budget; only
/// [`AuthFailureGuard::record_failure`] charges it. IPv6 clients are counted per /64,
/// the block one subscriber usually holds.
#[derive(Debug, Default)]
pub struct AuthFailureGuard {
    arrivals: DashMap<IpAddr, u64>,
}

impl AuthFailureGuard {
    /// Refuses an address whose failures are over budget; counts nothing.
    pub fn check(&self, ip: IpAddr, per_second: u64, now: u64) -> RateDecision {
        let tat = self.arrivals.get(&client_block(ip)).map_or(0, |t| *t);
        gcra(tat, per_second, API_WINDOW_SECS, now).0
    }

    /// Counts one failed authentication from `ip`.
    pub fn record_failure(&self, ip: IpAddr, per_second: u64, now: u64) {
        if self.arrivals.len() > GUARD_SWEEP_AT {
            let now_ms = now.saturating_mul(1000);
            self.arrivals.retain(|_, tat| *tat > now_ms);
        }
        let mut tat = self.arrivals.entry(client_block(ip)).or_insert(0);
        // A refused charge leaves the value as it was: the address is refused anyway.
        *tat = gcra(*tat, per_second, API_WINDOW_SECS, now).1;
    }
}

/// The unit a client address is counted in: IPv4 addresses (also IPv4-mapped IPv6),
/// IPv6 /64 blocks.
fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryShared;

    const KEY_A: [u8; 16] = [0xa; 16];
    const KEY_B: [u8; 16] = [0xb; 16];

    fn limits(per_key: u64, per_dest: u64, global: u64) -> OtpSettings {
        OtpSettings {
            sends_per_key: per_key,
            sends_per_destination: per_dest,
            sends_per_destination_global: global,
            ..OtpSettings::default()
        }
    }

    async fn send(
        s: &MemoryShared,
        l: &OtpSettings,
        key: [u8; 16],
        channel: Channel,
        to: &str,
    ) -> Result<(), OtpError> {
        charge_send(s, l, &key, Purpose::Api, channel, to, 1_000).await
    }

    #[test]
    fn address_variants_share_one_destination_key() {
        let same = |a: &str, b: &str| destination_key(Channel::Email, a) == destination_key(Channel::Email, b);
        assert!(same("a+1@x.com", "a@x.com"));
        assert!(same("A@X.com", "a@x.com"));
        assert!(same(" a+promo+2@X.COM. ", "a@x.com"));
        assert!(same("a.b@gmail.com", "ab@gmail.com"));
        assert!(same("A.B+tag@GoogleMail.com", "ab@gmail.com"));
        assert!(!same("a.b@x.com", "ab@x.com"), "dots matter outside Gmail");
        assert!(!same("a@x.com", "b@x.com"));
        let hook = |a: &str, b: &str| destination_key(Channel::Webhook, a) == destination_key(Channel::Webhook, b);
        assert!(hook(" +1 (555) 010-0000 ", "+15550100000"));
        assert!(hook(" User-7 ", "user-7"));
        assert!(!hook("+15550100000", "15550100000"), "a country code is not a formatting character");
        assert_ne!(destination_key(Channel::Email, "a@x.com"), destination_key(Channel::Webhook, "a@x.com"));
    }

    #[tokio::test]
    async fn address_variants_are_charged_to_one_bucket() {
        let (s, l) = (MemoryShared::new(1), limits(100, 3, 100));
        for to in ["a+1@x.com", "A@X.com", "a+2@x.com"] {
            send(&s, &l, KEY_A, Channel::Email, to).await.unwrap();
        }
        let e = send(&s, &l, KEY_A, Channel::Email, "a@x.com").await.unwrap_err();
        assert!(matches!(e, OtpError::SendLimited { .. }), "{e}");
        for to in ["a.b@gmail.com", "ab+x@googlemail.com", "A.B@Gmail.com"] {
            send(&s, &l, KEY_A, Channel::Email, to).await.unwrap();
        }
        assert!(send(&s, &l, KEY_A, Channel::Email, "a.b.@gmail.com").await.is_err());
        assert!(send(&s, &l, KEY_A, Channel::Email, "ab@gmail.com").await.is_err());
    }

    #[tokio::test]
    async fn a_key_over_its_own_limit_never_touches_destination_buckets() {
        let (s, l) = (MemoryShared::new(1), limits(2, 2, 2));
        send(&s, &l, KEY_A, Channel::Console, "one").await.unwrap();
        send(&s, &l, KEY_A, Channel::Console, "two").await.unwrap();
        for _ in 0..10 {
            let e = send(&s, &l, KEY_A, Channel::Console, "victim").await.unwrap_err();
            assert!(matches!(e, OtpError::SendLimited { scope: "for this API key", .. }), "{e}");
        }
        // The victim's whole budget, across all keys, is still there for key B.
        for _ in 0..2 {
            send(&s, &l, KEY_B, Channel::Console, "victim").await.unwrap();
        }
    }

    #[tokio::test]
    async fn destination_budgets_are_per_key_under_a_global_cap() {
        let (s, l) = (MemoryShared::new(1), limits(100, 2, 3));
        send(&s, &l, KEY_A, Channel::Console, "bob").await.unwrap();
        send(&s, &l, KEY_A, Channel::Console, "bob").await.unwrap();
        let e = send(&s, &l, KEY_A, Channel::Console, "bob").await.unwrap_err();
        assert!(matches!(e, OtpError::SendLimited { scope: "to this destination by this API key", .. }), "{e}");
        send(&s, &l, KEY_B, Channel::Console, "bob").await.unwrap();
        let e = send(&s, &l, KEY_B, Channel::Console, "bob").await.unwrap_err();
        assert!(matches!(e, OtpError::SendLimited { scope: "to this destination", .. }), "the global cap: {e}");
    }

    #[tokio::test]
    async fn step_up_sends_ignore_the_global_cap_that_other_keys_fill() {
        let (s, l) = (MemoryShared::new(1), limits(100, 5, 5));
        for _ in 0..5 {
            send(&s, &l, KEY_B, Channel::Email, "admin@x.com").await.unwrap();
        }
        assert!(send(&s, &l, KEY_B, Channel::Email, "admin@x.com").await.is_err());
        for _ in 0..5 {
            charge_send(&s, &l, &KEY_A, Purpose::StepUp, Channel::Email, "admin@x.com", 1_000).await.unwrap();
        }
        let e = charge_send(&s, &l, &KEY_A, Purpose::StepUp, Channel::Email, "admin@x.com", 1_000).await.unwrap_err();
        assert!(matches!(e, OtpError::SendLimited { scope: "to this destination by this API key", .. }), "{e}");
    }

    #[test]
    fn the_failure_guard_counts_only_failures_and_ipv6_per_64() {
        let g = AuthFailureGuard::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..1000 {
            assert_eq!(g.check(ip, 3, 100), RateDecision::Allowed, "checks alone never count");
        }
        for _ in 0..3 {
            g.record_failure(ip, 3, 100);
        }
        assert_eq!(g.check("2001:db8::ffff".parse().unwrap(), 3, 100), RateDecision::Limited { retry_after: 1 });
        assert_eq!(g.check("2001:db8:0:1::1".parse().unwrap(), 3, 100), RateDecision::Allowed, "another /64");
        assert_eq!(g.check("127.0.0.1".parse().unwrap(), 3, 100), RateDecision::Allowed);
        assert_eq!(g.check(ip, 3, 101), RateDecision::Allowed, "failures drain at the configured rate");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        g.record_failure(mapped, 1, 100);
        assert_eq!(g.check("10.0.0.1".parse().unwrap(), 1, 100), RateDecision::Limited { retry_after: 1 });
    }
}
