//! Integration tests against real databases: a SQLite file in a temporary
//! directory and a fresh database on a real PostgreSQL server (see `db`);
//! most tests run on both, through the [`TaskStore`] trait.

#[macro_use]
mod db;
mod audit;
mod pg;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use mcp_core::{ResourceUsage, TaskId, TaskKind, TaskRecord, TaskResult, TaskState};
use mcp_store::{
    DecisionDetails, DecisionLogEntry, DecisionQuery, DecisionRecord, INTERRUPTED, SqliteStore,
    StoreError, TaskStore, open_store,
};
use time::OffsetDateTime;

/// A UTC timestamp from calendar parts (the `time` macros are not enabled).
fn utc(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8, nanos: u32) -> Result<OffsetDateTime> {
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo)?, d)?;
    Ok(date.with_hms_nano(h, mi, s, nanos)?.assume_utc())
}

/// Now, truncated to the millisecond (the store's precision).
fn now_ms() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t)
}

fn task(tenant: &str, owner: &str) -> TaskRecord {
    TaskRecord {
        id: TaskId::new(),
        kind: TaskKind::Command,
        state: TaskState::Created,
        tenant: tenant.to_owned(),
        principal: "alice".to_owned(),
        command: "echo".to_owned(),
        args: vec!["hello".to_owned()],
        profile: None,
        created_at: now_ms(),
        started_at: None,
        completed_at: None,
        metadata: BTreeMap::new(),
        result: None,
        failure_reason: None,
        owner: owner.to_owned(),
    }
}

fn result() -> TaskResult {
    TaskResult {
        exit_code: 3,
        stdout: vec![0xff, 0xfe, 0x00, b'o', b'k', 0x80],
        stderr: b"warn\n".to_vec(),
        stdout_truncated: true,
        stderr_truncated: false,
        usage: ResourceUsage {
            cpu_time_ms: 12,
            max_memory_kb: 3_456,
            io_read_bytes: 789,
            io_write_bytes: u64::try_from(i64::MAX).unwrap_or(0),
        },
        execution_time_ms: 42,
    }
}

both! {
#[tokio::test]
async fn every_field_round_trips(db) {
    let store = db.store.clone();
    let rec = TaskRecord {
        id: TaskId::new(),
        kind: TaskKind::File,
        state: TaskState::Failed,
        tenant: "acme".into(),
        principal: "bob@acme".into(),
        command: "write path/ü".into(),
        args: vec![
            "a b".into(),
            "\"quoted\"".into(),
            String::new(),
            "ünï".into(),
        ],
        profile: Some("strict".into()),
        created_at: utc(2024, 2, 29, 23, 59, 59, 999_000_000)?,
        started_at: Some(utc(2024, 3, 1, 0, 0, 0, 1_000_000)?),
        completed_at: Some(utc(2024, 3, 1, 0, 0, 1, 500_000_000)?),
        metadata: BTreeMap::from([
            ("trace".to_owned(), "abc".to_owned()),
            ("k=v".to_owned(), "{\"json\": true}".to_owned()),
        ]),
        result: Some(result()),
        failure_reason: Some("exit status 3".into()),
        owner: "replica-1".into(),
    };
    store.insert_task(&rec).await?;
    assert_eq!(store.get_task("acme", rec.id).await?, Some(rec));
    Ok(())
}
}

both! {
#[tokio::test]
async fn timestamps_are_truncated_to_milliseconds(db) {
    let store = db.store.clone();
    let mut rec = task("t", "o");
    rec.created_at = utc(2025, 1, 1, 0, 0, 0, 123_999_999)?;
    store.insert_task(&rec).await?;
    let got = store.get_task("t", rec.id).await?.map(|r| r.created_at);
    assert_eq!(got, Some(utc(2025, 1, 1, 0, 0, 0, 123_000_000)?));
    Ok(())
}
}

both! {
#[tokio::test]
async fn lifecycle_updates_state_and_timestamps(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;

    let queued = rec.created_at + time::Duration::milliseconds(5);
    store.set_state(rec.id, TaskState::Queued, queued).await?;
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!((got.state, got.started_at), (TaskState::Queued, None));

    let started = queued + time::Duration::milliseconds(7);
    store.set_state(rec.id, TaskState::Running, started).await?;
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!(
        (got.state, got.started_at),
        (TaskState::Running, Some(started))
    );

    let done = started + time::Duration::seconds(2);
    store
        .finish(rec.id, TaskState::Completed, done, Some(&result()), None)
        .await?;
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!(got.state, TaskState::Completed);
    assert_eq!(got.created_at, rec.created_at);
    assert_eq!(got.started_at, Some(started));
    assert_eq!(got.completed_at, Some(done));
    assert_eq!(got.result, Some(result()));
    assert_eq!(got.failure_reason, None);
    Ok(())
}
}

both! {
#[tokio::test]
async fn running_twice_keeps_the_first_start_and_states_never_go_back(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    let first = now_ms();
    store.set_state(rec.id, TaskState::Running, first).await?;
    store
        .set_state(
            rec.id,
            TaskState::Running,
            first + time::Duration::seconds(1),
        )
        .await?;
    let err = store.set_state(rec.id, TaskState::Queued, now_ms()).await;
    assert!(
        matches!(
            err,
            Err(StoreError::InvalidTransition {
                from: TaskState::Running,
                to: TaskState::Queued,
                ..
            })
        ),
        "{err:?}"
    );
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!(
        (got.state, got.started_at),
        (TaskState::Running, Some(first))
    );
    Ok(())
}
}

both! {
#[tokio::test]
async fn finishing_twice_is_refused_and_keeps_the_first_outcome(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    let done = now_ms();
    store
        .finish(rec.id, TaskState::Completed, done, Some(&result()), None)
        .await?;
    let err = store
        .finish(
            rec.id,
            TaskState::Cancelled,
            done + time::Duration::seconds(1),
            None,
            Some("cancelled by user"),
        )
        .await;
    assert!(
        matches!(
            err,
            Err(StoreError::InvalidTransition { id, from: TaskState::Completed, to: TaskState::Cancelled }) if id == rec.id
        ),
        "{err:?}"
    );
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!(got.state, TaskState::Completed);
    assert_eq!(got.completed_at, Some(done));
    assert_eq!(got.result, Some(result()));
    assert_eq!(got.failure_reason, None);
    Ok(())
}
}

both! {
#[tokio::test]
async fn set_state_on_a_terminal_task_is_refused(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    store
        .finish(
            rec.id,
            TaskState::TimedOut,
            now_ms(),
            None,
            Some("timeout after 30s"),
        )
        .await?;
    for to in [TaskState::Created, TaskState::Queued, TaskState::Running] {
        let err = store.set_state(rec.id, to, now_ms()).await;
        assert!(
            matches!(
                err,
                Err(StoreError::InvalidTransition {
                    from: TaskState::TimedOut,
                    ..
                })
            ),
            "{to:?}: {err:?}"
        );
    }
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!(got.state, TaskState::TimedOut);
    assert_eq!(got.started_at, None);
    assert_eq!(got.result, None);
    assert_eq!(got.failure_reason.as_deref(), Some("timeout after 30s"));
    Ok(())
}
}

both! {
#[tokio::test]
async fn wrong_kind_of_target_state_is_refused(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    let err = store
        .set_state(rec.id, TaskState::Completed, now_ms())
        .await;
    assert!(
        matches!(
            err,
            Err(StoreError::InvalidTransition {
                from: TaskState::Created,
                to: TaskState::Completed,
                ..
            })
        ),
        "{err:?}"
    );
    let err = store
        .finish(rec.id, TaskState::Running, now_ms(), None, None)
        .await;
    assert!(
        matches!(
            err,
            Err(StoreError::InvalidTransition {
                to: TaskState::Running,
                ..
            })
        ),
        "{err:?}"
    );
    let got = store.get_task("t", rec.id).await?.expect("task exists");
    assert_eq!(got.state, TaskState::Created);
    Ok(())
}
}

both! {
#[tokio::test]
async fn unknown_ids_are_not_found(db) {
    let store = db.store.clone();
    let id = TaskId::new();
    assert!(matches!(
        store.set_state(id, TaskState::Running, now_ms()).await,
        Err(StoreError::NotFound { id: got }) if got == id
    ));
    assert!(matches!(
        store.finish(id, TaskState::Completed, now_ms(), Some(&result()), None).await,
        Err(StoreError::NotFound { id: got }) if got == id
    ));
    assert!(matches!(
        store.set_state(id, TaskState::Failed, now_ms()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get_task("t", id).await?, None);
    Ok(())
}
}

both! {
#[tokio::test]
async fn other_tenants_cannot_see_a_task(db) {
    let store = db.store.clone();
    let rec = task("acme", "o");
    store.insert_task(&rec).await?;
    assert_eq!(store.get_task("globex", rec.id).await?, None);
    assert_eq!(store.get_task("", rec.id).await?, None);
    assert_eq!(
        store.get_task("acme", rec.id).await?.map(|r| r.id),
        Some(rec.id)
    );
    Ok(())
}
}

both! {
#[tokio::test]
async fn duplicate_ids_are_refused(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    let mut again = task("other", "o2");
    again.id = rec.id;
    let err = store.insert_task(&again).await;
    assert!(
        matches!(err, Err(StoreError::DuplicateTask { id }) if id == rec.id),
        "{err:?}"
    );
    assert_eq!(store.get_task("t", rec.id).await?, Some(rec));
    assert_eq!(store.get_task("other", again.id).await?, None);
    Ok(())
}
}

both! {
#[tokio::test]
async fn mark_interrupted_fails_only_the_owners_live_tasks(db) {
    let store = db.store.clone();
    let mut mine = Vec::new();
    for state in [TaskState::Created, TaskState::Queued, TaskState::Running] {
        let rec = task("t", "replica-a");
        store.insert_task(&rec).await?;
        if state != TaskState::Created {
            store.set_state(rec.id, state, now_ms()).await?;
        }
        mine.push(rec);
    }
    let finished = task("t", "replica-a");
    store.insert_task(&finished).await?;
    store
        .finish(
            finished.id,
            TaskState::Completed,
            now_ms(),
            Some(&result()),
            None,
        )
        .await?;
    let theirs = task("t", "replica-b");
    store.insert_task(&theirs).await?;
    store
        .set_state(theirs.id, TaskState::Running, now_ms())
        .await?;

    let at = now_ms() + time::Duration::seconds(1);
    assert_eq!(store.mark_interrupted("replica-a", at).await?, 3);
    for rec in &mine {
        let got = store.get_task("t", rec.id).await?.expect("task exists");
        assert_eq!(got.state, TaskState::Failed);
        assert_eq!(got.failure_reason.as_deref(), Some(INTERRUPTED));
        assert_eq!(got.failure_reason.as_deref(), Some("interrupted"));
        assert_eq!(got.completed_at, Some(at));
        assert_eq!(got.result, None);
    }
    let got = store
        .get_task("t", finished.id)
        .await?
        .expect("task exists");
    assert_eq!(
        (got.state, got.failure_reason),
        (TaskState::Completed, None)
    );
    let got = store.get_task("t", theirs.id).await?.expect("task exists");
    assert_eq!((got.state, got.completed_at), (TaskState::Running, None));

    // Nothing is left to interrupt.
    assert_eq!(store.mark_interrupted("replica-a", at).await?, 0);
    Ok(())
}
}

both! {
#[tokio::test]
async fn data_survives_a_restart_and_migrations_rerun_idempotently(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    store
        .set_state(rec.id, TaskState::Running, now_ms())
        .await?;
    let decision = decision(true, Some(rec.id));
    store.record_decision(&decision).await?;
    let before = store.get_task("t", rec.id).await?;
    drop(store);

    for _ in 0..2 {
        let reopened = db.another().await?;
        assert_eq!(reopened.get_task("t", rec.id).await?, before);
        assert_eq!(
            reopened.get_decision(decision.id).await?,
            Some(decision.clone())
        );
    }
    // After a crash the replica fails what it was running.
    let reopened = db.another().await?;
    assert_eq!(reopened.mark_interrupted("o", now_ms()).await?, 1);
    Ok(())
}
}

#[tokio::test]
async fn open_creates_missing_parent_directories() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("a/b/c/store.db");
    let store = SqliteStore::open(&path).await?;
    store.insert_task(&task("t", "o")).await?;
    assert!(path.is_file());
    // The journal is write-ahead: the log sits next to the open database.
    assert!(dir.path().join("a/b/c/store.db-wal").is_file());
    Ok(())
}

#[tokio::test]
async fn open_reports_an_unusable_parent_as_io() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory")?;
    let err = SqliteStore::open(&file.join("sub/store.db")).await;
    assert!(matches!(err, Err(StoreError::Io { .. })), "{err:?}");
    Ok(())
}

fn decision(allow: bool, task_id: Option<TaskId>) -> DecisionRecord {
    DecisionRecord {
        id: uuid::Uuid::now_v7(),
        at: now_ms(),
        tenant: "acme".into(),
        principal: "alice".into(),
        kind: if task_id.is_some() { "command" } else { "file" }.into(),
        summary: if task_id.is_some() {
            "echo"
        } else {
            "write path/x"
        }
        .into(),
        allow,
        deny_reasons: if allow {
            Vec::new()
        } else {
            vec!["command rm is not allowed".into(), "network denied".into()]
        },
        policy_revision: "sha256:abc".into(),
        task_id,
    }
}

both! {
#[tokio::test]
async fn decisions_round_trip(db) {
    let store = db.store.clone();
    let cases = [
        decision(true, Some(TaskId::new())),
        decision(true, None),
        decision(false, None),
        decision(false, Some(TaskId::new())),
    ];
    for d in &cases {
        store.record_decision(d).await?;
    }
    for d in &cases {
        assert_eq!(store.get_decision(d.id).await?.as_ref(), Some(d));
    }
    assert_eq!(store.get_decision(uuid::Uuid::now_v7()).await?, None);
    let dup = store.record_decision(&cases[0]).await;
    assert!(matches!(dup, Err(StoreError::Database(_))), "{dup:?}");
    Ok(())
}
}

#[tokio::test]
async fn open_store_dispatches_on_the_url_scheme() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("via-url.db");
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
    ] {
        let store: Arc<dyn TaskStore> = open_store(&url).await?;
        store.ping().await?;
        let rec = task("t", "o");
        store.insert_task(&rec).await?;
        assert_eq!(store.get_task("t", rec.id).await?, Some(rec));
    }
    assert!(path.is_file());

    let memory = open_store("sqlite::memory:").await?;
    memory.ping().await?;

    // Both PostgreSQL spellings reach for a server (none listens in this
    // directory): a connection error that names the target, not the password.
    for scheme in ["postgres", "postgresql"] {
        let url = format!(
            "{scheme}://u:secret@localhost/mcp?host={}",
            dir.path().display()
        );
        let err = open_store(&url).await;
        assert!(
            matches!(err, Err(StoreError::Connect { ref target, .. }) if target.starts_with(scheme)),
            "{url}: {err:?}"
        );
        let shown = format!(
            "{:?} {}",
            err.as_ref().err(),
            err.as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
    for url in ["", "garbage", "mysql://db", "sqlite:", "http://x/y"] {
        let err = open_store(url).await;
        assert!(
            matches!(err, Err(StoreError::BadUrl { .. })),
            "{url}: {err:?}"
        );
    }
    Ok(())
}

both! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_all_land(db) {
    let store = db.store.clone();
    let store = Arc::new(store);
    let mut handles = Vec::new();
    for i in 0..50 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let rec = task(&format!("tenant-{}", i % 5), "o");
            store.insert_task(&rec).await.map(|()| rec)
        }));
    }
    let mut inserted = Vec::new();
    for h in handles {
        inserted.push(h.await??);
    }
    assert_eq!(inserted.len(), 50);
    for rec in &inserted {
        assert_eq!(
            store.get_task(&rec.tenant, rec.id).await?.as_ref(),
            Some(rec)
        );
    }
    Ok(())
}
}

both! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_finishes_have_exactly_one_winner(db) {
    let store = db.store.clone();
    let rec = task("t", "o");
    store.insert_task(&rec).await?;
    // A second pool on the same database stands in for another replica.
    let other = db.another().await?;
    let stores = [store, other];
    let mut handles = Vec::new();
    for i in 0..20 {
        let store = stores[i % 2].clone();
        handles.push(tokio::spawn(async move {
            let state = if i % 2 == 0 {
                TaskState::Completed
            } else {
                TaskState::Cancelled
            };
            store
                .finish(
                    rec.id,
                    state,
                    now_ms(),
                    None,
                    Some(&format!("finisher {i}")),
                )
                .await
        }));
    }
    let mut wins = 0;
    for h in handles {
        match h.await? {
            Ok(()) => wins += 1,
            Err(StoreError::InvalidTransition { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    assert_eq!(wins, 1);
    Ok(())
}
}

// ---- decision log -----------------------------------------------------------

fn details(n: u64) -> DecisionDetails {
    let obligations = mcp_core::ObligationSet {
        profile: Some("default".into()),
        require_approval: Some(mcp_core::ApprovalObligation {
            roles: vec!["lead".into()],
            reason: "write".into(),
            requirements: vec![mcp_core::ApprovalRequirement {
                roles: vec!["lead".into()],
                reason: "write".into(),
            }],
        }),
        ..mcp_core::ObligationSet::default()
    };
    DecisionDetails {
        input: Some(serde_json::json!({
            "principal": {"id": "alice", "tenant": "acme"},
            "request": {"kind": "command", "command": {"name": "ls", "args": ["-la", "ünï"]}},
            "n": n,
        })),
        latency_us: 17 + n,
        profile: Some("default".into()),
        obligations,
        warnings: vec!["recursive delete of \"x\"".into()],
    }
}

fn at(rec: &mut DecisionRecord, secs: i64) -> Result<()> {
    rec.at = utc(2025, 6, 1, 12, 0, 0, 0)? + time::Duration::seconds(secs);
    Ok(())
}

both! {
#[tokio::test]
async fn decision_log_entries_round_trip_with_their_details(db) {
    let store = db.store.clone();
    let mut with = decision(true, Some(TaskId::new()));
    at(&mut with, 0)?;
    let mut without = decision(false, None);
    at(&mut without, 1)?;
    store.record_decision_with(&with, &details(1)).await?;
    store.record_decision(&without).await?;

    let all = store.list_decisions(&DecisionQuery::default()).await?;
    assert_eq!(
        all,
        vec![
            DecisionLogEntry {
                record: with.clone(),
                details: details(1)
            },
            DecisionLogEntry {
                record: without.clone(),
                details: DecisionDetails::default()
            },
        ]
    );
    // The plain reader still sees the decision.
    assert_eq!(store.get_decision(with.id).await?, Some(with.clone()));

    // The row holds the input as JSON text, read back after a restart.
    let reopened = db.another().await?;
    let only = reopened
        .list_decisions(&DecisionQuery {
            with_input: true,
            ..DecisionQuery::default()
        })
        .await?;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].details.input, details(1).input);
    assert_eq!(only[0].details.latency_us, 18);
    Ok(())
}
}

both! {
#[tokio::test]
async fn decision_log_is_filtered_by_time_and_tenant_and_paged_in_order(db) {
    let store = db.store.clone();
    let mut ids = Vec::new();
    for i in 0..7i64 {
        let mut rec = decision(i % 2 == 0, None);
        // Two decisions share each second, so paging must break ties by id.
        at(&mut rec, i / 2)?;
        rec.tenant = if i == 3 {
            "other".into()
        } else {
            "acme".into()
        };
        store
            .record_decision_with(&rec, &details(u64::try_from(i)?))
            .await?;
        ids.push(rec.id);
    }
    let since = utc(2025, 6, 1, 12, 0, 1, 0)?;
    let got = store
        .list_decisions(&DecisionQuery {
            since: Some(since),
            tenant: Some("acme".into()),
            ..DecisionQuery::default()
        })
        .await?;
    let want: Vec<_> = [2usize, 4, 5, 6].iter().map(|&i| ids[i]).collect();
    assert_eq!(got.iter().map(|e| e.record.id).collect::<Vec<_>>(), want);

    // Pages of two, following the keyset, visit every entry once, in order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_decisions(&DecisionQuery {
                after,
                limit: 2,
                ..DecisionQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.record.at, last.record.id));
        seen.extend(page.iter().map(|e| e.record.id));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    Ok(())
}
}

both! {
#[tokio::test]
async fn corrupt_decision_log_input_is_reported(db) {
    let store = db.store.clone();
    let rec = decision(true, None);
    store.record_decision_with(&rec, &details(0)).await?;
    // Edit the row behind the store's back, as a broken tool might.
    let edited = db
        .exec(
            "UPDATE decisions SET input = '{broken' WHERE id = $1",
            &rec.id.hyphenated().to_string(),
        )
        .await?;
    assert_eq!(edited, 1);
    let reopened = db.another().await?;
    let err = reopened.list_decisions(&DecisionQuery::default()).await;
    assert!(
        matches!(err, Err(StoreError::Corrupt { ref reason, .. }) if reason.starts_with("input")),
        "{err:?}"
    );
    Ok(())
}
}

both! {
#[tokio::test]
async fn list_tasks_pages_one_tenants_tasks_newest_first_with_filters(db) {
    use mcp_store::TaskQuery;
    let store = db.store.clone();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut t = task("acme", "test");
        if i % 2 == 0 {
            t.state = mcp_core::TaskState::Running;
        }
        store.insert_task(&t).await.unwrap();
        ids.push(t.id);
    }
    store.insert_task(&task("other", "test")).await.unwrap();

    let q = |before, state, limit| TaskQuery {
        tenant: "acme".into(),
        state,
        since: None,
        until: None,
        before,
        limit,
        metadata: Default::default(),
    };
    let page1 = store.list_tasks(&q(None, None, 3)).await.unwrap();
    assert_eq!(
        page1.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3], ids[2]],
        "newest first"
    );
    let page2 = store
        .list_tasks(&q(Some(page1[2].id), None, 3))
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );
    assert!(
        page2.iter().all(|t| t.tenant == "acme"),
        "never another tenant's"
    );
    let running = store
        .list_tasks(&q(None, Some(mcp_core::TaskState::Running), 100))
        .await
        .unwrap();
    assert_eq!(running.len(), 3);
    let other = store
        .list_tasks(&TaskQuery {
            tenant: "nobody".into(),
            ..q(None, None, 100)
        })
        .await
        .unwrap();
    assert!(other.is_empty());
    Ok(())
}
}

fn pending_fixture(tenant: &str) -> (TaskRecord, mcp_store::PendingApproval) {
    let mut t = task(tenant, "test");
    t.state = TaskState::PendingApproval;
    let approval = mcp_store::PendingApproval {
        details: serde_json::json!({"roles": ["ops"], "reason": "needs a human"}),
        expires_at: now_ms() + time::Duration::hours(1),
        decided_by: None,
    };
    (t, approval)
}

both! {
#[tokio::test]
async fn pending_tasks_are_claimed_once_and_only_by_their_tenant(db) {
    let store = db.store.clone();
    let (t, approval) = pending_fixture("acme");
    store.insert_pending(&t, &approval).await?;
    // Survives a reopen (a restart) with its approval details.
    drop(store);
    db.reopen().await?;
    let store = db.store.clone();
    assert_eq!(
        store.mark_interrupted("test", now_ms()).await?,
        0,
        "pending is not interrupted"
    );
    let got = store
        .get_approval("acme", t.id)
        .await?
        .expect("approval details");
    assert_eq!(got.details, approval.details);
    assert_eq!(got.expires_at, approval.expires_at);
    assert_eq!(store.get_approval("other", t.id).await?, None);
    assert!(
        !store
            .claim_pending("other", t.id, "r2", "bob", now_ms())
            .await?
    );
    assert!(
        store
            .claim_pending("acme", t.id, "r2", "bob", now_ms())
            .await?
    );
    assert!(
        !store
            .claim_pending("acme", t.id, "r2", "carol", now_ms())
            .await?,
        "only once"
    );
    let rec = store.get_task("acme", t.id).await?.expect("task");
    assert_eq!(rec.state, TaskState::Created);
    assert_eq!(rec.owner, "r2");
    let got = store
        .get_approval("acme", t.id)
        .await?
        .expect("approval details");
    assert_eq!(got.decided_by.as_deref(), Some("bob"));
    // Once claimed it is not pending any more: no reject, no expiry.
    assert!(
        !store
            .finish_pending("acme", t.id, TaskState::Rejected, now_ms(), "no", Some("x"))
            .await?
    );
    Ok(())
}
}

both! {
#[tokio::test]
async fn pending_tasks_expire_and_are_rejected_with_a_reason(db) {
    let store = db.store.clone();
    let (a, approval) = pending_fixture("acme");
    store.insert_pending(&a, &approval).await?;
    let (b, _) = pending_fixture("acme");
    store.insert_pending(&b, &approval).await?;
    assert!(
        store
            .finish_pending(
                "acme",
                b.id,
                TaskState::Rejected,
                now_ms(),
                "not today",
                Some("bob")
            )
            .await?
    );
    let rec = store.get_task("acme", b.id).await?.expect("task");
    assert_eq!(rec.state, TaskState::Rejected);
    assert_eq!(rec.failure_reason.as_deref(), Some("not today"));

    // Before the expiry nothing expires; at it, the pending one does.
    assert_eq!(store.expire_pending(now_ms()).await?, 0);
    let late = approval.expires_at + time::Duration::seconds(1);
    assert!(
        !store
            .claim_pending("acme", a.id, "test", "bob", late)
            .await?,
        "expired approvals cannot be claimed"
    );
    assert_eq!(store.expire_pending(late).await?, 1);
    let rec = store.get_task("acme", a.id).await?.expect("task");
    assert_eq!(rec.state, TaskState::Expired);
    assert_eq!(
        rec.failure_reason.as_deref(),
        Some(mcp_store::APPROVAL_EXPIRED)
    );
    assert!(matches!(
        store.set_state(a.id, TaskState::Running, late).await,
        Err(StoreError::InvalidTransition { .. })
    ));
    Ok(())
}
}

both! {
#[tokio::test]
async fn approval_tokens_are_single_use(db) {
    let store = db.store.clone();
    let id = TaskId::new();
    let exp = now_ms() + time::Duration::minutes(5);
    assert!(store.use_token("jti-1", id, now_ms(), exp).await?);
    assert!(
        !store.use_token("jti-1", id, now_ms(), exp).await?,
        "a replay is refused"
    );
    assert!(store.use_token("jti-2", id, now_ms(), exp).await?);
    Ok(())
}
}

both! {
#[tokio::test]
async fn idempotency_keys_answer_the_first_task_within_the_window(db) {
    let store = db.store.clone();
    let t0 = now_ms();
    let key = |task_id, hash: &str, at| mcp_store::IdempotencyKey {
        tenant: "acme".into(),
        principal: "alice".into(),
        key: "k1".into(),
        request_hash: hash.into(),
        task_id,
        at,
    };
    let first = TaskId::new();
    let window = time::Duration::minutes(10);
    assert_eq!(
        store
            .claim_idempotency_key(&key(first, "h1", t0), t0 - window)
            .await?,
        mcp_store::IdempotencyClaim::New
    );
    let second = TaskId::new();
    assert_eq!(
        store
            .claim_idempotency_key(&key(second, "h2", t0), t0 - window)
            .await?,
        mcp_store::IdempotencyClaim::Existing {
            request_hash: "h1".into(),
            task_id: first
        }
    );
    // Another principal's key of the same name is its own.
    let mut other = key(second, "h1", t0);
    other.principal = "bob".into();
    assert_eq!(
        store.claim_idempotency_key(&other, t0 - window).await?,
        mcp_store::IdempotencyClaim::New
    );
    // After the window the key is free again.
    let later = t0 + window + time::Duration::seconds(1);
    assert_eq!(
        store
            .claim_idempotency_key(&key(second, "h2", later), later - window)
            .await?,
        mcp_store::IdempotencyClaim::New
    );
    // A released key is free at once.
    store
        .release_idempotency_key("acme", "alice", "k1", second)
        .await?;
    let third = TaskId::new();
    assert_eq!(
        store
            .claim_idempotency_key(&key(third, "h3", later), later - window)
            .await?,
        mcp_store::IdempotencyClaim::New
    );
    Ok(())
}
}

both! {
#[tokio::test]
async fn list_tasks_filters_by_metadata_and_cpu_is_summed_per_tenant(db) {
    let store = db.store.clone();
    let mut a = task("acme", "test");
    a.metadata = BTreeMap::from([("team".into(), "red".into()), ("env".into(), "prod".into())]);
    store.insert_task(&a).await?;
    let mut b = task("acme", "test");
    b.metadata = BTreeMap::from([("team".into(), "blue".into())]);
    store.insert_task(&b).await?;
    let q = |metadata: BTreeMap<String, String>| mcp_store::TaskQuery {
        tenant: "acme".into(),
        state: None,
        since: None,
        until: None,
        before: None,
        limit: 10,
        metadata,
    };
    let red = store
        .list_tasks(&q(BTreeMap::from([("team".into(), "red".into())])))
        .await?;
    assert_eq!(red.iter().map(|t| t.id).collect::<Vec<_>>(), vec![a.id]);
    let both = store
        .list_tasks(&q(BTreeMap::from([
            ("team".into(), "red".into()),
            ("env".into(), "dev".into()),
        ])))
        .await?;
    assert!(both.is_empty(), "every pair must match");
    assert_eq!(store.list_tasks(&q(BTreeMap::new())).await?.len(), 2);

    let done = now_ms();
    let result = TaskResult {
        usage: ResourceUsage {
            cpu_time_ms: 1500,
            ..Default::default()
        },
        ..Default::default()
    };
    store
        .finish(a.id, TaskState::Completed, done, Some(&result), None)
        .await?;
    store
        .finish(b.id, TaskState::Completed, done, Some(&result), None)
        .await?;
    let c = task("other", "test");
    store.insert_task(&c).await?;
    store
        .finish(c.id, TaskState::Completed, done, Some(&result), None)
        .await?;
    assert_eq!(
        store
            .cpu_ms_since("acme", done - time::Duration::hours(1))
            .await?,
        3000
    );
    assert_eq!(
        store
            .cpu_ms_since("acme", done + time::Duration::seconds(1))
            .await?,
        0
    );
    Ok(())
}
}
