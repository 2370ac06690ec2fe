//! Keeps the redb file usable across I/O failures. After one failed write redb
//! refuses every later operation ("previous I/O error") until the file is closed and
//! opened again, so a disk that was full for a moment would block every write, a
//! key revocation included, until a restart. The [`Handle`] closes the file at the
//! first such error and opens it again (redb repairs it, as after a crash) at the
//! next use or probe once the disk takes writes again.
//!
//! Nothing acknowledged is lost: a commit that failed was never acknowledged, and
//! every acknowledged one was durable before the answer went out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Store;
use crate::seal::Sealer;
use crate::store::measured::OpCounter;
use crate::store::ports::OpStats;
use crate::store::StoreError;

/// How often a use of a closed store tries to open it again; the server's
/// once-a-second probe tries too, so an idle server heals without traffic.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The store file, open or waiting to be opened again.
pub(super) struct Handle {
    path: PathBuf,
    slot: Mutex<Slot>,
    last_try: Mutex<Option<Instant>>,
    stats: OpCounter,
}

enum Slot {
    Open(Arc<Store>),
    /// An I/O error happened; the old handle closes once its last user is done.
    Closing {
        old: Arc<Store>,
        cause: String,
    },
    /// Closed, waiting for the disk; the unsealing key is kept for the reopen.
    Closed {
        sealer: Sealer,
        cause: String,
    },
    /// Another thread is closing or opening the file right now.
    Busy {
        cause: String,
    },
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("path", &self.path).field("open", &self.is_open()).finish()
    }
}

impl Handle {
    /// Wraps an open store.
    pub(super) fn new(store: Store) -> Self {
        Self {
            path: store.path().to_owned(),
            slot: Mutex::new(Slot::Open(Arc::new(store))),
            last_try: Mutex::new(None),
            stats: OpCounter::default(),
        }
    }

    /// The store file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// True while the file is open and took its last write.
    pub(super) fn is_open(&self) -> bool {
        matches!(*lock(&self.slot), Slot::Open(_))
    }

    /// The open store. A closed one is opened again first when a try is due (or
    /// `now` asks for one); while that fails, the answer says why. Blocking: call it
    /// on the blocking pool.
    pub(super) fn current(&self, now: bool) -> Result<Arc<Store>, StoreError> {
        if let Slot::Open(store) = &*lock(&self.slot) {
            return Ok(Arc::clone(store));
        }
        if now || self.try_due() {
            self.heal();
        }
        match &*lock(&self.slot) {
            Slot::Open(store) => Ok(Arc::clone(store)),
            Slot::Closing { cause, .. } | Slot::Closed { cause, .. } | Slot::Busy { cause } => {
                Err(StoreError::Unavailable(format!(
                    "the store {} is closed after a failed write and is reopened once the disk takes writes \
                     again ({cause})",
                    self.path.display()
                )))
            }
        }
    }

    /// Counts a call of `op` that took `took`.
    pub(super) fn record(&self, op: &'static str, took: Duration, failed: bool) {
        self.stats.record(op, took, failed);
    }

    /// Records that `op` failed on `store` with `e`: for an I/O error the file is
    /// closed so that the next use opens it afresh.
    pub(super) fn failed(&self, store: &Arc<Store>, op: &'static str, e: &StoreError) {
        if !e.is_disk() {
            return;
        }
        let mut slot = lock(&self.slot);
        if let Slot::Open(open) = &*slot {
            if Arc::ptr_eq(open, store) {
                tracing::error!(op, error = %e, "a store write failed: the store is reopened once the disk takes \
                    writes again; /readyz answers 503 until then");
                *slot = Slot::Closing { old: Arc::clone(store), cause: format!("`{op}`: {e}") };
            }
        }
    }

    /// Counts so far, by operation.
    pub(super) fn stats(&self) -> Vec<OpStats> {
        self.stats.stats()
    }

    fn try_due(&self) -> bool {
        let mut last = lock(&self.last_try);
        let due = last.is_none_or(|at| at.elapsed() >= RETRY_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// One step towards an open file: close the failed handle once nobody uses it,
    /// then open the file again and prove it writable. The slot is not locked during
    /// the file work, so other callers get their answer at once meanwhile.
    fn heal(&self) {
        let taken = {
            let mut slot = lock(&self.slot);
            match &*slot {
                Slot::Open(_) | Slot::Busy { .. } => return,
                Slot::Closing { cause, .. } | Slot::Closed { cause, .. } => {
                    let cause = cause.clone();
                    std::mem::replace(&mut *slot, Slot::Busy { cause })
                }
            }
        };
        let (sealer, cause) = match taken {
            Slot::Closing { old, cause } => match Arc::try_unwrap(old) {
                Ok(store) => (store.close(), cause),
                Err(old) => {
                    // A call that began before the failure still holds it.
                    *lock(&self.slot) = Slot::Closing { old, cause };
                    return;
                }
            },
            Slot::Closed { sealer, cause } => (sealer, cause),
            other => {
                *lock(&self.slot) = other;
                return;
            }
        };
        let next = match Store::reopen(&self.path, sealer) {
            Ok(store) => {
                tracing::warn!(store = %self.path.display(), "the store takes writes again");
                Slot::Open(Arc::new(store))
            }
            Err((sealer, e)) => {
                tracing::debug!(error = %e, "the store cannot be reopened yet");
                Slot::Closed { sealer, cause: if e.is_disk() { format!("reopening: {e}") } else { cause } }
            }
        };
        *lock(&self.slot) = next;
    }
}

/// A poisoned lock only means another thread panicked while holding it; the slot
/// itself is always left in a valid state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
