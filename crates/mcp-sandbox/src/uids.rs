//! Per-sandbox uids: when the gateway runs as root with a configured uid
//! range, every running sandbox gets a uid of its own from the range, so
//! `RLIMIT_NPROC` (counted per uid) is really per sandbox and one task's
//! fork bomb cannot starve another, even without cgroups. The uid goes back
//! to the range when the task's host state is torn down (after its
//! processes were killed).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// `sandbox.uid_range`: `count` uids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub start: u32,
    pub count: u32,
}

impl UidRange {
    /// Checks the range: not empty, no root, no overflow.
    pub fn validate(self) -> Result<UidRange, String> {
        if self.count == 0 {
            return Err("sandbox.uid_range.count must be at least 1".to_owned());
        }
        if self.start == 0 {
            return Err("sandbox.uid_range must not contain uid 0 (root)".to_owned());
        }
        if self.start.checked_add(self.count).is_none() {
            return Err("sandbox.uid_range runs past the largest uid".to_owned());
        }
        Ok(self)
    }

    pub fn contains(self, uid: u32) -> bool {
        uid >= self.start && uid - self.start < self.count
    }
}

/// The uids of a range and which are leased.
#[derive(Debug)]
pub(crate) struct UidPool {
    range: UidRange,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Offset of the next uid to try: leases go round the range, so a uid
    /// is reused as late as possible.
    cursor: u32,
    leased: BTreeSet<u32>,
}

impl UidPool {
    pub(crate) fn new(range: UidRange) -> Arc<UidPool> {
        Arc::new(UidPool {
            range,
            state: Mutex::new(PoolState::default()),
        })
    }

    pub(crate) fn range(&self) -> UidRange {
        self.range
    }

    /// A free uid, or `None` when every uid of the range is in use.
    pub(crate) fn lease(self: &Arc<Self>) -> Option<UidLease> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..self.range.count {
            let uid = self.range.start + st.cursor;
            st.cursor = (st.cursor + 1) % self.range.count;
            if st.leased.insert(uid) {
                return Some(UidLease {
                    pool: self.clone(),
                    uid,
                });
            }
        }
        None
    }

    /// How many uids are leased now.
    pub(crate) fn in_use(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leased
            .len()
    }
}

/// One sandbox's uid; back to the pool on drop.
#[derive(Debug)]
pub(crate) struct UidLease {
    pool: Arc<UidPool>,
    uid: u32,
}

impl UidLease {
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leased
            .remove(&self.uid);
    }
}
