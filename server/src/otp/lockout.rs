//! Second-factor lockout. Wrong codes are counted per API key (step-up, every
//! channel) and per TOTP account (the OTP API), across verifications: starting a new
//! verification never buys new guesses. After `max_failures` wrong codes within the
//! window the subject is locked, each lock twice as long as the one before (up to a
//! cap) until a right code or an administrator clears it. The guard is stored in the
//! same transaction as the check it counts (`store::guard`), so the count holds under
//! concurrency and across restarts.

use serde::{Deserialize, Serialize};

/// How many wrong codes, in what window, lock for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Wrong codes allowed within `window_secs`; the next one locks.
    pub max_failures: u32,
    /// Sliding window over which failures are counted.
    pub window_secs: u64,
    /// First lock's length; each further lock (without a right code between) doubles it.
    pub lock_secs: u64,
    /// Longest lock.
    pub max_lock_secs: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self { max_failures: 10, window_secs: 3600, lock_secs: 3600, max_lock_secs: 7 * 86_400 }
    }
}

/// The lockout state of one subject (an API key's step-up, or one TOTP account).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// Times of the wrong codes still inside the window (at most `max_failures`).
    #[serde(default)]
    pub failures: Vec<u64>,
    /// Checks are refused, without comparing, until this time.
    #[serde(default)]
    pub locked_until: Option<u64>,
    /// Locks since the last right code (or unlock): the next lock lasts
    /// `lock_secs · 2^lockouts`.
    #[serde(default)]
    pub lockouts: u32,
    /// The key's pending step-up verification (hex id): a new handshake reuses it
    /// instead of opening a second one with fresh attempts.
    #[serde(default)]
    pub pending_step_up: Option<String>,
}

impl Guard {
    /// Seconds until the lock ends, when locked at `now`.
    pub fn locked(&self, now: u64) -> Option<u64> {
        self.locked_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Counts a wrong code at `now`; returns the lock's end when this one locks.
    pub fn record_failure(&mut self, now: u64, policy: &LockoutPolicy) -> Option<u64> {
        self.failures.retain(|at| at.saturating_add(policy.window_secs) > now);
        self.failures.push(now);
        if self.failures.len() < policy.max_failures.max(1) as usize {
            return None;
        }
        let factor = 1u64 << self.lockouts.min(20);
        let until = now.saturating_add(policy.lock_secs.saturating_mul(factor).min(policy.max_lock_secs));
        self.locked_until = Some(until);
        self.lockouts = self.lockouts.saturating_add(1);
        self.failures.clear();
        Some(until)
    }

    /// A right code: the count and the backoff start again.
    pub fn record_success(&mut self) {
        self.failures.clear();
        self.locked_until = None;
        self.lockouts = 0;
    }

    /// An administrator's unlock: as after a right code.
    pub fn unlock(&mut self) {
        self.record_success();
    }

    /// Wrong codes still counted at `now`.
    pub fn recent_failures(&self, now: u64, policy: &LockoutPolicy) -> usize {
        self.failures.iter().filter(|at| at.saturating_add(policy.window_secs) > now).count()
    }

    /// True when nothing is worth keeping.
    pub fn is_clear(&self) -> bool {
        self.failures.is_empty() && self.locked_until.is_none() && self.lockouts == 0 && self.pending_step_up.is_none()
    }
}

/// Store key of an API key's step-up guard.
pub fn step_up_subject(owner: &[u8; 16]) -> Vec<u8> {
    let mut key = b"key:".to_vec();
    key.extend_from_slice(owner);
    key
}

/// Store key of a TOTP account's guard (the API's accounts; `@key` is the step-up's
/// own, guarded by [`step_up_subject`]).
pub fn totp_subject(owner: &[u8; 16], account: &str) -> Vec<u8> {
    let mut key = b"totp:".to_vec();
    key.extend_from_slice(owner);
    key.extend_from_slice(account.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockoutPolicy =
        LockoutPolicy { max_failures: 3, window_secs: 100, lock_secs: 1000, max_lock_secs: 3500 };

    #[test]
    fn the_nth_failure_in_the_window_locks_and_locks_double() {
        let mut g = Guard::default();
        assert_eq!(g.record_failure(10, &POLICY), None);
        assert_eq!(g.record_failure(20, &POLICY), None);
        assert_eq!(g.locked(20), None);
        assert_eq!(g.record_failure(30, &POLICY), Some(1030));
        assert_eq!(g.locked(30), Some(1000));
        assert_eq!(g.locked(1030), None, "the lock ends");
        // The next lock lasts twice as long, then it is capped.
        for at in [1040, 1041] {
            assert_eq!(g.record_failure(at, &POLICY), None);
        }
        assert_eq!(g.record_failure(1042, &POLICY), Some(3042));
        for at in [4000, 4001] {
            g.record_failure(at, &POLICY);
        }
        assert_eq!(g.record_failure(4002, &POLICY), Some(7502), "capped at max_lock_secs");
        g.record_success();
        assert_eq!(g, Guard::default());
    }

    #[test]
    fn failures_leave_the_window() {
        let mut g = Guard::default();
        g.record_failure(0, &POLICY);
        g.record_failure(50, &POLICY);
        assert_eq!(g.recent_failures(120, &POLICY), 1);
        assert_eq!(g.record_failure(120, &POLICY), None, "the first failure left the window");
        assert_eq!(g.record_failure(121, &POLICY), Some(1121));
    }

    #[test]
    fn subjects_do_not_collide() {
        assert_ne!(step_up_subject(&[1; 16]), totp_subject(&[1; 16], ""));
        assert_ne!(totp_subject(&[1; 16], "a"), totp_subject(&[1; 16], "b"));
    }
}
