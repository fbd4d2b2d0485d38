//! The SQL both backends run. Parameters are written `$N`, which
//! PostgreSQL and sqlx's SQLite driver both read as "the N-th bound value",
//! so one statement serves both; the few that differ live beside their
//! backend (`sqlite.rs`, `pg.rs`).

use mcp_core::TaskState;

use crate::rows::{decision_columns, decision_log_columns, task_columns};

pub(crate) const INSERT_TASK_SQL: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
);

pub(crate) const INSERT_PENDING_SQL: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ", approval, approval_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)"
);

/// Tenant isolation lives in the query: another tenant's task is absent.
pub(crate) const GET_TASK_SQL: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE id = $1 AND tenant = $2"
);

/// `list_tasks` with a backend's metadata filter (`$7`, a JSON object of
/// strings: a task is kept when its metadata holds every pair), which is
/// the one part the two dialects spell differently.
macro_rules! list_tasks_sql {
    ($metadata_filter:literal) => {
        concat!(
            "SELECT ",
            $crate::rows::task_columns!(),
            " FROM tasks WHERE tenant = $1",
            " AND ($2 IS NULL OR state = $2)",
            " AND ($3 IS NULL OR created_at >= $3)",
            " AND ($4 IS NULL OR created_at < $4)",
            " AND ($5 IS NULL OR id < $5)",
            " AND ",
            $metadata_filter,
            " ORDER BY id DESC LIMIT $6"
        )
    };
}
pub(crate) use list_tasks_sql;

pub(crate) const INSERT_DECISION_SQL: &str = concat!(
    "INSERT INTO decisions (",
    decision_log_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
);

/// `list_decisions`: every filter is optional (a NULL parameter disables
/// it); keyset paging on `(at, id)`, which is also the order.
pub(crate) const LIST_DECISIONS_SQL: &str = concat!(
    "SELECT ",
    decision_log_columns!(),
    " FROM decisions
    WHERE ($1 IS NULL OR at >= $1)
      AND ($2 IS NULL OR tenant = $2)
      AND (NOT $3 OR input IS NOT NULL)
      AND ($4 IS NULL OR at > $4 OR (at = $4 AND id > $5))
    ORDER BY at, id
    LIMIT $6"
);

pub(crate) const GET_DECISION_SQL: &str = concat!(
    "SELECT ",
    decision_columns!(),
    " FROM decisions WHERE id = $1"
);

/// `set_state`: move to `$1` only from a non-terminal state that is not later
/// than the target (`$4` is the target's rank), so states never go backwards
/// and a terminal task (rank 3) never changes. `started_at` is set the first
/// time the task becomes running. One statement, so the guard holds across
/// connections and processes (PostgreSQL re-checks the `WHERE` of an
/// `UPDATE` on the row's newest version once it holds the row lock).
pub(crate) const SET_STATE_SQL: &str = "UPDATE tasks
    SET state = $1,
        started_at = CASE WHEN $1 = 'running' THEN COALESCE(started_at, $2) ELSE started_at END
    WHERE id = $3
      AND (CASE state WHEN 'created' THEN 0 WHEN 'queued' THEN 1 WHEN 'running' THEN 2 ELSE 3 END) <= $4";

/// `finish`: write the outcome unless the task is already terminal.
pub(crate) const FINISH_SQL: &str = "UPDATE tasks
    SET state = $1, completed_at = $2, exit_code = $3, stdout = $4, stderr = $5,
        stdout_truncated = $6, stderr_truncated = $7, cpu_time_ms = $8, max_memory_kb = $9,
        io_read_bytes = $10, io_write_bytes = $11, execution_time_ms = $12, failure_reason = $13
    WHERE id = $14
      AND state NOT IN ('completed', 'failed', 'cancelled', 'timed_out', 'expired', 'rejected')";

/// `mark_interrupted`: fail every non-terminal task of one owner.
pub(crate) const INTERRUPT_SQL: &str = "UPDATE tasks
    SET state = 'failed', failure_reason = $1, completed_at = $2
    WHERE owner = $3 AND state IN ('created', 'queued', 'running')";

pub(crate) const CURRENT_STATE_SQL: &str = "SELECT state FROM tasks WHERE id = $1";

pub(crate) const GET_APPROVAL_SQL: &str =
    "SELECT approval, approval_expires_at, decided_by FROM tasks WHERE id = $1 AND tenant = $2";

/// `claim_pending`: approve only a pending, unexpired task of the tenant.
pub(crate) const CLAIM_PENDING_SQL: &str = "UPDATE tasks
    SET state = 'created', owner = $1, decided_by = $2
    WHERE id = $3 AND tenant = $4 AND state = 'pending_approval' AND approval_expires_at > $5";

/// `finish_pending`: end a task only while it is still pending.
pub(crate) const FINISH_PENDING_SQL: &str = "UPDATE tasks
    SET state = $1, completed_at = $2, failure_reason = $3, decided_by = COALESCE($4, decided_by)
    WHERE id = $5 AND tenant = $6 AND state = 'pending_approval'";

pub(crate) const EXPIRE_PENDING_SQL: &str = "UPDATE tasks
    SET state = 'expired', completed_at = $1, failure_reason = $2
    WHERE state = 'pending_approval' AND approval_expires_at <= $1";

pub(crate) const USE_TOKEN_SQL: &str = "INSERT INTO used_approval_tokens (jti, task_id, used_at, expires_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING";

/// `claim_idempotency_key`: take a free key, or one whose holder is older
/// than the window (`$7`); otherwise leave the holder in place.
pub(crate) const CLAIM_KEY_SQL: &str = "INSERT INTO idempotency_keys
    (tenant, principal, key, request_hash, task_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (tenant, principal, key) DO UPDATE
    SET request_hash = excluded.request_hash, task_id = excluded.task_id,
        created_at = excluded.created_at
    WHERE idempotency_keys.created_at < $7";

pub(crate) const GET_KEY_SQL: &str = "SELECT request_hash, task_id FROM idempotency_keys \
     WHERE tenant = $1 AND principal = $2 AND key = $3";

pub(crate) const RELEASE_KEY_SQL: &str = "DELETE FROM idempotency_keys \
     WHERE tenant = $1 AND principal = $2 AND key = $3 AND task_id = $4";

/// A sum over no rows is NULL; the cast keeps PostgreSQL's `SUM(BIGINT)`
/// (a NUMERIC) an integer, and overflows fail like SQLite's.
pub(crate) const CPU_SINCE_SQL: &str = "SELECT CAST(SUM(cpu_time_ms) AS BIGINT) \
     FROM tasks WHERE tenant = $1 AND completed_at >= $2";

/// The position of a non-terminal state in the forward order used by
/// [`SET_STATE_SQL`]; `None` for terminal states and for
/// `pending_approval`, which only approval leaves
/// ([`crate::TaskStore::claim_pending`]) or an end
/// ([`crate::TaskStore::finish_pending`]).
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
