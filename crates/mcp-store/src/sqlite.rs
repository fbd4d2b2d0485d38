//! The SQLite backend: one database file per gateway (or per test), WAL
//! journal, embedded migrations.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use mcp_core::{TaskId, TaskRecord, TaskResult, TaskState};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::gate::Gate;
use crate::rows::{
    DecisionLogRow, DecisionRow, TaskRow, decision_columns, decision_log_columns, from_ms,
    list_to_json, map_to_json, task_columns, to_i64, to_ms,
};
use crate::{
    APPROVAL_EXPIRED, DecisionDetails, DecisionLogEntry, DecisionQuery, DecisionRecord,
    IdempotencyClaim, IdempotencyKey, MAX_PAGE, MAX_TASK_PAGE, PendingApproval, StoreError,
    StoreWrite, TaskQuery, TaskStore,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another writer before giving up. Writes
/// are single short statements, so 5 s only runs out when something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The reason [`TaskStore::mark_interrupted`] records.
pub const INTERRUPTED: &str = "interrupted";

const INSERT_TASK_SQL: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
     ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
);

/// Tenant isolation lives in the query: another tenant's task is absent.
const GET_TASK_SQL: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE id = ?1 AND tenant = ?2"
);

const LIST_TASKS_SQL: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE tenant = ?1",
    " AND (?2 IS NULL OR state = ?2)",
    " AND (?3 IS NULL OR created_at >= ?3)",
    " AND (?4 IS NULL OR created_at < ?4)",
    " AND (?5 IS NULL OR id < ?5)",
    " AND NOT EXISTS (SELECT 1 FROM json_each(?7) f WHERE NOT EXISTS",
    " (SELECT 1 FROM json_each(tasks.metadata) m WHERE m.key = f.key AND m.value = f.value))",
    " ORDER BY id DESC LIMIT ?6"
);

const INSERT_DECISION_SQL: &str = concat!(
    "INSERT INTO decisions (",
    decision_log_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);

/// `list_decisions`: every filter is optional (a NULL parameter disables
/// it); keyset paging on `(at, id)`, which is also the order.
const LIST_DECISIONS_SQL: &str = concat!(
    "SELECT ",
    decision_log_columns!(),
    " FROM decisions
    WHERE (?1 IS NULL OR at >= ?1)
      AND (?2 IS NULL OR tenant = ?2)
      AND (?3 = 0 OR input IS NOT NULL)
      AND (?4 IS NULL OR at > ?4 OR (at = ?4 AND id > ?5))
    ORDER BY at, id
    LIMIT ?6"
);

const GET_DECISION_SQL: &str = concat!(
    "SELECT ",
    decision_columns!(),
    " FROM decisions WHERE id = ?1"
);

/// `set_state`: move to `?1` only from a non-terminal state that is not later
/// than the target (`?4` is the target's rank), so states never go backwards
/// and a terminal task (rank 3) never changes. `started_at` is set the first
/// time the task becomes running. One statement, so the guard holds across
/// connections and processes.
pub(crate) const SET_STATE_SQL: &str = "UPDATE tasks
    SET state = ?1,
        started_at = CASE WHEN ?1 = 'running' THEN COALESCE(started_at, ?2) ELSE started_at END
    WHERE id = ?3
      AND (CASE state WHEN 'created' THEN 0 WHEN 'queued' THEN 1 WHEN 'running' THEN 2 ELSE 3 END) <= ?4";

/// `finish`: write the outcome unless the task is already terminal.
pub(crate) const FINISH_SQL: &str = "UPDATE tasks
    SET state = ?1, completed_at = ?2, exit_code = ?3, stdout = ?4, stderr = ?5,
        stdout_truncated = ?6, stderr_truncated = ?7, cpu_time_ms = ?8, max_memory_kb = ?9,
        io_read_bytes = ?10, io_write_bytes = ?11, execution_time_ms = ?12, failure_reason = ?13
    WHERE id = ?14
      AND state NOT IN ('completed', 'failed', 'cancelled', 'timed_out', 'expired', 'rejected')";

/// `mark_interrupted`: fail every non-terminal task of one owner.
pub(crate) const INTERRUPT_SQL: &str = "UPDATE tasks
    SET state = 'failed', failure_reason = ?1, completed_at = ?2
    WHERE owner = ?3 AND state IN ('created', 'queued', 'running')";

/// The position of a non-terminal state in the forward order used by
/// [`SET_STATE_SQL`]; `None` for terminal states and for
/// `pending_approval`, which only approval leaves
/// ([`TaskStore::claim_pending`]) or an end ([`TaskStore::finish_pending`]).
pub(crate) fn rank(state: TaskState) -> Option<i64> {
    match state {
        TaskState::Created => Some(0),
        TaskState::Queued => Some(1),
        TaskState::Running => Some(2),
        TaskState::Completed
        | TaskState::Failed
        | TaskState::Cancelled
        | TaskState::TimedOut
        | TaskState::PendingApproval
        | TaskState::Expired
        | TaskState::Rejected => None,
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds the 24 columns of [`task_columns!`] of `task`, in order.
fn bind_task<'q>(
    q: SqliteQuery<'q>,
    task: &'q TaskRecord,
    empty: &'q TaskResult,
) -> SqliteQuery<'q> {
    let q = q
        .bind(task.id.to_string())
        .bind(task.kind.as_str())
        .bind(task.state.as_str())
        .bind(&task.tenant)
        .bind(&task.principal)
        .bind(&task.command)
        .bind(list_to_json(&task.args))
        .bind(task.profile.as_deref())
        .bind(to_ms(task.created_at))
        .bind(task.started_at.map(to_ms))
        .bind(task.completed_at.map(to_ms))
        .bind(map_to_json(&task.metadata));
    bind_result(q, task.result.as_ref(), empty)
        .bind(task.failure_reason.as_deref())
        .bind(&task.owner)
}

/// Binds the 10 outcome columns, `exit_code` (null without a result)
/// through `execution_time_ms`, of `result`.
fn bind_result<'q>(
    q: SqliteQuery<'q>,
    result: Option<&'q TaskResult>,
    empty: &'q TaskResult,
) -> SqliteQuery<'q> {
    let r = result.unwrap_or(empty);
    q.bind(result.map(|r| r.exit_code))
        .bind(r.stdout.as_slice())
        .bind(r.stderr.as_slice())
        .bind(r.stdout_truncated)
        .bind(r.stderr_truncated)
        .bind(to_i64(r.usage.cpu_time_ms))
        .bind(to_i64(r.usage.max_memory_kb))
        .bind(to_i64(r.usage.io_read_bytes))
        .bind(to_i64(r.usage.io_write_bytes))
        .bind(to_i64(r.execution_time_ms))
}

/// The error of a task insert: a second task with the same id is
/// [`StoreError::DuplicateTask`].
fn insert_error(err: sqlx::Error, id: TaskId) -> StoreError {
    if err
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
    {
        StoreError::DuplicateTask { id }
    } else {
        err.into()
    }
}

const INSERT_PENDING_SQL: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ", approval, approval_expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
     ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)"
);

/// `claim_pending`: approve only a pending, unexpired task of the tenant.
const CLAIM_PENDING_SQL: &str = "UPDATE tasks
    SET state = 'created', owner = ?1, decided_by = ?2
    WHERE id = ?3 AND tenant = ?4 AND state = 'pending_approval' AND approval_expires_at > ?5";

/// `finish_pending`: end a task only while it is still pending.
const FINISH_PENDING_SQL: &str = "UPDATE tasks
    SET state = ?1, completed_at = ?2, failure_reason = ?3, decided_by = COALESCE(?4, decided_by)
    WHERE id = ?5 AND tenant = ?6 AND state = 'pending_approval'";

const EXPIRE_PENDING_SQL: &str = "UPDATE tasks
    SET state = 'expired', completed_at = ?1, failure_reason = ?2
    WHERE state = 'pending_approval' AND approval_expires_at <= ?1";

/// `claim_idempotency_key`: take a free key, or one whose holder is older
/// than the window (`?7`); otherwise leave the holder in place.
const CLAIM_KEY_SQL: &str = "INSERT INTO idempotency_keys
    (tenant, principal, key, request_hash, task_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (tenant, principal, key) DO UPDATE
    SET request_hash = excluded.request_hash, task_id = excluded.task_id,
        created_at = excluded.created_at
    WHERE idempotency_keys.created_at < ?7";

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

    /// Explains why a guarded update touched no row.
    async fn refused(&self, id: TaskId, to: TaskState) -> StoreError {
        match self.pool.acquire().await {
            Ok(mut conn) => refused_on(&mut conn, id, to).await,
            Err(e) => e.into(),
        }
    }
}

/// The state of task `id` as `conn` sees it (inside its transaction, if any).
async fn current_state(
    conn: &mut SqliteConnection,
    id: TaskId,
) -> Result<Option<TaskState>, StoreError> {
    let raw: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    raw.map(|s| {
        s.parse::<TaskState>()
            .map_err(|reason| StoreError::Corrupt {
                id: id.to_string(),
                reason,
            })
    })
    .transpose()
}

/// Explains why a guarded update of task `id` touched no row.
async fn refused_on(conn: &mut SqliteConnection, id: TaskId, to: TaskState) -> StoreError {
    match current_state(conn, id).await {
        Ok(Some(from)) => StoreError::InvalidTransition { id, from, to },
        Ok(None) => StoreError::NotFound { id },
        Err(err) => err,
    }
}

/// The task store's writes that an audit record can carry in its own
/// transaction (see [`crate::AuditLog::append_with`]); [`TaskStore::apply`]
/// and the [`TaskStore`] methods of the same names run them on their own.
pub(crate) async fn write(conn: &mut SqliteConnection, w: &StoreWrite) -> Result<(), StoreError> {
    match w {
        StoreWrite::Decision { record, details } => insert_decision(conn, record, details).await,
        StoreWrite::InsertTask(task) => insert_task(conn, task).await,
        StoreWrite::InsertPending { task, approval } => insert_pending(conn, task, approval).await,
        StoreWrite::Finish {
            id,
            state,
            completed_at,
            result,
            failure_reason,
        } => {
            finish(
                conn,
                *id,
                *state,
                *completed_at,
                result.as_deref(),
                failure_reason.as_deref(),
            )
            .await
        }
    }
}

async fn insert_task(conn: &mut SqliteConnection, task: &TaskRecord) -> Result<(), StoreError> {
    let empty = TaskResult::default();
    let done = bind_task(sqlx::query(INSERT_TASK_SQL), task, &empty)
        .execute(&mut *conn)
        .await;
    done.map(|_| ()).map_err(|err| insert_error(err, task.id))
}

async fn finish(
    conn: &mut SqliteConnection,
    id: TaskId,
    state: TaskState,
    completed_at: OffsetDateTime,
    result: Option<&TaskResult>,
    failure_reason: Option<&str>,
) -> Result<(), StoreError> {
    if !state.is_terminal() {
        return Err(refused_on(conn, id, state).await);
    }
    let empty = TaskResult::default();
    let q = sqlx::query(FINISH_SQL)
        .bind(state.as_str())
        .bind(to_ms(completed_at));
    let done = bind_result(q, result, &empty)
        .bind(failure_reason)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(refused_on(conn, id, state).await);
    }
    Ok(())
}

async fn insert_decision(
    conn: &mut SqliteConnection,
    rec: &DecisionRecord,
    details: &DecisionDetails,
) -> Result<(), StoreError> {
    // A JSON value always serialises; the fallbacks keep this panic-free.
    let input = details
        .input
        .as_ref()
        .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned()));
    // Typed up to here; JSON only in the row. Through a `Value`, whose
    // object keys are sorted, so the stored text is what it always was.
    let obligations = serde_json::to_value(&details.obligations)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "{}".to_owned());
    sqlx::query(INSERT_DECISION_SQL)
        .bind(rec.id.hyphenated().to_string())
        .bind(to_ms(rec.at))
        .bind(&rec.tenant)
        .bind(&rec.principal)
        .bind(&rec.kind)
        .bind(&rec.summary)
        .bind(rec.allow)
        .bind(list_to_json(&rec.deny_reasons))
        .bind(&rec.policy_revision)
        .bind(rec.task_id.map(|t| t.to_string()))
        .bind(input)
        .bind(to_i64(details.latency_us))
        .bind(details.profile.as_deref())
        .bind(obligations)
        .bind(list_to_json(&details.warnings))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_pending(
    conn: &mut SqliteConnection,
    task: &TaskRecord,
    approval: &PendingApproval,
) -> Result<(), StoreError> {
    if task.state != TaskState::PendingApproval {
        return Err(StoreError::InvalidTransition {
            id: task.id,
            from: task.state,
            to: TaskState::PendingApproval,
        });
    }
    let empty = TaskResult::default();
    let details = serde_json::to_string(&approval.details).unwrap_or_else(|_| "null".to_owned());
    let done = bind_task(sqlx::query(INSERT_PENDING_SQL), task, &empty)
        .bind(details)
        .bind(to_ms(approval.expires_at))
        .execute(&mut *conn)
        .await;
    done.map(|_| ()).map_err(|err| insert_error(err, task.id))
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn apply(&self, w: &StoreWrite) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        write(&mut *self.pool.acquire().await?, w).await
    }

    fn shares_database(&self, audit: &crate::AuditLog) -> bool {
        // Gates are per canonical file path in this process, and private to
        // an in-memory database: one gate means one database.
        std::sync::Arc::ptr_eq(&self.gate, audit.gate())
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task.id))]
    async fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        insert_task(&mut *self.pool.acquire().await?, task).await
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id, state = state.as_str()))]
    async fn set_state(
        &self,
        id: TaskId,
        state: TaskState,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        let Some(target_rank) = rank(state) else {
            // Terminal states carry an outcome: they go through `finish`.
            return Err(self.refused(id, state).await);
        };
        let done = sqlx::query(SET_STATE_SQL)
            .bind(state.as_str())
            .bind(to_ms(at))
            .bind(id.to_string())
            .bind(target_rank)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(self.refused(id, state).await);
        }
        Ok(())
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id, state = state.as_str()))]
    async fn finish(
        &self,
        id: TaskId,
        state: TaskState,
        completed_at: OffsetDateTime,
        result: Option<&TaskResult>,
        failure_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        let mut conn = self.pool.acquire().await?;
        finish(&mut conn, id, state, completed_at, result, failure_reason).await
    }

    #[tracing::instrument(name = "store.read", skip_all, fields(task_id = %id))]
    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(GET_TASK_SQL)
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        row.map(TaskRecord::try_from).transpose()
    }

    async fn record_decision(&self, rec: &DecisionRecord) -> Result<(), StoreError> {
        self.record_decision_with(rec, &DecisionDetails::default())
            .await
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(decision_id = %rec.id))]
    async fn record_decision_with(
        &self,
        rec: &DecisionRecord,
        details: &DecisionDetails,
    ) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        insert_decision(&mut *self.pool.acquire().await?, rec, details).await
    }

    #[tracing::instrument(name = "store.read", skip_all)]
    async fn list_decisions(
        &self,
        query: &DecisionQuery,
    ) -> Result<Vec<DecisionLogEntry>, StoreError> {
        let rows: Vec<DecisionLogRow> = sqlx::query_as(LIST_DECISIONS_SQL)
            .bind(query.since.map(to_ms))
            .bind(query.tenant.as_deref())
            .bind(query.with_input)
            .bind(query.after.map(|(at, _)| to_ms(at)))
            .bind(query.after.map(|(_, id)| id.hyphenated().to_string()))
            .bind(i64::from(query.limit.min(MAX_PAGE)))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(DecisionLogEntry::try_from).collect()
    }

    #[tracing::instrument(name = "store.read", skip_all, fields(decision_id = %id))]
    async fn get_decision(&self, id: Uuid) -> Result<Option<DecisionRecord>, StoreError> {
        let row: Option<DecisionRow> = sqlx::query_as(GET_DECISION_SQL)
            .bind(id.hyphenated().to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(DecisionRecord::try_from).transpose()
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(owner = %owner))]
    async fn mark_interrupted(&self, owner: &str, at: OffsetDateTime) -> Result<u64, StoreError> {
        let _write = self.gate.lock().await;
        let done = sqlx::query(INTERRUPT_SQL)
            .bind(INTERRUPTED)
            .bind(to_ms(at))
            .bind(owner)
            .execute(&self.pool)
            .await?;
        let count = done.rows_affected();
        if count > 0 {
            tracing::warn!(count, owner, "marked interrupted tasks as failed");
        }
        Ok(count)
    }

    #[tracing::instrument(name = "store.read", skip_all, fields(tenant = %query.tenant))]
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(LIST_TASKS_SQL)
            .bind(&query.tenant)
            .bind(query.state.map(|s| s.as_str()))
            .bind(query.since.map(to_ms))
            .bind(query.until.map(to_ms))
            .bind(query.before.map(|id| id.to_string()))
            .bind(i64::from(query.limit.clamp(1, MAX_TASK_PAGE)))
            .bind(map_to_json(&query.metadata))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(TaskRecord::try_from).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task.id))]
    async fn insert_pending(
        &self,
        task: &TaskRecord,
        approval: &PendingApproval,
    ) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        insert_pending(&mut *self.pool.acquire().await?, task, approval).await
    }

    #[tracing::instrument(name = "store.read", skip_all, fields(task_id = %id))]
    async fn get_approval(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<Option<PendingApproval>, StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT approval, approval_expires_at, decided_by FROM tasks WHERE id = ?1 AND tenant = ?2",
        )
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        let Some((Some(raw), Some(expires), decided_by)) = row else {
            return Ok(None);
        };
        let details = serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            reason: format!("approval: {e}"),
        })?;
        Ok(Some(PendingApproval {
            details,
            expires_at: from_ms(&id.to_string(), "approval_expires_at", expires)?,
            decided_by,
        }))
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id))]
    async fn claim_pending(
        &self,
        tenant: &str,
        id: TaskId,
        owner: &str,
        decided_by: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let _write = self.gate.lock().await;
        let done = sqlx::query(CLAIM_PENDING_SQL)
            .bind(owner)
            .bind(decided_by)
            .bind(id.to_string())
            .bind(tenant)
            .bind(to_ms(at))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id, state = state.as_str()))]
    async fn finish_pending(
        &self,
        tenant: &str,
        id: TaskId,
        state: TaskState,
        at: OffsetDateTime,
        reason: &str,
        decided_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let _write = self.gate.lock().await;
        if !state.is_terminal() {
            return Err(StoreError::InvalidTransition {
                id,
                from: TaskState::PendingApproval,
                to: state,
            });
        }
        let done = sqlx::query(FINISH_PENDING_SQL)
            .bind(state.as_str())
            .bind(to_ms(at))
            .bind(reason)
            .bind(decided_by)
            .bind(id.to_string())
            .bind(tenant)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "store.write", skip_all)]
    async fn expire_pending(&self, at: OffsetDateTime) -> Result<u64, StoreError> {
        let _write = self.gate.lock().await;
        let done = sqlx::query(EXPIRE_PENDING_SQL)
            .bind(to_ms(at))
            .bind(APPROVAL_EXPIRED)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task))]
    async fn use_token(
        &self,
        jti: &str,
        task: TaskId,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let _write = self.gate.lock().await;
        let done = sqlx::query(
            "INSERT INTO used_approval_tokens (jti, task_id, used_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(task.to_string())
        .bind(to_ms(at))
        .bind(to_ms(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %key.task_id))]
    async fn claim_idempotency_key(
        &self,
        key: &IdempotencyKey,
        window_start: OffsetDateTime,
    ) -> Result<IdempotencyClaim, StoreError> {
        let _write = self.gate.lock().await;
        let done = sqlx::query(CLAIM_KEY_SQL)
            .bind(&key.tenant)
            .bind(&key.principal)
            .bind(&key.key)
            .bind(&key.request_hash)
            .bind(key.task_id.to_string())
            .bind(to_ms(key.at))
            .bind(to_ms(window_start))
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(IdempotencyClaim::New);
        }
        let (request_hash, task_id): (String, String) = sqlx::query_as(
            "SELECT request_hash, task_id FROM idempotency_keys \
             WHERE tenant = ?1 AND principal = ?2 AND key = ?3",
        )
        .bind(&key.tenant)
        .bind(&key.principal)
        .bind(&key.key)
        .fetch_one(&self.pool)
        .await?;
        let task_id = task_id
            .parse()
            .map_err(|e: mcp_core::TaskIdError| StoreError::Corrupt {
                id: key.key.clone(),
                reason: format!("idempotency_keys.task_id: {e}"),
            })?;
        Ok(IdempotencyClaim::Existing {
            request_hash,
            task_id,
        })
    }

    #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task))]
    async fn release_idempotency_key(
        &self,
        tenant: &str,
        principal: &str,
        key: &str,
        task: TaskId,
    ) -> Result<(), StoreError> {
        let _write = self.gate.lock().await;
        sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE tenant = ?1 AND principal = ?2 AND key = ?3 AND task_id = ?4",
        )
        .bind(tenant)
        .bind(principal)
        .bind(key)
        .bind(task.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "store.read", skip_all, fields(tenant = %tenant))]
    async fn cpu_ms_since(&self, tenant: &str, since: OffsetDateTime) -> Result<u64, StoreError> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(cpu_time_ms) FROM tasks WHERE tenant = ?1 AND completed_at >= ?2",
        )
        .bind(tenant)
        .bind(to_ms(since))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(total.unwrap_or(0)).unwrap_or(0))
    }
}
