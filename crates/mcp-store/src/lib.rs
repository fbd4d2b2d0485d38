//! Durable storage for tasks, policy decisions and the audit trail.
//!
//! The gateway talks to a [`TaskStore`] trait object obtained from
//! [`open_store`], and to an [`AuditLog`]. Two backends implement both:
//! [`SqliteStore`] (`sqlite://` URLs; one file, the embedded default for one
//! host) and [`PgStore`] (`postgres://` / `postgresql://` URLs, options in
//! [`PgOptions`]; one database that several gateway processes share). They
//! run the same SQL (`sql.rs`, `backend.rs`) on equivalent schemas.
//!
//! Invariants:
//! - this is the only crate that uses `sqlx`; the schema lives in
//!   `migrations/<backend>/` (numbered alike on both backends) and is
//!   applied on open, idempotently; on PostgreSQL under an advisory lock,
//!   so replicas that start at once migrate one after the other, and a
//!   database migrated by a newer build is refused
//!   ([`StoreError::SchemaTooNew`]) before anything is written;
//! - a task in a terminal state (completed, failed, cancelled, timed out)
//!   never changes again, and non-terminal states only move forward
//!   (created → queued → running). The guard is part of the `UPDATE`
//!   statement itself, so it holds across connections and replicas;
//! - a task is visible only to its own tenant: [`TaskStore::get_task`]
//!   filters by tenant in SQL and answers `None` for another tenant's task;
//! - idempotency keys, approval tokens and pending approvals are rows of
//!   the one database, claimed by single statements: global across the
//!   processes that share it;
//! - the audit trail is one hash chain per database: appends are
//!   serialised across processes (SQLite's write lock, PostgreSQL's
//!   transaction-scoped advisory lock, see `audit.rs`) and `seq` is the
//!   primary key, so the chain can neither fork nor have gaps;
//! - [`TaskRecord::result`] is `Some` iff the stored `exit_code` is not null;
//! - timestamps are stored as Unix milliseconds: records round-trip exactly
//!   at millisecond precision (finer parts are truncated on write) and come
//!   back in UTC;
//! - `u64` counters are stored as signed 64-bit integers and saturate at
//!   `i64::MAX` on write;
//! - no command output, argv or environment is ever logged by this crate,
//!   and no database password: URLs are shown redacted and [`PgOptions`]
//!   keeps the URL in a `secrecy` type.

#![forbid(unsafe_code)]

mod audit;
mod backend;
mod error;
mod gate;
mod pg;
mod rows;
mod sql;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use mcp_core::{TaskId, TaskRecord, TaskResult, TaskState};
use time::OffsetDateTime;

pub use audit::{AuditLog, AuditOptions, MAX_AUDIT_PAGE};
pub use error::StoreError;
pub use pg::{PgOptions, PgStore};
pub use sqlite::SqliteStore;

/// The reason [`TaskStore::mark_interrupted`] records.
pub const INTERRUPTED: &str = "interrupted";

/// Where tasks and decisions are kept. Implementations are shared between
/// request handlers, so every method takes `&self`.
#[async_trait::async_trait]
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Stores a new task. [`StoreError::DuplicateTask`] if the id exists.
    async fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError>;

    /// Moves a task forward through the non-terminal states (created →
    /// queued → running), recording `at` as `started_at` the first time it
    /// becomes running. [`StoreError::InvalidTransition`] if the task is
    /// terminal, the move goes backwards or `state` is terminal (use
    /// [`TaskStore::finish`]); [`StoreError::NotFound`] if there is no task.
    async fn set_state(
        &self,
        id: TaskId,
        state: TaskState,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Puts a task in the terminal `state` with its outcome.
    /// [`StoreError::InvalidTransition`] if `state` is not terminal or the
    /// task already is (the first outcome is kept);
    /// [`StoreError::NotFound`] if there is no task.
    async fn finish(
        &self,
        id: TaskId,
        state: TaskState,
        completed_at: OffsetDateTime,
        result: Option<&TaskResult>,
        failure_reason: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The task, or `None` if it does not exist or belongs to another tenant.
    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// Stores a policy decision without decision-log details (see
    /// [`TaskStore::record_decision_with`]). Decision ids are request ids
    /// and are unique; recording the same id twice is a
    /// [`StoreError::Database`] error.
    async fn record_decision(&self, rec: &DecisionRecord) -> Result<(), StoreError>;

    /// Stores a policy decision with its decision-log details (the masked
    /// input, latency, obligations) in the same row, in one statement.
    async fn record_decision_with(
        &self,
        rec: &DecisionRecord,
        details: &DecisionDetails,
    ) -> Result<(), StoreError>;

    /// The decision made for request `id`, if any.
    async fn get_decision(&self, id: uuid::Uuid) -> Result<Option<DecisionRecord>, StoreError>;

    /// Decision-log entries in time order (`at`, then id), oldest first,
    /// filtered and paged by `query`. For `policy replay` and `policy log
    /// export`.
    async fn list_decisions(
        &self,
        query: &DecisionQuery,
    ) -> Result<Vec<DecisionLogEntry>, StoreError>;

    /// Fails every non-terminal task owned by `owner` with the reason
    /// [`INTERRUPTED`] and `completed_at = at`; returns how many. Run at
    /// startup: a task that was running when its replica died will never
    /// finish. Other owners' tasks are untouched.
    async fn mark_interrupted(&self, owner: &str, at: OffsetDateTime) -> Result<u64, StoreError>;

    /// One page of a tenant's tasks, newest first (see [`TaskQuery`]).
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError>;

    /// Checks that the database answers, for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new task waiting for approval (`task.state` must be
    /// `pending_approval`) with what approval needs, in one statement.
    async fn insert_pending(
        &self,
        task: &TaskRecord,
        approval: &PendingApproval,
    ) -> Result<(), StoreError>;

    /// The approval details of a tenant's task (pending or decided), or
    /// `None` if the task does not exist, belongs to another tenant or
    /// never needed approval.
    async fn get_approval(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<Option<PendingApproval>, StoreError>;

    /// Approves: moves the task from `pending_approval` to `created`, owned
    /// by `owner` (the replica that will run it), if it is still pending and
    /// its approval has not expired at `at`. `false` when it is not (another
    /// approver, a reject or the expiry came first).
    async fn claim_pending(
        &self,
        tenant: &str,
        id: TaskId,
        owner: &str,
        decided_by: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Ends a task that is still `pending_approval` in the terminal `state`
    /// (rejected, expired, cancelled) with `reason`. `false` when it is no
    /// longer pending.
    async fn finish_pending(
        &self,
        tenant: &str,
        id: TaskId,
        state: TaskState,
        at: OffsetDateTime,
        reason: &str,
        decided_by: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Expires every pending task whose approval expired at or before `at`
    /// (reason [`APPROVAL_EXPIRED`]); returns how many.
    async fn expire_pending(&self, at: OffsetDateTime) -> Result<u64, StoreError>;

    /// Records the use of approval token `jti`; `false` when it was used
    /// before (a replay).
    async fn use_token(
        &self,
        jti: &str,
        task: TaskId,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Claims an idempotency key for `key.task_id`. When another request
    /// holds the key and its row is not older than `window_start`, answers
    /// that request's hash and task instead ([`IdempotencyClaim::Existing`]).
    async fn claim_idempotency_key(
        &self,
        key: &IdempotencyKey,
        window_start: OffsetDateTime,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Releases a key claimed for `task` (its request failed before the task
    /// existed), so the next request with that key runs.
    async fn release_idempotency_key(
        &self,
        tenant: &str,
        principal: &str,
        key: &str,
        task: TaskId,
    ) -> Result<(), StoreError>;

    /// CPU time, in milliseconds, used by a tenant's tasks that finished at
    /// or after `since`. What the per-tenant CPU budget is charged from.
    async fn cpu_ms_since(&self, tenant: &str, since: OffsetDateTime) -> Result<u64, StoreError>;

    /// Runs one [`StoreWrite`] on its own, as the method of the same name
    /// does.
    async fn apply(&self, write: &StoreWrite) -> Result<(), StoreError>;

    /// Whether `audit` keeps its records in this store's database, so that
    /// [`AuditLog::append_with`] can commit this store's writes in the same
    /// transaction as an audit record. `false` unless a backend knows.
    fn shares_database(&self, audit: &AuditLog) -> bool {
        let _ = audit;
        false
    }
}

/// A write of the task store that can ride in an audit record's
/// transaction ([`AuditLog::append_with`]): each does what the
/// [`TaskStore`] method of the same name does, with the same errors. The
/// decision's details and a task's output are shared with the caller, who
/// still needs them, rather than copied.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreWrite {
    /// [`TaskStore::record_decision_with`].
    Decision {
        record: DecisionRecord,
        details: Arc<DecisionDetails>,
    },
    /// [`TaskStore::insert_task`].
    InsertTask(TaskRecord),
    /// [`TaskStore::insert_pending`].
    InsertPending {
        task: TaskRecord,
        approval: PendingApproval,
    },
    /// [`TaskStore::finish`].
    Finish {
        id: TaskId,
        state: TaskState,
        completed_at: OffsetDateTime,
        result: Option<Arc<TaskResult>>,
        failure_reason: Option<String>,
    },
}

/// `t` as every store keeps it: truncated to the millisecond, in UTC. A
/// record built in memory with such times equals the one read back.
pub fn stored_time(t: OffsetDateTime) -> OffsetDateTime {
    rows::from_ms("", "", rows::to_ms(t)).unwrap_or(t)
}

/// The reason [`TaskStore::expire_pending`] records.
pub const APPROVAL_EXPIRED: &str = "approval expired";

/// What a task waiting for approval keeps beside its [`TaskRecord`].
#[derive(Debug, Clone, PartialEq)]
pub struct PendingApproval {
    /// Owned by the gateway (its shape is the gateway's): what the approver
    /// is shown and everything needed to run the task once approved.
    pub details: serde_json::Value,
    pub expires_at: OffsetDateTime,
    /// Who approved or rejected it, once someone did.
    pub decided_by: Option<String>,
}

/// One idempotency key of one principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub tenant: String,
    pub principal: String,
    pub key: String,
    /// A hash of the request, to tell a repeat from a different request
    /// that reuses the key.
    pub request_hash: String,
    /// The task the request will create.
    pub task_id: TaskId,
    pub at: OffsetDateTime,
}

/// The answer of [`TaskStore::claim_idempotency_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is ours: create the task.
    New,
    /// An earlier request holds the key.
    Existing {
        request_hash: String,
        task_id: TaskId,
    },
}

/// One policy decision, kept for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The request id (UUIDv7).
    pub id: uuid::Uuid,
    pub at: OffsetDateTime,
    pub tenant: String,
    pub principal: String,
    /// `command` or `file`.
    pub kind: String,
    /// What was asked, short: a command name, or e.g. `write path/x`.
    pub summary: String,
    pub allow: bool,
    /// Why the request was denied; empty when allowed.
    pub deny_reasons: Vec<String>,
    pub policy_revision: String,
    /// The task the request created, if it created one.
    pub task_id: Option<TaskId>,
}

/// What the decision log keeps beside a [`DecisionRecord`]. All fields are
/// optional in spirit: `DecisionDetails::default()` is what a decision
/// recorded with [`TaskStore::record_decision`] gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionDetails {
    /// The input document as the policy saw it, after masking and
    /// redaction; `None` when the gateway did not keep it.
    pub input: Option<serde_json::Value>,
    /// Wall-clock time of the evaluation, in microseconds.
    pub latency_us: u64,
    /// The sandbox profile the policy chose, if any.
    pub profile: Option<String>,
    /// Every obligation the policy set (stored as a JSON object, `{}` when
    /// none).
    pub obligations: mcp_core::ObligationSet,
    pub warnings: Vec<String>,
}

/// One entry of the decision log: the decision and its details.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLogEntry {
    pub record: DecisionRecord,
    pub details: DecisionDetails,
}

/// Which tasks [`TaskStore::list_tasks`] returns: always one tenant's,
/// newest first. Task ids are UUIDv7, so they sort by creation time and the
/// last id of a page is the cursor of the next (`before`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    pub tenant: String,
    pub state: Option<TaskState>,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Created before.
    pub until: Option<OffsetDateTime>,
    /// Only tasks older than this one (the previous page's last id).
    pub before: Option<TaskId>,
    /// At most this many (capped at [`MAX_TASK_PAGE`]).
    pub limit: u32,
    /// Only tasks whose metadata holds every one of these pairs.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The largest page [`TaskStore::list_tasks`] returns.
pub const MAX_TASK_PAGE: u32 = 100;

/// Which decision-log entries [`TaskStore::list_decisions`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionQuery {
    /// Only decisions made at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only this tenant's decisions.
    pub tenant: Option<String>,
    /// Only decisions whose input was kept (what replay can use).
    pub with_input: bool,
    /// Keyset paging: only entries after this one in the log's order
    /// (pass the last entry's `(at, id)` of the previous page).
    pub after: Option<(OffsetDateTime, uuid::Uuid)>,
    /// At most this many entries (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

/// The largest page [`TaskStore::list_decisions`] returns.
pub const MAX_PAGE: u32 = 10_000;

impl Default for DecisionQuery {
    fn default() -> Self {
        DecisionQuery {
            since: None,
            tenant: None,
            with_input: false,
            after: None,
            limit: 1_000,
        }
    }
}

/// Opens the store a URL names:
/// - `sqlite://PATH` or `sqlite:PATH` — a [`SqliteStore`] file (created if
///   missing; `sqlite:///abs/path` is absolute); `sqlite::memory:` is a
///   private in-memory database;
/// - `postgres://…` / `postgresql://…` — a [`PgStore`] with the default
///   [`PgOptions`] (use [`PgStore::open`] for a password file or another
///   pool size);
/// - anything else, including query strings, which would silently become
///   part of a file name — [`StoreError::BadUrl`].
pub async fn open_store(url: &str) -> Result<Arc<dyn TaskStore>, StoreError> {
    match parse_url(url)? {
        Backend::SqliteMemory => Ok(Arc::new(SqliteStore::open_in_memory().await?)),
        Backend::SqliteFile(path) => Ok(Arc::new(SqliteStore::open(Path::new(path)).await?)),
        Backend::Postgres => Ok(Arc::new(PgStore::open(&PgOptions::new(url)).await?)),
    }
}

/// A store URL, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Backend<'a> {
    SqliteMemory,
    SqliteFile(&'a str),
    /// Parsed by sqlx (libpq's URL syntax).
    Postgres,
}

fn parse_url(url: &str) -> Result<Backend<'_>, StoreError> {
    let bad = || StoreError::BadUrl { url: redact(url) };
    let (scheme, rest) = url.split_once(':').ok_or_else(bad)?;
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => {
            if rest == ":memory:" || rest == "//:memory:" {
                return Ok(Backend::SqliteMemory);
            }
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains(['?', '#', '\0']) {
                return Err(bad());
            }
            Ok(Backend::SqliteFile(path))
        }
        "postgres" | "postgresql" => Ok(Backend::Postgres),
        _ => Err(bad()),
    }
}

/// Hides the password of `scheme://user:password@host` (and of a
/// `password=` query parameter, which libpq URLs may carry) so that a
/// mistyped URL can be reported without leaking a secret.
pub(crate) fn redact(url: &str) -> String {
    let shown = match url.split_once("://") {
        None => url.to_owned(),
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
    };
    let Some((base, query)) = shown.split_once('?') else {
        return shown;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests;
