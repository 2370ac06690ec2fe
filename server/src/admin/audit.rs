//! `audit` a page at a time, newest first: a page is the newest `limit` events older
//! than a cursor, and says where the next (older) page starts, so a long log is
//! never cut off silently.
//!
//! The audit port reads "the newest N events since a time" and knows no upper bound,
//! so a page older than the cursor reads the events newer than it too and drops
//! them: reaching far back costs what lies in between. Events are appended with the
//! time of their change, so times only grow along the log; a cursor names the
//! oldest second shown and how many events of that second were shown, which no
//! later append can change.

use serde::Deserialize;

use super::answers::{AuditEvent, AuditPage};
use super::AdminError;
use crate::store::{StateStore, StoreError};

/// Where the next page of `audit` starts: before the newest `skip` events of second
/// `at` (and everything after that second). Written `AT.SKIP`, e.g. `1795600000.3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    /// Unix second of the oldest event shown so far.
    pub at: u64,
    /// Events of that second shown so far.
    pub skip: usize,
}

impl std::fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.at, self.skip)
    }
}

impl std::str::FromStr for AuditCursor {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || AdminError::Invalid(format!("`{s}` is not an audit cursor (`AT.SKIP`, as `onetrip audit` prints it)"));
        let (at, skip) = s.split_once('.').ok_or_else(bad)?;
        Ok(AuditCursor { at: at.parse().map_err(|_| bad())?, skip: skip.parse().map_err(|_| bad())? })
    }
}

fn at(event: &serde_json::Value) -> u64 {
    event["at"].as_u64().unwrap_or(0)
}

impl AuditCursor {
    /// How many of `events` (oldest first, the newest of the log) are older than the
    /// cursor: the rest is its newer end.
    fn older(&self, events: &[serde_json::Value]) -> usize {
        let mut cut = events.len();
        let mut skipped = 0;
        while let Some(e) = cut.checked_sub(1).map(|i| &events[i]) {
            match at(e) {
                t if t > self.at => {}
                t if t == self.at && skipped < self.skip => skipped += 1,
                _ => break,
            }
            cut -= 1;
        }
        cut
    }

    /// The cursor after `page` (oldest first, not empty), shown after `previous`.
    fn after(page: &[serde_json::Value], previous: Option<AuditCursor>) -> AuditCursor {
        let oldest = page.first().map_or(0, at);
        let shown = page.iter().filter(|e| at(e) == oldest).count();
        let before = previous.filter(|p| p.at == oldest).map_or(0, |p| p.skip);
        AuditCursor { at: oldest, skip: shown + before }
    }
}

/// The newest `limit` events at or after `since` and older than `before`, oldest first.
pub(super) async fn audit_page(
    store: &dyn StateStore,
    since: u64,
    limit: usize,
    before: Option<AuditCursor>,
) -> Result<AuditPage, AdminError> {
    let limit = limit.max(1);
    // One more than the page tells whether older events exist.
    let mut want = limit.saturating_add(1).saturating_add(before.map_or(0, |c| c.skip));
    loop {
        let events = store.audit_since(since, want).await?;
        let exhausted = events.len() < want;
        let cut = before.map_or(events.len(), |c| c.older(&events));
        if cut > limit || exhausted || want == usize::MAX {
            let page = &events[cut.saturating_sub(limit)..cut];
            let next_before = (cut > limit).then(|| AuditCursor::after(page, before).to_string());
            let events = page
                .iter()
                .map(|e| AuditEvent::deserialize(e).map_err(|_| StoreError::Record("audit".into())))
                .collect::<Result<_, _>>()?;
            return Ok(AuditPage { events, next_before });
        }
        // Events newer than the cursor filled the read: read further back.
        want = want.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(ats: &[u64]) -> Vec<serde_json::Value> {
        ats.iter().map(|at| serde_json::json!({ "at": at, "event": "e", "detail": {} })).collect()
    }

    #[test]
    fn a_cursor_drops_the_newer_end_and_counts_events_within_its_second() {
        let log = events(&[10, 11, 11, 11, 12, 13]);
        assert_eq!(AuditCursor { at: 13, skip: 1 }.older(&log), 5);
        assert_eq!(AuditCursor { at: 11, skip: 0 }.older(&log), 4);
        assert_eq!(AuditCursor { at: 11, skip: 2 }.older(&log), 2);
        assert_eq!(AuditCursor { at: 11, skip: 3 }.older(&log), 1);
        assert_eq!(AuditCursor { at: 9, skip: 0 }.older(&log), 0);
        // The page 11, 11, 12 after a cursor at 12 (skip 1): its oldest second is 11,
        // two of its events shown.
        assert_eq!(
            AuditCursor::after(&log[2..5], Some(AuditCursor { at: 13, skip: 1 })),
            AuditCursor { at: 11, skip: 2 }
        );
        // A page within the cursor's own second adds to what that second showed.
        assert_eq!(
            AuditCursor::after(&log[1..2], Some(AuditCursor { at: 11, skip: 2 })),
            AuditCursor { at: 11, skip: 3 }
        );
    }

    #[test]
    fn cursors_read_back_as_printed_and_nonsense_is_named() {
        let c: AuditCursor = "1795600000.3".parse().unwrap();
        assert_eq!(c, AuditCursor { at: 1_795_600_000, skip: 3 });
        assert_eq!(c.to_string(), "1795600000.3");
        for bad in ["", "17", "x.1", "1.-1", "1.2.3"] {
            let e = bad.parse::<AuditCursor>().unwrap_err();
            assert!(matches!(e, AdminError::Invalid(_)) && e.to_string().contains("audit cursor"), "{bad}: {e}");
        }
    }
}
