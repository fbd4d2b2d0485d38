//! The databases the suite runs on: every test written with [`both!`]
//! runs once on a fresh SQLite file and once on a fresh PostgreSQL
//! database of the server `MCP_TEST_DATABASE_URL` names (started by
//! scripts/pg-test-cluster.sh, which scripts/test.sh runs). Each test gets
//! its own database, so tests stay independent and run in parallel.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mcp_store::{AuditLog, AuditOptions, TaskStore, open_store};
use tempfile::TempDir;

/// The variable naming the test server (a maintenance database on it, in
/// which each test creates its own).
pub const ENV: &str = "MCP_TEST_DATABASE_URL";

/// The test server's URL, or an error saying how to start one: a test that
/// needs PostgreSQL fails without it, it never passes unchecked.
pub fn server_url() -> Result<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => bail!(
            "{ENV} is not set: these tests need a PostgreSQL server. Start a throwaway one with \
             `eval \"$(scripts/pg-test-cluster.sh start)\"` (needs Debian's postgresql package, \
             which scripts/bootstrap.sh installs) and stop it with \
             `scripts/pg-test-cluster.sh stop`; scripts/test.sh does both"
        ),
    }
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("test url has no scheme")?;
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let query_start = rest[path_start..]
        .find('?')
        .map_or(rest.len(), |q| path_start + q);
    Ok(format!(
        "{scheme}://{}/{name}{}",
        &rest[..path_start],
        &rest[query_start..]
    ))
}

/// A new empty database on the test server; its URL.
pub async fn fresh_pg_database() -> Result<String> {
    use sqlx::Connection;
    let server = server_url()?;
    let name = format!("mcp_t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .with_context(|| format!("cannot reach the test server {ENV} names"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    with_database(&server, &name)
}

/// One test's database, with a task store open on it.
pub struct Db {
    pub store: Arc<dyn TaskStore>,
    pub url: String,
    pub kind: Kind,
    _dir: Option<TempDir>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Db {
    pub async fn sqlite() -> Result<Db> {
        let dir = tempfile::tempdir()?;
        let path: PathBuf = dir.path().join("store.db");
        let url = format!("sqlite://{}", path.display());
        Ok(Db {
            store: open_store(&url).await?,
            url,
            kind: Kind::Sqlite,
            _dir: Some(dir),
        })
    }

    pub async fn postgres() -> Result<Db> {
        let url = fresh_pg_database().await?;
        Ok(Db {
            store: open_store(&url).await?,
            url,
            kind: Kind::Postgres,
            _dir: None,
        })
    }

    /// A second store on the same database: another replica, or the same
    /// gateway after a restart.
    pub async fn another(&self) -> Result<Arc<dyn TaskStore>> {
        Ok(open_store(&self.url).await?)
    }

    /// Replaces the store by a new one on the same database (a restart).
    pub async fn reopen(&mut self) -> Result<()> {
        self.store = self.another().await?;
        Ok(())
    }

    /// The audit log in this database.
    pub async fn audit(&self, options: AuditOptions) -> Result<Arc<AuditLog>> {
        Ok(Arc::new(AuditLog::open(&self.url, options).await?))
    }

    /// Runs `sql` with one text parameter behind the store's back, as a
    /// broken tool or an attacker with database access might.
    pub async fn exec(&self, sql: &str, param: &str) -> Result<u64> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        Ok(match self.kind {
            Kind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await?;
                let n = sqlx::query(sql).bind(param).execute(&pool).await?;
                pool.close().await;
                n.rows_affected()
            }
            Kind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await?;
                let n = sqlx::query(sql).bind(param).execute(&pool).await?;
                pool.close().await;
                n.rows_affected()
            }
        })
    }
}

/// Defines a test that runs on both backends: `mod NAME { fn sqlite; fn
/// postgres }`, each with `$db` bound to a fresh [`Db`].
macro_rules! both {
    ($(#[$m:meta])* async fn $name:ident($db:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$m])*
            async fn sqlite() -> anyhow::Result<()> {
                #[allow(unused_mut)]
                let mut $db = $crate::db::Db::sqlite().await?;
                $body
            }

            $(#[$m])*
            async fn postgres() -> anyhow::Result<()> {
                #[allow(unused_mut)]
                let mut $db = $crate::db::Db::postgres().await?;
                $body
            }
        }
    };
}
