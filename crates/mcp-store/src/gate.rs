//! One writer at a time per SQLite file, queued in this process.
//!
//! SQLite lets one connection write a database at a time. Another
//! connection that wants to write waits in SQLite's busy handler, which
//! *sleeps* (1, 2, 5, 10 … up to 100 ms between tries) instead of queueing.
//! The task store's connection pool and the audit log's connection write
//! the same file, so under concurrency most of a write's time went to those
//! sleeps (store writes averaged 8 ms with a p99 near 250 ms in the
//! benchmark's concurrent phases). Every writer of this process takes its
//! file's [`Gate`] first, so writers wait in FIFO order and wake as soon as
//! the previous write commits; the busy handler is left for other
//! processes (the CLI) writing the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// Held across one write (a statement or a transaction).
pub(crate) type Gate = Arc<tokio::sync::Mutex<()>>;

/// The gate of the database file at `path`, shared by every store and audit
/// log of this process on the same file (by canonical path, so call it once
/// the file exists).
pub(crate) fn for_file(path: &Path) -> Gate {
    static GATES: LazyLock<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Mutex::default);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(gate) = gates.get(&key).and_then(Weak::upgrade) {
        return gate;
    }
    // Forget the files no store has open any more.
    gates.retain(|_, g| g.strong_count() > 0);
    let gate = Gate::default();
    gates.insert(key, Arc::downgrade(&gate));
    gate
}

/// A gate of its own (an in-memory database, which no one else writes).
pub(crate) fn private() -> Gate {
    Gate::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gate_per_file_whatever_the_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.db");
        std::fs::write(&file, b"").unwrap();
        let a = for_file(&file);
        let b = for_file(&dir.path().join(".").join("t.db"));
        assert!(Arc::ptr_eq(&a, &b));
        let other = dir.path().join("u.db");
        std::fs::write(&other, b"").unwrap();
        assert!(!Arc::ptr_eq(&a, &for_file(&other)));
        // Dropped by everyone: the next opener gets a fresh one.
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
    }

    /// The task store and the audit log write the same file from many
    /// tasks at once with no busy timeout at all: SQLite would answer
    /// "database is locked" to any writer that found another one writing.
    /// Every write succeeds because they queue at the gate instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_and_audit_writers_of_one_file_queue_at_the_gate() {
        use crate::TaskStore as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = Arc::new(
            crate::SqliteStore::open_with(&path, std::time::Duration::ZERO)
                .await
                .unwrap(),
        );
        let audit = Arc::new(
            crate::AuditLog::open_with(
                &format!("sqlite://{}", path.display()),
                crate::AuditOptions::default(),
                std::time::Duration::ZERO,
            )
            .await
            .unwrap(),
        );
        let mut joins = Vec::new();
        for n in 0..64 {
            let (store, audit) = (Arc::clone(&store), Arc::clone(&audit));
            joins.push(tokio::spawn(async move {
                let t = crate::tests::command_task(vec![n.to_string()]);
                store.insert_task(&t).await?;
                audit.append(crate::tests::audit_event(n)).await?;
                store
                    .set_state(
                        t.id,
                        mcp_core::TaskState::Running,
                        time::OffsetDateTime::UNIX_EPOCH,
                    )
                    .await
            }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        assert_eq!(audit.records(0, None, 1000).await.unwrap().len(), 64);
    }
}
