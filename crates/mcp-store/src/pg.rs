//! The PostgreSQL backend: one database shared by every replica of the
//! gateway. The statements are those of the SQLite backend (`sql.rs`), so
//! the guards that keep a task's states moving forward, tenant filtering
//! and the single use of keys and tokens are the same `UPDATE`/`INSERT`
//! statements, and hold across replicas because PostgreSQL re-checks an
//! `UPDATE`'s `WHERE` on the newest row version once it holds the row
//! lock (read committed).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mcp_core::{TaskId, TaskRecord, TaskResult, TaskState};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::rows::{
    DecisionLogRow, DecisionRow, TaskRow, from_ms, list_to_json, map_to_json, to_i64, to_ms,
};
use crate::{
    DecisionDetails, DecisionLogEntry, DecisionQuery, DecisionRecord, IdempotencyClaim,
    IdempotencyKey, MAX_PAGE, MAX_TASK_PAGE, PendingApproval, StoreError, StoreWrite, TaskQuery,
    TaskStore,
};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The session-level advisory lock every opener holds while it checks the
/// schema version and migrates, so replicas starting at once migrate one
/// after the other (the later ones find nothing to do). Advisory locks are
/// per database; the key is an arbitrary constant of ours ("mcp-mig").
const MIGRATE_LOCK: i64 = 0x006d_6370_2d6d_6967;

/// `list_tasks`: for string values JSONB containment is exactly "holds
/// this key with this value", for every pair of the filter.
const LIST_TASKS_SQL: &str =
    crate::sql::list_tasks_sql!("CAST(metadata AS JSONB) @> CAST($7 AS JSONB)");

crate::backend::task_store_backend!(PgStore, sqlx::Postgres);

/// How to reach a PostgreSQL database: the URL (`postgres://` or
/// `postgresql://`, with libpq's query parameters such as `?sslmode=`,
/// `?sslrootcert=`, `?host=/run/postgresql` for a unix socket) and, as an
/// alternative to a password in the URL, a file holding it (a mounted
/// secret). Its `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct PgOptions {
    url: SecretString,
    password_file: Option<PathBuf>,
    max_connections: u32,
    acquire_timeout: Duration,
    durable_task_writes: bool,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.target())
            .field("password_file", &self.password_file)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("durable_task_writes", &self.durable_task_writes)
            .finish()
    }
}

impl PgOptions {
    /// Options for `url`, with a pool of 8 connections that waits at most
    /// 10 s for one (and for the server at open).
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: SecretString::from(url.into()),
            password_file: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            durable_task_writes: false,
        }
    }

    /// Whether the task store's own writes (`set_state`, `finish` outside
    /// an audit record, keys, tokens) wait for the server's WAL flush.
    /// `false` by default: its sessions run with `synchronous_commit = off`,
    /// the counterpart of the SQLite store's `synchronous = NORMAL` (a crash
    /// of the database server may drop the last few hundred milliseconds of
    /// such commits, never corrupts and never reorders them), while the
    /// audit log and every write it carries keep the server's setting, so a
    /// decision and its task are durable before the command runs.
    pub fn durable_task_writes(mut self, durable: bool) -> Self {
        self.durable_task_writes = durable;
        self
    }

    /// Reads the password from this file (its first line; a trailing
    /// newline is not part of it). The URL must then carry none.
    pub fn password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// The most connections the pool opens.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a query waits for a free connection, and the open for the
    /// server, before failing.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The URL without its password, for errors and logs.
    pub fn target(&self) -> String {
        crate::redact(self.url.expose_secret())
    }

    async fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        let url = self.url.expose_secret();
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::BadUrl { url: self.target() })?;
        let Some(path) = &self.password_file else {
            return Ok(options);
        };
        if url_has_password(url) {
            return Err(StoreError::PasswordTwice {
                url: self.target(),
                path: path.clone(),
            });
        }
        let raw =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| StoreError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
        let password = raw.lines().next().unwrap_or_default();
        if password.is_empty() {
            return Err(StoreError::PasswordFile {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
            });
        }
        Ok(options.password(password))
    }

    /// A pool on the database, its schema brought up to date (under
    /// [`MIGRATE_LOCK`]) and the id of the database.
    pub(crate) async fn open_pool(
        &self,
        max_connections: u32,
        relaxed_commits: bool,
    ) -> Result<(PgPool, String), StoreError> {
        let mut connect = self.connect_options().await?;
        if relaxed_commits {
            connect = connect.options([("synchronous_commit", "off")]);
        }
        // One connection first, without the pool's retries: an unreachable
        // server, a refused login or a missing database is reported at
        // once with its cause (the pool would retry until its timeout and
        // then report only that it timed out).
        let probe = sqlx::PgConnection::connect_with(&connect)
            .await
            .map_err(|source| StoreError::Connect {
                target: self.target(),
                source,
            })?;
        let _ = probe.close().await;
        // Two at least: migrating holds one for its lock and runs on another.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(self.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Connect {
                target: self.target(),
                source,
            })?;
        migrate(&pool).await?;
        let id: String = sqlx::query_scalar("SELECT CAST(id AS TEXT) FROM store_instance")
            .fetch_one(&pool)
            .await?;
        Ok((pool, id))
    }
}

/// Whether a `postgres://user:password@host` URL holds a password, in its
/// authority or as a `password=` query parameter.
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let in_authority = authority
        .rfind('@')
        .is_some_and(|at| authority[..at].contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case("password"))
        })
    });
    in_authority || in_query
}

/// The newest migration this build knows.
pub(crate) fn known_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Brings the schema up to date while holding [`MIGRATE_LOCK`]; refuses a
/// database whose schema is newer than this build
/// ([`StoreError::SchemaTooNew`]) before touching it. The lock is a
/// session lock on one connection: released here, or with the connection
/// (closed rather than returned to the pool) if that fails. The migrator
/// runs on a second connection of the pool (sqlx's migrator takes its own
/// lock as well, which changes nothing here).
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await?;
    let done = match check_version(&mut conn).await {
        Ok(()) => MIGRATOR.run(pool).await.map_err(StoreError::from),
        Err(e) => Err(e),
    };
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // Closing the session releases its locks.
        let _ = conn.close().await;
    }
    done
}

async fn check_version(conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if has_table {
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *conn)
            .await?;
        let known = known_version();
        if let Some(found) = found.filter(|&v| v > known) {
            return Err(StoreError::SchemaTooNew { found, known });
        }
    }
    Ok(())
}

/// A [`TaskStore`] on PostgreSQL, shared by any number of gateway
/// processes. Records round-trip exactly as on SQLite (milliseconds, UTC).
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// The database's `store_instance` id (see [`TaskStore::shares_database`]).
    instance: String,
    /// The URL without its password.
    target: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("instance", &self.instance)
            .field("pool", &self.pool)
            .finish()
    }
}

impl PgStore {
    /// Connects and brings the schema up to date (see the crate docs):
    /// [`StoreError::Connect`] if the server cannot be reached or refuses
    /// the login, [`StoreError::SchemaTooNew`] if a newer gateway migrated
    /// the database.
    pub async fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        let (pool, instance) = options
            .open_pool(options.max_connections, !options.durable_task_writes)
            .await?;
        Ok(PgStore {
            pool,
            instance,
            target: options.target(),
        })
    }

    /// Closes every connection, waiting for running queries.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// PostgreSQL serialises writers itself (row locks), so writes need no
    /// lock of this process.
    async fn write_lock(&self) {}

    /// The log shares this store's database when both read the same
    /// `store_instance` id.
    fn shares_database(&self, audit: &crate::AuditLog) -> bool {
        audit.pg_instance() == Some(self.instance.as_str())
    }
}
