//! What only PostgreSQL has: several processes ("replicas") on one
//! database, migrations under an advisory lock, the schema version check,
//! connection options and their failures. Each test has its own database
//! on the server of `MCP_TEST_DATABASE_URL` (see `db`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mcp_audit::{Signer, Verifier};
use mcp_store::{
    AuditLog, AuditOptions, IdempotencyClaim, IdempotencyKey, PgOptions, PgStore, StoreError,
    StoreWrite, TaskStore,
};

use crate::db::{fresh_pg_database, server_url, with_database};

fn signed(every: u64) -> AuditOptions {
    AuditOptions {
        signer: Some(Arc::new(Signer::from_bytes(&[9; 32]))),
        checkpoint_every: every,
        checkpoint_interval: None,
    }
}

/// The password of a `postgres://user:password@…` URL.
fn password_of(url: &str) -> Result<String> {
    let (_, rest) = url.split_once("://").context("scheme")?;
    let authority = &rest[..rest.find('@').context("no credentials in the test url")?];
    Ok(authority
        .split_once(':')
        .context("no password")?
        .1
        .to_owned())
}

/// Two gateway processes on one database, each with its task store and
/// audit log (own pools, own in-process locks), append at once: the
/// database holds one contiguous chain that the verifier accepts, with
/// the checkpoints each made verifying too, and the records carried task
/// writes are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_appending_at_once_form_one_valid_chain() -> Result<()> {
    let url = fresh_pg_database().await?;
    let a = AuditLog::open(&url, signed(7)).await?;
    let b = AuditLog::open(&url, signed(7)).await?;
    let store_a = PgStore::open(&PgOptions::new(url.clone())).await?;
    let store_b = PgStore::open(&PgOptions::new(url.clone())).await?;
    assert!(store_a.shares_database(&b) && store_b.shares_database(&a));
    let logs = [Arc::new(a), Arc::new(b)];
    let mut joins = Vec::new();
    for n in 0..200u64 {
        let log = Arc::clone(&logs[usize::try_from(n % 2)?]);
        joins.push(tokio::spawn(async move {
            let t = crate::task("acme", if n % 2 == 0 { "replica-a" } else { "replica-b" });
            let mut e = crate::audit::event(n);
            e.task_id = Some(t.id.to_string());
            log.append_with(e, vec![StoreWrite::InsertTask(t.clone())])
                .await
                .map(|rec| (rec, t))
        }));
    }
    let mut seqs = Vec::new();
    for j in joins {
        let (rec, t) = j.await??;
        seqs.push(rec.seq);
        assert_eq!(store_a.get_task("acme", t.id).await?, Some(t));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<u64>>(),
        "each place taken once"
    );
    let records = logs[0].records(0, None, 1000).await?;
    let checkpoints = logs[1].checkpoints().await?;
    assert!(!checkpoints.is_empty());
    let mut v = Verifier::new(
        checkpoints.clone(),
        Some(Signer::from_bytes(&[9; 32]).verifying_key()),
    );
    for r in &records {
        v.push(r)?;
    }
    let report = v.finish()?;
    assert_eq!(report.last_seq, 200);
    assert_eq!(report.checkpoints, checkpoints.len() as u64);
    let (sa, sb) = (logs[0].append_stats(), logs[1].append_stats());
    assert_eq!(sa.0 + sb.0, 200, "{sa:?} {sb:?}");
    Ok(())
}

/// Replicas starting at once on an empty database: every opener
/// succeeds and each migration is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_openers_migrate_once() -> Result<()> {
    let url = fresh_pg_database().await?;
    let mut joins = Vec::new();
    for _ in 0..6 {
        let options = PgOptions::new(url.clone()).max_connections(2);
        joins.push(tokio::spawn(async move { PgStore::open(&options).await }));
    }
    let mut stores = Vec::new();
    for j in joins {
        stores.push(j.await??);
    }
    let pool = sqlx::PgPool::connect(&url).await?;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await?;
    assert_eq!(versions, [1, 2, 3, 4]);
    let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM store_instance")
        .fetch_one(&pool)
        .await?;
    assert_eq!(instances, 1);
    let log = AuditLog::open(&url, AuditOptions::default()).await?;
    assert!(stores.iter().all(|s| s.shares_database(&log)));
    Ok(())
}

/// A database migrated by a newer build is refused before anything is
/// written, with a message that says so.
#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_message() -> Result<()> {
    let url = fresh_pg_database().await?;
    PgStore::open(&PgOptions::new(url.clone()))
        .await?
        .close()
        .await;
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9, 'from the future', TRUE, '\\x00', 1)",
    )
    .execute(&pool)
    .await?;
    for err in [
        PgStore::open(&PgOptions::new(url.clone())).await.err(),
        AuditLog::open(&url, AuditOptions::default()).await.err(),
    ] {
        let err = err.context("a newer schema must be refused")?;
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 9, known: 4 }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("version 9 is newer") && msg.contains("up to 4"),
            "{msg}"
        );
    }
    Ok(())
}

/// Unreachable servers, a wrong password, a missing database and a
/// garbled URL are errors naming the target without its password, quickly.
#[tokio::test]
async fn bad_targets_are_clear_errors_without_the_password() -> Result<()> {
    let server = server_url()?;
    let password = password_of(&server)?;
    let missing_dir = tempfile::tempdir()?;
    let cases = [
        // No server behind this socket directory.
        format!(
            "postgres://mcp:{password}@localhost/postgres?host={}",
            missing_dir.path().display()
        ),
        // Nothing listens on TCP port 1.
        format!("postgres://mcp:{password}@127.0.0.1:1/postgres"),
        server.replacen(&password, &format!("{password}x"), 1),
        with_database(&server, "no_such_database")?,
    ];
    for url in &cases {
        let started = std::time::Instant::now();
        let err = PgStore::open(&PgOptions::new(url.clone()))
            .await
            .err()
            .context("must fail")?;
        assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&password), "{shown}");
        assert!(shown.contains("***@"), "{shown}");
    }
    let err = mcp_store::open_store("postgres://u:p@host:notaport/db").await;
    assert!(matches!(err, Err(StoreError::BadUrl { .. })), "{err:?}");
    Ok(())
}

/// The password can come from a file (a mounted secret) instead of the
/// URL; neither the options nor the store show it.
#[tokio::test]
async fn the_password_file_is_read_and_never_shown() -> Result<()> {
    let url = fresh_pg_database().await?;
    let password = password_of(&url)?;
    let bare = url.replacen(&format!(":{password}@"), "@", 1);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pgpass");
    std::fs::write(&file, format!("{password}\n"))?;

    // No password at all: the server refuses the login.
    let err = PgStore::open(&PgOptions::new(bare.clone())).await.err();
    assert!(matches!(err, Some(StoreError::Connect { .. })), "{err:?}");

    let options = PgOptions::new(bare.clone()).password_file(&file);
    let store = PgStore::open(&options).await?;
    store.ping().await?;
    for shown in [format!("{options:?}"), format!("{store:?}")] {
        assert!(!shown.contains(&password), "{shown}");
    }
    assert!(!format!("{:?}", PgOptions::new(url.clone())).contains(&password));

    std::fs::write(&file, "wrong\n")?;
    let err = PgStore::open(&options).await.err();
    assert!(matches!(err, Some(StoreError::Connect { .. })), "{err:?}");
    let err =
        PgStore::open(&PgOptions::new(bare.clone()).password_file(dir.path().join("missing")))
            .await
            .err();
    assert!(
        matches!(err, Some(StoreError::PasswordFile { .. })),
        "{err:?}"
    );
    let err = PgStore::open(&PgOptions::new(url).password_file(&file))
        .await
        .err();
    assert!(
        matches!(err, Some(StoreError::PasswordTwice { .. })),
        "{err:?}"
    );
    // A password given as a query parameter counts, and is never shown.
    let in_query = format!("{bare}&password={password}");
    let err = PgStore::open(&PgOptions::new(in_query.clone()).password_file(&file))
        .await
        .err();
    assert!(
        matches!(err, Some(StoreError::PasswordTwice { .. })),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains(&password));
    let store = PgStore::open(&PgOptions::new(in_query.clone())).await?;
    store.ping().await?;
    assert!(!format!("{store:?} {:?}", PgOptions::new(in_query)).contains(&password));
    Ok(())
}

/// `sslmode` is honoured: `disable` connects in clear, `require` refuses
/// a server without TLS instead of falling back.
#[tokio::test]
async fn sslmode_is_honoured() -> Result<()> {
    let url = fresh_pg_database().await?;
    let store = PgStore::open(&PgOptions::new(format!("{url}&sslmode=disable"))).await?;
    store.ping().await?;
    let err = PgStore::open(&PgOptions::new(format!("{url}&sslmode=require")))
        .await
        .err();
    assert!(matches!(err, Some(StoreError::Connect { .. })), "{err:?}");
    Ok(())
}

/// An idempotency key claimed at once through two replicas is won once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_is_won_once_across_replicas() -> Result<()> {
    let url = fresh_pg_database().await?;
    let stores = [
        PgStore::open(&PgOptions::new(url.clone())).await?,
        PgStore::open(&PgOptions::new(url)).await?,
    ];
    let now = crate::now_ms();
    let mut joins = Vec::new();
    for i in 0..20 {
        let store = stores[i % 2].clone();
        joins.push(tokio::spawn(async move {
            let key = IdempotencyKey {
                tenant: "acme".into(),
                principal: "alice".into(),
                key: "k".into(),
                request_hash: "h".into(),
                task_id: mcp_core::TaskId::new(),
                at: now,
            };
            store
                .claim_idempotency_key(&key, now - time::Duration::minutes(10))
                .await
                .map(|claim| (key.task_id, claim))
        }));
    }
    let mut winners = Vec::new();
    let mut answered = Vec::new();
    for j in joins {
        match j.await?? {
            (id, IdempotencyClaim::New) => winners.push(id),
            (_, IdempotencyClaim::Existing { task_id, .. }) => answered.push(task_id),
        }
    }
    assert_eq!(winners.len(), 1);
    assert!(answered.iter().all(|id| *id == winners[0]));
    Ok(())
}
