//! The audit log on a real database (SQLite file and PostgreSQL, see
//! `db`): chain, checkpoints, append-only triggers, read-only access.

use std::sync::Arc;

use anyhow::{Context, Result};
use mcp_audit::{AuditEvent, GENESIS_HASH, Signer, Verifier};
use mcp_core::TaskState;
use mcp_store::{
    AuditLog, AuditOptions, DecisionDetails, SqliteStore, StoreError, StoreWrite, TaskStore,
};

pub(crate) fn event(n: u64) -> AuditEvent {
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

both! {
#[tokio::test]
async fn concurrent_appends_form_one_contiguous_chain_with_checkpoints(db) {
    let log = db.audit(options(4)).await?;
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
}

both! {
#[tokio::test]
async fn the_chain_continues_across_reopen_and_beside_the_task_store(db) {
    // The task store opened (and migrated) the database first, as the gateway does.
    let log = db.audit(options(0)).await?;
    let first = log.append(event(1)).await?;
    log.close().await;
    let log = db.audit(options(0)).await?;
    let second = log.append(event(2)).await?;
    assert_eq!(second.seq, 2);
    assert_eq!(second.prev_hash, first.hash);
    // A forced checkpoint anchors the tail; with nothing new, none is written.
    let cp = log.checkpoint_if_due(5, true).await?;
    assert_eq!(cp.map(|c| c.seq), Some(2));
    assert!(log.checkpoint_if_due(6, true).await?.is_none());
    Ok(())
}
}

both! {
#[tokio::test]
async fn checkpoints_by_time_follow_the_interval(db) {
    let log = db
        .audit(AuditOptions {
            checkpoint_interval: Some(std::time::Duration::from_secs(10)),
            ..options(0)
        })
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
}

both! {
#[tokio::test]
async fn updates_and_deletes_abort(db) {
    let log = db.audit(options(1)).await?;
    log.append(event(1)).await?;
    log.close().await;
    for sql in [
        "UPDATE audit_log SET outcome = $1 WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1 OR outcome = $1",
        "UPDATE audit_checkpoints SET hash = $1",
        "DELETE FROM audit_checkpoints WHERE hash <> $1",
    ] {
        let err = db.exec(sql, "x").await.err().context("must abort")?;
        assert!(format!("{err:#}").contains("append-only"), "{sql}: {err:#}");
    }
    assert_eq!(log.records(0, None, 10).await.map(|r| r.len()).ok(), None, "closed");
    let again = db.audit(options(1)).await?;
    assert_eq!(again.records(0, None, 10).await?.len(), 1);
    assert_eq!(again.checkpoints().await?.len(), 1);
    Ok(())
}
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

/// A store and an audit log on one database, as the gateway opens them.
async fn store_and_log(db: &crate::db::Db) -> Result<(Arc<dyn TaskStore>, Arc<AuditLog>)> {
    Ok((db.store.clone(), db.audit(options(0)).await?))
}

fn verify_chain(records: &[mcp_audit::AuditRecord]) -> Result<u64> {
    let mut v = Verifier::new(Vec::new(), None);
    for r in records {
        v.push(r)?;
    }
    Ok(v.finish()?.last_seq)
}

#[tokio::test]
async fn only_a_log_on_the_stores_own_file_shares_its_database() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("g.db");
    let store = SqliteStore::open(&path).await?;
    let log = AuditLog::open(&format!("sqlite://{}", path.display()), options(0)).await?;
    assert!(store.shares_database(&log));
    // The same file spelt differently is still the same database.
    let other_spelling = format!("sqlite://{}/./g.db", dir.path().display());
    let again = AuditLog::open(&other_spelling, options(0)).await?;
    assert!(store.shares_database(&again));
    let elsewhere = AuditLog::open(
        &format!("sqlite://{}", dir.path().join("other.db").display()),
        options(0),
    )
    .await?;
    assert!(!store.shares_database(&elsewhere));
    // Two in-memory databases are two databases.
    let memory = SqliteStore::open_in_memory().await?;
    let memory_log = AuditLog::open("sqlite::memory:", options(0)).await?;
    assert!(!memory.shares_database(&memory_log));
    Ok(())
}

/// On PostgreSQL a log shares the store's database when it is the same
/// database, however the URL spells it, and not another one on the same
/// server.
#[tokio::test]
async fn only_a_log_on_the_stores_own_pg_database_shares_it() -> Result<()> {
    let db = crate::db::Db::postgres().await?;
    assert!(db.store.shares_database(&*db.audit(options(0)).await?));
    let respelt = db.url.replacen("postgres://", "postgresql://", 1);
    let again = AuditLog::open(&respelt, options(0)).await?;
    assert!(db.store.shares_database(&again));
    let other = AuditLog::open(&crate::db::fresh_pg_database().await?, options(0)).await?;
    assert!(!db.store.shares_database(&other));
    let sqlite = crate::db::Db::sqlite().await?;
    assert!(!db.store.shares_database(&*sqlite.audit(options(0)).await?));
    assert!(!sqlite.store.shares_database(&again));
    Ok(())
}

both! {
#[tokio::test]
async fn writes_carried_by_an_append_are_stored_with_the_record(db) {
    let (store, log) = store_and_log(&db).await?;
    let t = crate::task("acme", "replica-1");
    let d = crate::decision(true, Some(t.id));
    let details = DecisionDetails {
        input: Some(serde_json::json!({"request": {"kind": "command"}})),
        latency_us: 42,
        profile: Some("default".into()),
        ..DecisionDetails::default()
    };
    let rec = log
        .append_with(
            event(1),
            vec![
                StoreWrite::Decision {
                    record: d.clone(),
                    details: Arc::new(details.clone()),
                },
                StoreWrite::InsertTask(t.clone()),
            ],
        )
        .await?;
    assert_eq!(rec.seq, 1);
    // The task store reads what the log's transaction wrote.
    assert_eq!(store.get_task("acme", t.id).await?, Some(t.clone()));
    assert_eq!(store.get_decision(d.id).await?, Some(d));
    let at = crate::now_ms();
    log.append_with(
        event(2),
        vec![StoreWrite::Finish {
            id: t.id,
            state: TaskState::Completed,
            completed_at: at,
            result: Some(Arc::new(crate::result())),
            failure_reason: None,
        }],
    )
    .await?;
    let done = store.get_task("acme", t.id).await?.expect("stored");
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.completed_at, Some(at));
    assert_eq!(done.result, Some(crate::result()));
    assert_eq!(verify_chain(&log.records(0, None, 10).await?)?, 2);
    Ok(())
}
}

both! {
/// Many appends share a batch; the ones whose writes are refused (a
/// duplicate task, a task that already ended) fail alone, with the
/// store's own error, leave nothing behind (not even their decision), and
/// take no place in the chain, which stays contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_write_fails_its_append_alone(db) {
    let (store, log) = store_and_log(&db).await?;
    let taken = crate::task("acme", "replica-1");
    store.insert_task(&taken).await?;
    let ended = crate::task("acme", "replica-1");
    store.insert_task(&ended).await?;
    store
        .finish(
            ended.id,
            TaskState::Cancelled,
            crate::now_ms(),
            None,
            Some("x"),
        )
        .await?;
    let mut joins = Vec::new();
    for n in 0..48u64 {
        let log = log.clone();
        let (taken, ended) = (taken.clone(), ended.clone());
        joins.push(tokio::spawn(async move {
            let mut fresh = crate::task("acme", "replica-1");
            let decision = crate::decision(true, Some(fresh.id));
            let writes = match n % 3 {
                // A duplicate id after a decision: the decision goes too.
                0 => {
                    fresh = taken;
                    vec![
                        StoreWrite::Decision {
                            record: decision.clone(),
                            details: Arc::default(),
                        },
                        StoreWrite::InsertTask(fresh.clone()),
                    ]
                }
                1 => vec![StoreWrite::Finish {
                    id: ended.id,
                    state: TaskState::Completed,
                    completed_at: crate::now_ms(),
                    result: Some(Arc::new(crate::result())),
                    failure_reason: None,
                }],
                _ => vec![
                    StoreWrite::Decision {
                        record: decision.clone(),
                        details: Arc::default(),
                    },
                    StoreWrite::InsertTask(fresh.clone()),
                ],
            };
            let answer = log.append_with(event(n), writes).await;
            (n, decision, fresh.id, answer)
        }));
    }
    let mut stored = 0;
    for j in joins {
        let (n, decision, id, answer) = j.await?;
        match n % 3 {
            0 => {
                assert!(
                    matches!(answer, Err(StoreError::DuplicateTask { id: dup }) if dup == taken.id),
                    "{answer:?}"
                );
                assert_eq!(store.get_decision(decision.id).await?, None);
            }
            1 => assert!(
                matches!(
                    answer,
                    Err(StoreError::InvalidTransition {
                        from: TaskState::Cancelled,
                        to: TaskState::Completed,
                        ..
                    })
                ),
                "{answer:?}"
            ),
            _ => {
                answer?;
                stored += 1;
                assert!(store.get_task("acme", id).await?.is_some());
                assert_eq!(store.get_decision(decision.id).await?, Some(decision));
            }
        }
    }
    let ended_now = store.get_task("acme", ended.id).await?.expect("stored");
    assert_eq!(ended_now.state, TaskState::Cancelled);
    let records = log.records(0, None, 100).await?;
    assert_eq!(records.len(), stored);
    assert_eq!(verify_chain(&records)?, 16);
    assert_eq!(log.append_stats().0, 16);
    Ok(())
}
}
