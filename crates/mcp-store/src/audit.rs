//! The audit trail's storage: one serialised appender over the
//! `audit_log` and `audit_checkpoints` tables (migration `0003_audit`), on
//! SQLite or PostgreSQL.
//!
//! Durability: on SQLite the appender has its own connection pool on the
//! database file with `synchronous = FULL`, so an append has reached the
//! disk (the WAL is fsynced at commit) before [`AuditLog::append`] returns,
//! while the task store keeps `NORMAL` for its hotter writes. On
//! PostgreSQL a commit returns once the server flushed its WAL
//! (`synchronous_commit` is the server's setting, `on` by default).
//!
//! Ordering: the chain's head (`seq`, `prev_hash`) and the last checkpoint
//! are read and the records inserted in one transaction that excludes every
//! other appender of the database, so two appends can never take the same
//! place in the chain, whichever process they come from:
//! - SQLite: `BEGIN IMMEDIATE` takes the file's write lock (another process
//!   waits for it), after the file's in-process write gate (`gate`), which
//!   the task store's writes share, so the two queue instead of sleeping in
//!   SQLite's busy handler;
//! - PostgreSQL: the transaction's first statement takes
//!   `pg_advisory_xact_lock(AUDIT_LOCK)`; the head is read by the next
//!   statement, whose read-committed snapshot is taken after the lock was
//!   granted and so sees the previous holder's commit. The lock goes with
//!   the transaction (commit, rollback or a dropped connection), so a
//!   replica that dies mid-append cannot leave it held. A `SELECT … FOR
//!   UPDATE` on a chain-head row would serialise as well, but every append
//!   would then also rewrite that one hot row (a dead tuple per append,
//!   vacuum work) and the row would duplicate what `audit_log` already
//!   says; the advisory lock adds no write. `seq` is the primary key, so
//!   even a writer that skipped the lock could not fork the chain: its
//!   insert would fail.
//!
//! Because other processes may append, nothing of the chain is cached in
//! the process: each transaction reads the head and the last checkpoint.
//!
//! Group commit: appends that arrive while a commit is in progress wait
//! for it, and the next one to run writes every waiting record in one
//! transaction (one fsync for all of them). Each caller is answered only
//! once the transaction holding its record is on disk, and in the order
//! the records were queued, so batching changes how many fsyncs there are,
//! never what an answer promises. A failed commit fails every append in
//! it (nothing of it is stored; the chain is unchanged).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_audit::{AuditEvent, AuditRecord, Checkpoint, DecisionSummary, GENESIS_HASH, Signer};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::gate::{self, Gate};
use crate::rows::{list_to_json, to_i64};
use crate::{Backend, PgOptions, StoreError, StoreWrite, parse_url};

/// The same migrations as the task store: the audit tables live in the
/// same database, and whichever opens first brings the schema up to date.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long an append waits for another writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest page [`AuditLog::records`] returns.
pub const MAX_AUDIT_PAGE: u32 = 10_000;

/// The transaction-scoped advisory lock of PostgreSQL appenders (see the
/// module documentation); an arbitrary constant of ours ("mcp-aud").
const AUDIT_LOCK: i64 = 0x006d_6370_2d61_7564;

/// Connections of a PostgreSQL audit log: the appender's and one for reads.
const PG_CONNECTIONS: u32 = 2;

const COLUMNS: &str = "seq, at, request_id, trace_id, principal, tenant, action, \
    decision_revision, decision_allow, decision_reasons, task_id, command, input_sha256, \
    output_sha256, outcome, latency_us, prev_hash, hash";

/// When checkpoints are signed.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// Signs checkpoints; `None` writes none (the chain alone still
    /// catches edits, but not a rewrite of all hashes or a cut tail).
    pub signer: Option<Arc<Signer>>,
    /// A checkpoint every this many records; 0 = not by count.
    pub checkpoint_every: u64,
    /// A checkpoint when this long passed since the last one (checked at
    /// each append and by [`AuditLog::checkpoint_if_due`]); `None` = not by time.
    pub checkpoint_interval: Option<Duration>,
}

/// Where the chain stands, read inside each appending transaction.
#[derive(Debug, Default)]
struct Tail {
    /// Records since the last checkpoint.
    unanchored: u64,
    last_checkpoint_ms: Option<i64>,
}

/// The database of an audit log.
#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// Runs `$body` with `$pool` bound to the log's pool, whichever backend:
/// the SQL is the same, the query types differ.
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Pg($pool) => $body,
        }
    };
}

impl Db {
    async fn close(&self) {
        on_db!(self, |pool| pool.close().await)
    }
}

/// The append-only audit log.
#[derive(Debug)]
pub struct AuditLog {
    /// Reads (the writer has its own handle on the same connections).
    db: Db,
    /// The database's `store_instance` id, on PostgreSQL.
    instance: Option<String>,
    writer: Arc<Writer>,
}

/// What appends and checkpoints share. Commits run on tasks of their own
/// holding this, so a caller that goes away (a client that disconnects)
/// never abandons a commit that other appends wait for.
#[derive(Debug)]
struct Writer {
    db: Db,
    options: AuditOptions,
    /// The commit lock: whoever holds it commits what is queued.
    commit_lock: tokio::sync::Mutex<()>,
    /// The SQLite file's write gate, shared with the task store (see
    /// `gate`); PostgreSQL needs none.
    gate: Option<Gate>,
    /// Appends waiting for the next commit, in arrival order.
    queue: std::sync::Mutex<Vec<Queued>>,
    /// Transactions committed by appends.
    commits: std::sync::atomic::AtomicU64,
    /// Records those transactions committed.
    committed: std::sync::atomic::AtomicU64,
}

/// An append waiting to be committed, and where its answer goes.
#[derive(Debug)]
struct Queued {
    event: AuditEvent,
    /// Task-store writes committed with the record (see [`AuditLog::append_with`]).
    writes: Vec<StoreWrite>,
    reply: tokio::sync::oneshot::Sender<Result<AuditRecord, StoreError>>,
}

/// The most records one transaction commits; the rest wait for the next.
const MAX_BATCH: usize = 256;

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at: i64,
    request_id: String,
    trace_id: Option<String>,
    principal: String,
    tenant: String,
    action: String,
    decision_revision: Option<String>,
    decision_allow: Option<bool>,
    decision_reasons: Option<String>,
    task_id: Option<String>,
    command: Option<String>,
    input_sha256: Option<String>,
    output_sha256: Option<String>,
    outcome: String,
    latency_us: i64,
    prev_hash: String,
    hash: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;

    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: format!("audit {}", r.seq),
            reason,
        };
        let seq = u64::try_from(r.seq).map_err(|_| corrupt(format!("seq {} < 1", r.seq)))?;
        let latency_us = u64::try_from(r.latency_us)
            .map_err(|_| corrupt(format!("latency_us {} is negative", r.latency_us)))?;
        let decision = match (r.decision_revision, r.decision_allow) {
            (Some(revision), Some(allow)) => Some(DecisionSummary {
                revision,
                allow,
                reasons: match r.decision_reasons.as_deref() {
                    None => Vec::new(),
                    Some(raw) => serde_json::from_str(raw)
                        .map_err(|e| corrupt(format!("decision_reasons: {e}")))?,
                },
            }),
            (None, None) => None,
            _ => return Err(corrupt("decision columns are half set".to_owned())),
        };
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                at_ms: r.at,
                request_id: r.request_id,
                trace_id: r.trace_id,
                principal: r.principal,
                tenant: r.tenant,
                action: r.action,
                decision,
                task_id: r.task_id,
                command: r.command,
                input_sha256: r.input_sha256,
                output_sha256: r.output_sha256,
                outcome: r.outcome,
                latency_us,
            },
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct CheckpointRow {
    seq: i64,
    at: i64,
    hash: String,
    key_id: String,
    signature: String,
}

impl AuditLog {
    /// Opens the audit log in the database a store URL names (see
    /// [`crate::open_store`]), bringing the schema up to date.
    pub async fn open(url: &str, options: AuditOptions) -> Result<Self, StoreError> {
        Self::open_with(url, options, BUSY_TIMEOUT).await
    }

    /// [`AuditLog::open`] with another busy timeout (tests use none).
    pub(crate) async fn open_with(
        url: &str,
        options: AuditOptions,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let file = match parse_url(url)? {
            Backend::SqliteMemory => None,
            Backend::SqliteFile(path) => Some(Path::new(path)),
            Backend::Postgres => return Self::open_pg(&PgOptions::new(url), options).await,
        };
        let connect = match file {
            None => SqliteConnectOptions::new().filename(":memory:"),
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
            }
        };
        // Appends touch only the tails of the table and its index; a
        // bounded cache keeps RSS flat as the log grows (see the task
        // store's `CACHE_KIB`).
        let connect = connect
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            .pragma("cache_size", format!("-{}", crate::sqlite::CACHE_KIB));
        // One connection: appends are serialised anyway, and `:memory:`
        // needs a single connection to stay one database.
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await?;
        // The file exists now: the gate the task store of the same file
        // shares, keyed by its canonical path.
        let gate = file.map_or_else(gate::private, gate::for_file);
        {
            let _write = gate.lock().await;
            MIGRATOR.run(&pool).await?;
        }
        Ok(Self::with_writer(
            Db::Sqlite(pool),
            options,
            Some(gate),
            None,
        ))
    }

    /// Opens the audit log in a PostgreSQL database, bringing the schema up
    /// to date as [`crate::PgStore::open`] does. Any number of processes may
    /// append to one database: they form one chain.
    pub async fn open_pg(pg: &PgOptions, options: AuditOptions) -> Result<Self, StoreError> {
        // The server's own synchronous_commit: appends are durable.
        let (pool, instance) = pg.open_pool(PG_CONNECTIONS, false).await?;
        Ok(Self::with_writer(
            Db::Pg(pool),
            options,
            None,
            Some(instance),
        ))
    }

    /// Opens an existing database file read-only, without migrations, for
    /// `audit verify` and `audit export` (they must not change what they
    /// examine).
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect)
            .await?;
        Ok(Self::with_writer(
            Db::Sqlite(pool),
            AuditOptions::default(),
            Some(gate::private()),
            None,
        ))
    }

    fn with_writer(
        db: Db,
        options: AuditOptions,
        gate: Option<Gate>,
        instance: Option<String>,
    ) -> Self {
        Self {
            writer: Arc::new(Writer {
                db: db.clone(),
                options,
                commit_lock: tokio::sync::Mutex::new(()),
                gate,
                queue: std::sync::Mutex::default(),
                commits: std::sync::atomic::AtomicU64::new(0),
                committed: std::sync::atomic::AtomicU64::new(0),
            }),
            db,
            instance,
        }
    }

    /// Seals `event` as the next record and stores it durably; answers the
    /// stored record once it is on disk. Signs a checkpoint in the same
    /// transaction when one is due. Concurrent appends share one commit
    /// (see the module documentation).
    #[tracing::instrument(name = "store.write", skip_all, fields(op = "audit_append"))]
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        self.queue(event, Vec::new()).await
    }

    /// [`AuditLog::append`] with task-store writes committed in the same
    /// transaction, before the record: all of them and the record are
    /// stored, or none. A write that fails (a duplicate task, a task that
    /// already ended) fails this append alone with that write's error, and
    /// its record takes no place in the chain; the other appends of the
    /// batch are unaffected. The writes must be for the store whose
    /// [`crate::TaskStore::shares_database`] says it shares this log's
    /// database: they go to this log's database whatever the caller meant.
    #[tracing::instrument(name = "store.write", skip_all, fields(op = "audit_append_with"))]
    pub async fn append_with(
        &self,
        event: AuditEvent,
        writes: Vec<StoreWrite>,
    ) -> Result<AuditRecord, StoreError> {
        self.queue(event, writes).await
    }

    async fn queue(
        &self,
        event: AuditEvent,
        writes: Vec<StoreWrite>,
    ) -> Result<AuditRecord, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.lock_queue().push(Queued {
            event,
            writes,
            reply,
        });
        tokio::spawn(Arc::clone(&self.writer).flush());
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::GroupCommit {
                reason: "the audit writer stopped before committing the record".to_owned(),
            })
        })
    }

    /// Appends waiting for a commit.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.writer.lock_queue().len()
    }

    /// Holds the commit lock: appends queue up until the guard is dropped,
    /// then commit together.
    #[cfg(test)]
    pub(crate) async fn hold_commits(&self) -> impl Send + '_ {
        self.writer.commit_lock.lock().await
    }

    /// The write gate of this log's SQLite database (see `gate`).
    pub(crate) fn sqlite_gate(&self) -> Option<&Gate> {
        match self.writer.db {
            Db::Sqlite(_) => self.writer.gate.as_ref(),
            Db::Pg(_) => None,
        }
    }

    /// The pool of this log's PostgreSQL database.
    #[cfg(test)]
    pub(crate) fn pg_pool(&self) -> Option<PgPool> {
        match &self.db {
            Db::Pg(pool) => Some(pool.clone()),
            Db::Sqlite(_) => None,
        }
    }

    /// The `store_instance` id of this log's PostgreSQL database.
    pub(crate) fn pg_instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// Signs a checkpoint over the last record if records were appended
    /// since the last checkpoint and the interval has passed (or
    /// `force`). For a periodic timer and for shutdown, so a quiet log's
    /// tail is anchored too. Answers the checkpoint written, if any.
    pub async fn checkpoint_if_due(
        &self,
        now_ms: i64,
        force: bool,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let w = &self.writer;
        let Some(signer) = &w.options.signer else {
            return Ok(None);
        };
        let _commits = w.commit_lock.lock().await;
        on_db!(&w.db, |pool| {
            let tx = begin(pool, w.gate.as_ref()).await?;
            w.checkpoint_in(tx, signer, now_ms, force).await
        })
    }

    /// Records with `seq > after` (and `at >= since_ms` when given), in
    /// sequence order, at most `limit` (capped at [`MAX_AUDIT_PAGE`]).
    pub async fn records(
        &self,
        after: u64,
        since_ms: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 AND ($2 IS NULL OR at >= $2) \
             ORDER BY seq LIMIT $3"
        );
        let rows: Vec<AuditRow> = on_db!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(after))
                .bind(since_ms)
                .bind(i64::from(limit.clamp(1, MAX_AUDIT_PAGE)))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(AuditRecord::try_from).collect()
    }

    /// Every checkpoint, in sequence order.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows: Vec<CheckpointRow> = on_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT seq, at, hash, key_id, signature FROM audit_checkpoints ORDER BY seq",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: u64::try_from(r.seq).map_err(|_| StoreError::Corrupt {
                        id: format!("audit checkpoint {}", r.seq),
                        reason: "negative seq".to_owned(),
                    })?,
                    at_ms: r.at,
                    hash: r.hash,
                    key_id: r.key_id,
                    signature: r.signature,
                })
            })
            .collect()
    }

    /// `(records appended, transactions that committed them)` since open:
    /// their ratio is the group commit's batch size.
    pub fn append_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.writer.committed.load(Relaxed),
            self.writer.commits.load(Relaxed),
        )
    }

    /// Checks that the audit tables answer, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| {
            sqlx::query("SELECT 1 FROM audit_log LIMIT 1")
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.db.close().await;
    }
}

impl Writer {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits whatever is queued, in batches of at most [`MAX_BATCH`],
    /// and answers each append. Every append spawns one; the first to get
    /// the lock takes the queue, the later ones usually find it empty.
    async fn flush(self: Arc<Self>) {
        let _commits = self.commit_lock.lock().await;
        loop {
            let batch: Vec<Queued> = {
                let mut queue = self.lock_queue();
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let done = on_db!(
                &self.db,
                |pool| match begin(pool, self.gate.as_ref()).await {
                    Ok(tx) => self.commit_in(tx, &batch).await,
                    Err(e) => Err(e),
                }
            );
            match done {
                Ok(answers) => {
                    for (q, answer) in batch.into_iter().zip(answers) {
                        // The writes go before the answer, so the caller
                        // holds the only reference to what they shared.
                        let Queued { reply, writes, .. } = q;
                        drop(writes);
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => {
                    let mut reason = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        reason = format!("{reason}: {s}");
                        source = s.source();
                    }
                    for q in batch {
                        let _ = q.reply.send(Err(StoreError::GroupCommit {
                            reason: reason.clone(),
                        }));
                    }
                }
            }
        }
    }

    /// Writes `batch` as the next records, in order, in `tx`, with a
    /// checkpoint after each record that makes one due; answers one result
    /// per append. An append whose task-store writes fail is rolled back to
    /// its savepoint and answered with their error; the rest go on.
    async fn commit_in<T: ChainTx>(
        &self,
        mut tx: T,
        batch: &[Queued],
    ) -> Result<Vec<Result<AuditRecord, StoreError>>, StoreError> {
        let (last, mut tail) = tx.head().await?;
        let (mut seq, mut prev) = match last {
            Some((seq, hash)) => (seq.saturating_add(1), hash),
            None => (1, GENESIS_HASH.to_owned()),
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut stored = 0u64;
        for q in batch {
            if let Err(e) = tx.store_writes(&q.writes).await? {
                answers.push(Err(e));
                continue;
            }
            let at_ms = q.event.at_ms;
            let rec = mcp_audit::seal(seq, &prev, q.event.clone());
            tx.insert_record(&rec).await?;
            match (&self.options.signer, self.due(&tail, at_ms)) {
                (Some(signer), true) => {
                    let cp = signer.checkpoint(rec.seq, &rec.hash, at_ms);
                    tx.insert_checkpoint(&cp).await?;
                    tail.unanchored = 0;
                    tail.last_checkpoint_ms = Some(cp.at_ms);
                }
                _ => tail.unanchored += 1,
            }
            seq = seq.saturating_add(1);
            prev.clone_from(&rec.hash);
            answers.push(Ok(rec));
            stored += 1;
        }
        tx.commit().await?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.committed
            .fetch_add(stored, std::sync::atomic::Ordering::Relaxed);
        Ok(answers)
    }

    /// [`AuditLog::checkpoint_if_due`] inside `tx`.
    async fn checkpoint_in<T: ChainTx>(
        &self,
        mut tx: T,
        signer: &Signer,
        now_ms: i64,
        force: bool,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let (last, tail) = tx.head().await?;
        let Some((seq, hash)) = last else {
            return Ok(None);
        };
        if tail.unanchored == 0 {
            return Ok(None);
        }
        let interval_passed = self.options.checkpoint_interval.is_some_and(|every| {
            let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
            tail.last_checkpoint_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= every)
        });
        if !(force || interval_passed) {
            return Ok(None);
        }
        let cp = signer.checkpoint(seq, &hash, now_ms);
        tx.insert_checkpoint(&cp).await?;
        tx.commit().await?;
        Ok(Some(cp))
    }

    /// Whether the record about to be written at `at_ms` gets a checkpoint.
    fn due(&self, tail: &Tail, at_ms: i64) -> bool {
        let by_count = self.options.checkpoint_every > 0
            && tail.unanchored + 1 >= self.options.checkpoint_every;
        let by_time = self.options.checkpoint_interval.is_some_and(|every| {
            let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
            tail.last_checkpoint_ms
                .is_none_or(|last| at_ms.saturating_sub(last) >= every)
        });
        by_count || by_time
    }
}

/// An appending transaction that excludes every other appender of its
/// database (see the module documentation), whichever the backend.
#[async_trait::async_trait]
trait ChainTx: Send {
    /// The last record's `(seq, hash)`, if any, and where the chain stands
    /// against its last checkpoint.
    async fn head(&mut self) -> Result<(Option<(u64, String)>, Tail), StoreError>;

    /// Runs one append's task-store writes inside a savepoint: the outer
    /// `Err` is a failure of the transaction itself (the batch fails), the
    /// inner one a write this append alone is refused for (its savepoint is
    /// rolled back, nothing of it stays).
    async fn store_writes(
        &mut self,
        writes: &[StoreWrite],
    ) -> Result<Result<(), StoreError>, StoreError>;

    async fn insert_record(&mut self, r: &AuditRecord) -> Result<(), StoreError>;

    async fn insert_checkpoint(&mut self, c: &Checkpoint) -> Result<(), StoreError>;

    async fn commit(self) -> Result<(), StoreError>;
}

/// An appending transaction on SQLite: the file's gate, then its write lock.
struct SqliteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Begins an appending transaction on `pool` (see [`ChainTx`]).
async fn begin<P: Begin>(pool: &P, gate: Option<&Gate>) -> Result<P::Tx, StoreError> {
    pool.begin_appending(gate).await
}

/// The pools an appending transaction can begin on.
trait Begin {
    type Tx: ChainTx;
    async fn begin_appending(&self, gate: Option<&Gate>) -> Result<Self::Tx, StoreError>;
}

impl Begin for SqlitePool {
    type Tx = SqliteTx;
    async fn begin_appending(&self, gate: Option<&Gate>) -> Result<SqliteTx, StoreError> {
        let guard = match gate {
            Some(g) => Some(Arc::clone(g).lock_owned().await),
            None => None,
        };
        let tx = self.begin_with("BEGIN IMMEDIATE").await?;
        Ok(SqliteTx { tx, _gate: guard })
    }
}

/// An appending transaction on PostgreSQL, holding the advisory lock.
struct PgTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl Begin for PgPool {
    type Tx = PgTx;
    async fn begin_appending(&self, _gate: Option<&Gate>) -> Result<PgTx, StoreError> {
        let mut tx = self.begin().await?;
        // First statement of the transaction: the head read next is taken
        // from a snapshot after the lock is ours.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(PgTx { tx })
    }
}

/// Implements [`ChainTx`] for a transaction type whose connection is
/// `$conn` (an expression of `self`) with the backend's store writes
/// `$write`: the SQL is the same on both.
macro_rules! chain_tx {
    ($ty:ty, |$this:ident| $conn:expr, $write:path, |$done:ident| $commit:expr) => {
        #[async_trait::async_trait]
        impl ChainTx for $ty {
            async fn head(&mut self) -> Result<(Option<(u64, String)>, Tail), StoreError> {
                let $this = self;
                let last: Option<(i64, String)> =
                    sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(&mut *$conn)
                        .await?;
                let cp: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
                )
                .fetch_optional(&mut *$conn)
                .await?;
                let to_u = |v: i64| u64::try_from(v).unwrap_or(0);
                let last = last.map(|(seq, hash)| (to_u(seq), hash));
                let last_seq = last.as_ref().map_or(0, |(seq, _)| *seq);
                let tail = Tail {
                    unanchored: last_seq.saturating_sub(cp.map_or(0, |(s, _)| to_u(s))),
                    last_checkpoint_ms: cp.map(|(_, at)| at),
                };
                Ok((last, tail))
            }

            async fn store_writes(
                &mut self,
                writes: &[StoreWrite],
            ) -> Result<Result<(), StoreError>, StoreError> {
                let $this = self;
                if writes.is_empty() {
                    return Ok(Ok(()));
                }
                sqlx::query("SAVEPOINT store_writes")
                    .execute(&mut *$conn)
                    .await?;
                for w in writes {
                    if let Err(e) = $write(&mut *$conn, w).await {
                        sqlx::query("ROLLBACK TO SAVEPOINT store_writes")
                            .execute(&mut *$conn)
                            .await?;
                        sqlx::query("RELEASE SAVEPOINT store_writes")
                            .execute(&mut *$conn)
                            .await?;
                        return Ok(Err(e));
                    }
                }
                sqlx::query("RELEASE SAVEPOINT store_writes")
                    .execute(&mut *$conn)
                    .await?;
                Ok(Ok(()))
            }

            async fn insert_record(&mut self, r: &AuditRecord) -> Result<(), StoreError> {
                let $this = self;
                let e = &r.event;
                let sql = format!(
                    "INSERT INTO audit_log ({COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(to_i64(r.seq))
                    .bind(e.at_ms)
                    .bind(&e.request_id)
                    .bind(e.trace_id.as_deref())
                    .bind(&e.principal)
                    .bind(&e.tenant)
                    .bind(&e.action)
                    .bind(e.decision.as_ref().map(|d| d.revision.as_str()))
                    .bind(e.decision.as_ref().map(|d| d.allow))
                    .bind(e.decision.as_ref().map(|d| list_to_json(&d.reasons)))
                    .bind(e.task_id.as_deref())
                    .bind(e.command.as_deref())
                    .bind(e.input_sha256.as_deref())
                    .bind(e.output_sha256.as_deref())
                    .bind(&e.outcome)
                    .bind(to_i64(e.latency_us))
                    .bind(&r.prev_hash)
                    .bind(&r.hash)
                    .execute(&mut *$conn)
                    .await?;
                Ok(())
            }

            async fn insert_checkpoint(&mut self, c: &Checkpoint) -> Result<(), StoreError> {
                let $this = self;
                sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, at, hash, key_id, signature) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(to_i64(c.seq))
                .bind(c.at_ms)
                .bind(&c.hash)
                .bind(&c.key_id)
                .bind(&c.signature)
                .execute(&mut *$conn)
                .await?;
                Ok(())
            }

            async fn commit(self) -> Result<(), StoreError> {
                let $done = self;
                $commit.await?;
                Ok(())
            }
        }
    };
}

chain_tx!(SqliteTx, |this| this.tx, crate::sqlite::write, |done| done
    .tx
    .commit());
chain_tx!(PgTx, |this| this.tx, crate::pg::write, |done| done
    .tx
    .commit());

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::tests::audit_event as event;

    async fn open(dir: &Path) -> Arc<AuditLog> {
        let url = format!("sqlite://{}", dir.join("a.db").display());
        Arc::new(AuditLog::open(&url, AuditOptions::default()).await.unwrap())
    }

    /// Holds the commit lock while `n` appends queue, then lets them go:
    /// their results, in spawn order.
    async fn queued_while_held(
        log: &Arc<AuditLog>,
        n: i64,
        before_release: impl std::future::Future<Output = ()>,
    ) -> Vec<Result<AuditRecord, StoreError>> {
        let held = log.writer.commit_lock.lock().await;
        let mut joins = Vec::new();
        for i in 0..n {
            let appender = Arc::clone(log);
            joins.push(tokio::spawn(async move { appender.append(event(i)).await }));
            // Queued in this order: the next is spawned once this one is in.
            while log.writer.lock_queue().len() < usize::try_from(i + 1).unwrap() {
                tokio::task::yield_now().await;
            }
        }
        before_release.await;
        drop(held);
        let mut out = Vec::new();
        for j in joins {
            out.push(j.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_queued_during_a_commit_share_the_next_one_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        appends_queued_during_a_commit_share_the_next_one(open(dir.path()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_queued_during_a_commit_share_the_next_one_on_postgres() {
        let url = crate::tests::fresh_pg_url().await;
        let log = AuditLog::open(&url, AuditOptions::default()).await.unwrap();
        appends_queued_during_a_commit_share_the_next_one(Arc::new(log)).await;
    }

    async fn appends_queued_during_a_commit_share_the_next_one(log: Arc<AuditLog>) {
        let results = queued_while_held(&log, 10, async {}).await;
        assert_eq!(log.writer.commits.load(Ordering::Relaxed), 1);
        assert_eq!(log.append_stats(), (10, 1));
        let mut prev = GENESIS_HASH.to_owned();
        for (i, r) in results.into_iter().enumerate() {
            let rec = r.unwrap();
            // Queue order is chain order, each answer is its own record.
            assert_eq!(rec.seq, u64::try_from(i).unwrap() + 1);
            assert_eq!(rec.event.request_id, format!("req-{i}"));
            assert_eq!(rec.prev_hash, prev);
            prev = rec.hash;
        }
        let stored = log.records(0, None, 100).await.unwrap();
        assert_eq!(stored.len(), 10);
        assert_eq!(stored.last().unwrap().hash, prev);
        // A lone append is a commit of its own.
        log.append(event(10)).await.unwrap();
        assert_eq!(log.writer.commits.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_commit_fails_every_append_in_it_and_stores_none() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        log.append(event(0)).await.unwrap();
        let writer_db = log.writer.db.clone();
        let results = queued_while_held(&log, 3, async move { writer_db.close().await }).await;
        for r in results {
            let e = r.expect_err("the commit could not happen");
            assert!(matches!(e, StoreError::GroupCommit { .. }), "{e:?}");
        }
        drop(log);
        let log = open(dir.path()).await;
        let stored = log.records(0, None, 100).await.unwrap();
        assert_eq!(stored.len(), 1, "only the record before the failure");
    }
}
