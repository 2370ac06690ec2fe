//! The handshake key lifecycle, the same in every engine: every key has a finite
//! validity, a new key is made when the newest one nears its end, and a retired
//! key's private part is deleted from the store as soon as its `not_after` has
//! passed (the end of its rotation overlap). Deciding what to do ([`plan`]) is a
//! pure function of the stored validities, the time and the [`KeyPolicy`], so it is
//! tested without a clock; each engine applies a plan in one durable transaction
//! together with its audit entries.

/// Default validity of a handshake key: 30 days.
pub const DEFAULT_SERVER_KEY_LIFETIME_SECS: u64 = 30 * 86_400;
/// Default rotation overlap: the old key is still accepted for one day after its
/// successor appears, then destroyed.
pub const DEFAULT_SERVER_KEY_OVERLAP_SECS: u64 = 86_400;

/// How long handshake keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Validity of a new key, from its creation.
    pub lifetime_secs: u64,
    /// A successor is made when the newest key has this long left; the old key is
    /// accepted until its `not_after`, then destroyed.
    pub overlap_secs: u64,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { lifetime_secs: DEFAULT_SERVER_KEY_LIFETIME_SECS, overlap_secs: DEFAULT_SERVER_KEY_OVERLAP_SECS }
    }
}

/// A stored key's id and validity (its private part stays sealed).
pub type KeyValidity = ([u8; 8], u64, u64);

/// What the lifecycle changes at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Keys whose `not_after` has passed: deleted from the store.
    pub destroyed: Vec<[u8; 8]>,
    /// Keys valid longer than the policy allows (e.g. the year-9999 validity older
    /// stores gave their first key), with their new `not_after`.
    pub shortened: Vec<([u8; 8], u64)>,
    /// A new key was made: its `not_before` and `not_after` (the id is drawn when
    /// the plan is applied).
    pub rotate: Option<(u64, u64)>,
    /// The id of the key made, once applied.
    pub new_key_id: Option<[u8; 8]>,
}

impl KeyChanges {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.destroyed.is_empty() && self.shortened.is_empty() && self.rotate.is_none()
    }
}

/// What to do with the stored keys at `now` under `policy`.
///
/// - a key whose `not_after < now` is destroyed;
/// - a key valid beyond `max(not_before + lifetime, now + overlap)` is cut back to
///   it (never lengthened), so a key too old for the policy still gets an overlap;
/// - when no key is left, or the newest (latest `not_before`, as clients choose)
///   ends within `overlap`, a key valid `now ..= now + lifetime` is made.
pub fn plan(keys: &[KeyValidity], now: u64, policy: KeyPolicy) -> KeyChanges {
    let mut changes = KeyChanges::default();
    let mut live: Vec<(u64, u64)> = Vec::new();
    for &(id, not_before, not_after) in keys {
        if not_after < now {
            changes.destroyed.push(id);
            continue;
        }
        let cap = not_before.saturating_add(policy.lifetime_secs).max(now.saturating_add(policy.overlap_secs));
        if not_after > cap {
            changes.shortened.push((id, cap));
        }
        live.push((not_before, not_after.min(cap)));
    }
    let newest = live.iter().max();
    if newest.is_none_or(|&(_, not_after)| not_after <= now.saturating_add(policy.overlap_secs)) {
        changes.rotate = Some((now, now.saturating_add(policy.lifetime_secs)));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: KeyPolicy = KeyPolicy { lifetime_secs: 100, overlap_secs: 20 };

    #[test]
    fn a_key_is_left_alone_until_its_overlap_then_succeeded_then_destroyed() {
        let key = (*b"key00001", 1_000, 1_100);
        assert!(plan(&[key], 1_050, POLICY).is_empty());
        assert!(plan(&[key], 1_079, POLICY).is_empty());
        assert_eq!(plan(&[key], 1_080, POLICY).rotate, Some((1_080, 1_180)), "successor when 20 s are left");
        let successor = (*b"key00002", 1_080, 1_180);
        assert!(plan(&[key, successor], 1_100, POLICY).is_empty(), "the old key lives out its overlap");
        let after = plan(&[key, successor], 1_101, POLICY);
        assert_eq!(after.destroyed, vec![*b"key00001"], "and is destroyed the second it ends");
        assert_eq!((after.rotate, after.shortened.len()), (None, 0));
    }

    #[test]
    fn a_year_9999_key_is_cut_back_and_given_an_overlap() {
        // Stores made before keys had a lifetime: the first key was valid until 9999.
        let old = (*b"legacy01", 1_000, 253_402_300_799);
        let fresh = plan(&[old], 1_010, POLICY);
        assert_eq!(fresh.shortened, vec![(*b"legacy01", 1_100)], "cut to not_before + lifetime");
        assert_eq!(fresh.rotate, None);
        let ancient = plan(&[old], 5_000, POLICY);
        assert_eq!(ancient.shortened, vec![(*b"legacy01", 5_020)], "too old: it keeps only an overlap");
        assert_eq!(ancient.rotate, Some((5_000, 5_100)), "and gets its successor at once");
    }

    #[test]
    fn a_store_without_a_live_key_gets_one() {
        let expired = (*b"expired1", 0, 10);
        let changes = plan(&[expired], 500, POLICY);
        assert_eq!((changes.destroyed, changes.rotate), (vec![*b"expired1"], Some((500, 600))));
        assert_eq!(plan(&[], 500, POLICY).rotate, Some((500, 600)));
    }
}
