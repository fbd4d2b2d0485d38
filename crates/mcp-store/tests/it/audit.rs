//! The audit log on a real SQLite file: chain, checkpoints, append-only
//! triggers, read-only access.

use std::sync::Arc;

use anyhow::Result;
use mcp_audit::{AuditEvent, GENESIS_HASH, Signer, Verifier};
use mcp_store::{AuditLog, AuditOptions, SqliteStore, StoreError};

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        at_ms: 1_700_000_000_000 + i64::try_from(n).unwrap_or(0),
        request_id: format!("req-{n}"),
        trace_id: None,
        principal: "alice".to_owned(),
        tenant: "t1".to_owned(),
        action: "status".to_owned(),
        decision: None,
        task_id: None,
        command: None,
        input_sha256: None,
        output_sha256: None,
        outcome: "ok".to_owned(),
        latency_us: 1,
    }
}

fn options(every: u64) -> AuditOptions {
    AuditOptions {
        signer: Some(Arc::new(Signer::from_bytes(&[3; 32]))),
        checkpoint_every: every,
        checkpoint_interval: None,
    }
}

#[tokio::test]
async fn concurrent_appends_form_one_contiguous_chain_with_checkpoints() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let log = Arc::new(AuditLog::open(&url, options(4)).await?);
    let mut joins = Vec::new();
    for n in 1..=20 {
        let log = log.clone();
        joins.push(tokio::spawn(async move { log.append(event(n)).await }));
    }
    for j in joins {
        j.await??;
    }
    let records = log.records(0, None, 100).await?;
    assert_eq!(records.len(), 20);
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    let cps = log.checkpoints().await?;
    assert_eq!(
        cps.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 8, 12, 16, 20]
    );
    let mut v = Verifier::new(cps, Some(Signer::from_bytes(&[3; 32]).verifying_key()));
    for r in &records {
        v.push(r)?;
    }
    let report = v.finish()?;
    assert_eq!((report.last_seq, report.checkpoints), (20, 5));
    Ok(())
}

#[tokio::test]
async fn the_chain_continues_across_reopen_and_beside_the_task_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("g.db");
    let url = format!("sqlite://{}", path.display());
    // The task store opens (and migrates) the same file first, as the gateway does.
    let store = SqliteStore::open(&path).await?;
    let log = AuditLog::open(&url, options(0)).await?;
    let first = log.append(event(1)).await?;
    log.close().await;
    let log = AuditLog::open(&url, options(0)).await?;
    let second = log.append(event(2)).await?;
    assert_eq!(second.seq, 2);
    assert_eq!(second.prev_hash, first.hash);
    // A forced checkpoint anchors the tail; with nothing new, none is written.
    let cp = log.checkpoint_if_due(5, true).await?;
    assert_eq!(cp.map(|c| c.seq), Some(2));
    assert!(log.checkpoint_if_due(6, true).await?.is_none());
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn checkpoints_by_time_follow_the_interval() -> Result<()> {
    let log = AuditLog::open(
        "sqlite::memory:",
        AuditOptions {
            checkpoint_interval: Some(std::time::Duration::from_secs(10)),
            ..options(0)
        },
    )
    .await?;
    let mut e = event(1);
    e.at_ms = 1_000;
    log.append(e.clone()).await?; // first record: no checkpoint yet, so one is due
    e.at_ms = 5_000;
    log.append(e.clone()).await?;
    e.at_ms = 11_000;
    log.append(e.clone()).await?;
    let seqs: Vec<u64> = log.checkpoints().await?.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1, 3]);
    assert!(log.checkpoint_if_due(12_000, false).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn updates_and_deletes_abort() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("g.db");
    let url = format!("sqlite://{}", path.display());
    let log = AuditLog::open(&url, options(1)).await?;
    log.append(event(1)).await?;
    log.close().await;
    let store = SqliteStore::open(&path).await?;
    drop(store);
    let pool = sqlx_pool(&path).await?;
    for sql in [
        "UPDATE audit_log SET outcome = 'x' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1",
        "UPDATE audit_checkpoints SET hash = 'x'",
        "DELETE FROM audit_checkpoints",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn read_only_access_does_not_create_or_migrate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.db");
    assert!(matches!(
        AuditLog::open_read_only(&missing).await,
        Err(StoreError::Io { .. })
    ));
    assert!(!missing.exists());
    let path = dir.path().join("g.db");
    let log = AuditLog::open(&format!("sqlite://{}", path.display()), options(0)).await?;
    log.append(event(1)).await?;
    log.close().await;
    let ro = AuditLog::open_read_only(&path).await?;
    assert_eq!(ro.records(0, Some(0), 10).await?.len(), 1);
    assert!(ro.records(0, Some(i64::MAX), 10).await?.is_empty());
    assert!(ro.append(event(2)).await.is_err());
    Ok(())
}

async fn sqlx_pool(path: &std::path::Path) -> Result<sqlx::SqlitePool> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    Ok(sqlx::SqlitePool::connect_with(opts).await?)
}
