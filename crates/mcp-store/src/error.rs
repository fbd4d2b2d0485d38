use std::path::PathBuf;

use mcp_core::{TaskId, TaskState};
use thiserror::Error;

/// Why a store operation failed. Each variant names the broken rule; the
/// gateway maps them to status codes and never shows the details to clients.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No task with this id exists.
    #[error("task {id} not found")]
    NotFound { id: TaskId },
    /// A task with this id already exists; ids are never reused.
    #[error("task {id} already exists")]
    DuplicateTask { id: TaskId },
    /// The task cannot move from `from` to `to`: terminal states never change,
    /// non-terminal states only move forward.
    #[error("task {id} cannot move from {} to {}", from.as_str(), to.as_str())]
    InvalidTransition {
        id: TaskId,
        from: TaskState,
        to: TaskState,
    },
    /// The database server could not be reached, or refused the login.
    /// The target is the URL without its password.
    #[error("cannot connect to the database at {target}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// The database was migrated by a newer build: this one does not know
    /// its schema and must not write to it.
    #[error(
        "database schema version {found} is newer than this build knows (up to {known}): \
         run a gateway at least as new as the one that migrated it"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// The database password file could not be read, or is empty.
    #[error("cannot read the database password file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A password was given both in the URL and as a password file.
    #[error(
        "the database url {url} carries a password and a password file {path} is set too: keep one"
    )]
    PasswordTwice { url: String, path: PathBuf },
    /// The URL is not a store URL at all. Credentials are redacted.
    #[error("store url {url:?} is invalid: expected sqlite://PATH or postgres://…")]
    BadUrl { url: String },
    /// A row exists but cannot be decoded into a record: the database was
    /// edited by hand or written by an incompatible version.
    #[error("stored row {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    /// The embedded migrations could not be applied.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database refused or failed a query.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A write committed together with others (the audit log's group
    /// commit) failed; the one that ran it logged the cause.
    #[error("the database write this was committed with failed: {reason}")]
    GroupCommit { reason: String },
    /// The database file or its directory could not be prepared.
    #[error("cannot prepare database path {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Database(err)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(err)
    }
}
