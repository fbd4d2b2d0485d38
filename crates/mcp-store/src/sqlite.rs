//! The SQLite backend: one database file per gateway (or per test), WAL
//! journal, embedded migrations.

use std::path::Path;
use std::time::Duration;

use mcp_core::{TaskId, TaskRecord, TaskResult, TaskState};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::gate::Gate;
use crate::rows::{
    DecisionLogRow, DecisionRow, TaskRow, from_ms, list_to_json, map_to_json, to_i64, to_ms,
};
use crate::{
    DecisionDetails, DecisionLogEntry, DecisionQuery, DecisionRecord, IdempotencyClaim,
    IdempotencyKey, MAX_PAGE, MAX_TASK_PAGE, PendingApproval, StoreError, StoreWrite, TaskQuery,
    TaskStore,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another writer before giving up. Writes
/// are single short statements, so 5 s only runs out when something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `list_tasks`: every pair of the filter has a match among the task's.
const LIST_TASKS_SQL: &str = crate::sql::list_tasks_sql!(
    "NOT EXISTS (SELECT 1 FROM json_each($7) f WHERE NOT EXISTS \
     (SELECT 1 FROM json_each(tasks.metadata) m WHERE m.key = f.key AND m.value = f.value))"
);

crate::backend::task_store_backend!(SqliteStore, sqlx::Sqlite);

/// Connections of a file store: writes take one at a time (the write
/// gate), reads share the rest.
pub(crate) const MAX_CONNECTIONS: u32 = 4;

/// SQLite page cache per connection, in KiB (the task store's and the
/// audit log's).
pub(crate) const CACHE_KIB: u32 = 512;

/// A [`TaskStore`] on SQLite.
///
/// Records round-trip at millisecond precision: timestamps are truncated to
/// the millisecond on write and come back in UTC.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Taken by every write: this process's writers of the file queue
    /// instead of sleeping in SQLite's busy handler (see `gate`).
    gate: Gate,
}

impl SqliteStore {
    /// Opens (creating it and its parent directory if missing) the database
    /// file at `path` and brings its schema up to date.
    ///
    /// Connections use WAL, `synchronous = NORMAL` (a power loss may drop the
    /// last commits but never corrupts the file), a 5 s busy timeout and
    /// foreign keys.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, BUSY_TIMEOUT).await
    }

    /// [`SqliteStore::open`] with another busy timeout (tests use none, to
    /// see that this process's writers never need one).
    pub(crate) async fn open_with(
        path: &Path,
        busy_timeout: Duration,
    ) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Blocking, but this runs once at startup before any request.
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // SQLite's default page cache is 2 MiB per connection, filled
            // as the database grows: with a pool of ten that read as RSS
            // growing by megabytes over the first 10 000 tasks. Pages not
            // cached here are still in the kernel's page cache.
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        // Connections are never closed for idleness or age, and all of
        // them are opened below, once the file is migrated: opened lazily,
        // the pool grew only under the first concurrent load and idle
        // connections were closed and reopened later, so the process's
        // memory and descriptors moved with the traffic instead of staying
        // flat. (Opening them all at connect raced the first one's switch
        // to WAL: "database is locked".)
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        // The file exists now, so the gate is keyed by its canonical path.
        let store = Self::migrated(pool, crate::gate::for_file(path)).await?;
        let mut all = Vec::with_capacity(MAX_CONNECTIONS as usize);
        for _ in 0..MAX_CONNECTIONS {
            all.push(store.pool.acquire().await?);
        }
        drop(all);
        Ok(store)
    }

    /// Opens a private in-memory database, for tests and benchmarks. The pool
    /// holds exactly one connection that never expires, because every SQLite
    /// connection to `:memory:` would otherwise see its own empty database.
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(":memory:")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Self::migrated(pool, crate::gate::private()).await
    }

    async fn migrated(pool: SqlitePool, gate: Gate) -> Result<SqliteStore, StoreError> {
        {
            let _write = gate.lock().await;
            MIGRATOR.run(&pool).await?;
        }
        Ok(SqliteStore { pool, gate })
    }

    /// Closes every connection, waiting for running queries; the file is
    /// checkpointed and can be reopened at once.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Held across each write: this process's writers of the file queue
    /// at its gate (see `gate`).
    async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Gates are per canonical file path in this process, and private to
    /// an in-memory database: one gate means one database.
    fn shares_database(&self, audit: &crate::AuditLog) -> bool {
        audit
            .sqlite_gate()
            .is_some_and(|gate| std::sync::Arc::ptr_eq(&self.gate, gate))
    }
}
