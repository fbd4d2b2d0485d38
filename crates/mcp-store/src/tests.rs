use mcp_core::{TaskKind, TaskState};
use time::OffsetDateTime;

use super::*;
use crate::rows::{DecisionRow, TaskRow, from_ms, to_i64, to_ms};
use crate::sql::{FINISH_SQL, INTERRUPT_SQL, SET_STATE_SQL, rank};

/// A UTC timestamp from calendar parts (the `time` macros are not enabled).
fn utc(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8, nanos: u32) -> OffsetDateTime {
    let month = time::Month::try_from(mo).expect("valid month");
    time::Date::from_calendar_date(y, month, d)
        .and_then(|date| date.with_hms_nano(h, mi, s, nanos))
        .expect("valid date")
        .assume_utc()
}

/// A command task of tenant `t` (arguments `args`), created at the epoch.
pub(crate) fn command_task(args: Vec<String>) -> TaskRecord {
    TaskRecord {
        id: TaskId::new(),
        kind: TaskKind::Command,
        state: TaskState::Created,
        tenant: "t".into(),
        principal: "p".into(),
        command: "/usr/bin/echo".into(),
        args,
        profile: Some("default".into()),
        created_at: OffsetDateTime::UNIX_EPOCH,
        started_at: None,
        completed_at: None,
        metadata: Default::default(),
        result: None,
        failure_reason: None,
        owner: "test".into(),
    }
}

/// The `n`th audit event of a `status` request.
pub(crate) fn audit_event(n: i64) -> mcp_audit::AuditEvent {
    mcp_audit::AuditEvent {
        at_ms: 1_700_000_000_000 + n,
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

#[test]
fn sqlite_urls_parse_to_paths() {
    for (url, want) in [
        (
            "sqlite:///var/lib/mcp/db.sqlite",
            Backend::SqliteFile("/var/lib/mcp/db.sqlite"),
        ),
        (
            "sqlite://data/db.sqlite",
            Backend::SqliteFile("data/db.sqlite"),
        ),
        ("sqlite:data.db", Backend::SqliteFile("data.db")),
        ("SQLite:/abs.db", Backend::SqliteFile("/abs.db")),
        ("sqlite::memory:", Backend::SqliteMemory),
        ("sqlite://:memory:", Backend::SqliteMemory),
    ] {
        assert_eq!(parse_url(url).unwrap(), want, "{url}");
    }
}

#[test]
fn postgres_urls_select_postgres_and_garbage_is_bad() {
    for url in [
        "postgres://u:p@h/db",
        "postgresql://h/db?sslmode=require",
        "POSTGRES://h",
    ] {
        assert_eq!(parse_url(url).unwrap(), Backend::Postgres, "{url}");
    }
    for url in [
        "",
        "garbage",
        "mysql://h/db",
        "sqlite:",
        "sqlite://",
        "sqlite:///x.db?mode=ro",
    ] {
        assert!(
            matches!(parse_url(url), Err(StoreError::BadUrl { .. })),
            "{url}"
        );
    }
}

#[test]
fn bad_urls_do_not_leak_passwords() {
    let err = parse_url("redis://admin:hunter2@cache:6379/0").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert_eq!(redact("x://h/p@q"), "x://h/p@q");
    assert_eq!(
        redact("postgres://u:pw@h/db?sslmode=require&password=pw2&x=1"),
        "postgres://***@h/db?sslmode=require&password=***&x=1"
    );
    assert_eq!(
        redact("postgres://h?user=u&PASSWORD=pw"),
        "postgres://h?user=u&PASSWORD=***"
    );
    assert_eq!(redact("no-scheme"), "no-scheme");
}

#[test]
fn timestamps_truncate_to_milliseconds_and_round_trip() {
    let t = utc(2025, 3, 4, 5, 6, 7, 123_456_789);
    let ms = to_ms(t);
    assert_eq!(ms, 1_741_064_767_123);
    assert_eq!(
        from_ms("x", "at", ms).unwrap(),
        utc(2025, 3, 4, 5, 6, 7, 123_000_000)
    );
    // Before the epoch truncation still goes down to the earlier millisecond.
    let before = utc(1969, 12, 31, 23, 59, 59, 999_500_000);
    assert_eq!(to_ms(before), -1);
    // A non-UTC offset is the same instant.
    let cet = utc(2025, 3, 4, 5, 6, 7, 123_000_000)
        .to_offset(time::UtcOffset::from_hms(1, 0, 0).expect("valid offset"));
    assert_eq!(to_ms(cet), ms);
}

#[test]
fn out_of_range_timestamps_are_corrupt() {
    assert!(matches!(
        from_ms("t1", "created_at", i64::MAX),
        Err(StoreError::Corrupt { ref id, ref reason }) if id == "t1" && reason.contains("created_at")
    ));
}

#[test]
fn counters_saturate_at_i64_max() {
    assert_eq!(to_i64(7), 7);
    assert_eq!(to_i64(u64::MAX), i64::MAX);
}

#[test]
fn state_guards_in_sql_match_the_domain() {
    let guard = |sql: &'static str| sql.split_once("WHERE").map_or("", |(_, w)| w);
    for st in TaskState::ALL {
        let quoted = format!("'{}'", st.as_str());
        if st == TaskState::PendingApproval {
            // Waits across restarts (not interrupted) and leaves only by
            // approval, rejection, expiry or cancel, never by `set_state`.
            assert_eq!(rank(st), None);
            assert!(!guard(FINISH_SQL).contains(&quoted));
            assert!(!guard(INTERRUPT_SQL).contains(&quoted));
            continue;
        }
        assert_eq!(rank(st).is_none(), st.is_terminal(), "{st:?}");
        assert_eq!(
            guard(FINISH_SQL).contains(&quoted),
            st.is_terminal(),
            "{st:?}"
        );
        assert_eq!(
            guard(INTERRUPT_SQL).contains(&quoted),
            !st.is_terminal(),
            "{st:?}"
        );
        if let Some(r) = rank(st) {
            assert!(
                guard(SET_STATE_SQL).contains(&format!("WHEN {quoted} THEN {r}")),
                "{st:?}"
            );
        }
    }
}

fn task_row() -> TaskRow {
    TaskRow {
        id: TaskId::new().to_string(),
        kind: "command".into(),
        state: "running".into(),
        tenant: "t".into(),
        principal: "p".into(),
        command: "ls".into(),
        args: "[\"-l\"]".into(),
        profile: None,
        created_at: 1_000,
        started_at: Some(2_000),
        completed_at: None,
        metadata: "{}".into(),
        exit_code: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        cpu_time_ms: 0,
        max_memory_kb: 0,
        io_read_bytes: 0,
        io_write_bytes: 0,
        execution_time_ms: 0,
        failure_reason: None,
        owner: "o".into(),
    }
}

#[test]
fn a_valid_row_decodes_without_result_when_exit_code_is_null() {
    let rec = TaskRecord::try_from(task_row()).unwrap();
    assert_eq!(rec.kind, TaskKind::Command);
    assert_eq!(rec.state, TaskState::Running);
    assert_eq!(rec.args, vec!["-l".to_owned()]);
    assert_eq!(rec.result, None);
    assert_eq!(
        rec.started_at,
        Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(2))
    );
}

#[test]
fn undecodable_rows_are_corrupt_and_name_the_column() {
    type Breaker = fn(&mut TaskRow);
    let cases: [(&str, Breaker); 6] = [
        ("id", |r| r.id = "nope".into()),
        ("kind", |r| r.kind = "shell".into()),
        ("state", |r| r.state = "zombie".into()),
        ("args", |r| r.args = "{".into()),
        ("metadata", |r| r.metadata = "[1]".into()),
        ("cpu_time_ms", |r| {
            r.exit_code = Some(0);
            r.cpu_time_ms = -1;
        }),
    ];
    for (column, breaker) in cases {
        let mut row = task_row();
        breaker(&mut row);
        match TaskRecord::try_from(row) {
            Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains(column), "{reason}"),
            other => panic!("{column}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn undecodable_decisions_are_corrupt() {
    let row = DecisionRow {
        id: uuid::Uuid::now_v7().to_string(),
        at: 0,
        tenant: "t".into(),
        principal: "p".into(),
        kind: "command".into(),
        summary: "ls".into(),
        allow: true,
        deny_reasons: "[]".into(),
        policy_revision: "r".into(),
        task_id: Some("not-a-task".into()),
    };
    assert!(matches!(
        DecisionRecord::try_from(row),
        Err(StoreError::Corrupt { ref reason, .. }) if reason.contains("task_id")
    ));
}

#[tokio::test]
async fn in_memory_store_is_shared_across_calls() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.ping().await.unwrap();
    let rec = TaskRecord {
        id: TaskId::new(),
        kind: TaskKind::File,
        state: TaskState::Created,
        tenant: "t".into(),
        principal: "p".into(),
        command: "write x".into(),
        args: Vec::new(),
        profile: None,
        created_at: utc(2025, 1, 1, 0, 0, 0, 1_000_000),
        started_at: None,
        completed_at: None,
        metadata: Default::default(),
        result: None,
        failure_reason: None,
        owner: "o".into(),
    };
    store.insert_task(&rec).await.unwrap();
    assert_eq!(store.get_task("t", rec.id).await.unwrap(), Some(rec));
}

#[tokio::test]
async fn migration_0002_keeps_old_decisions_readable() {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::raw_sql(include_str!("../migrations/sqlite/0001_init.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO decisions (id, at, tenant, principal, kind, summary, allow, deny_reasons, policy_revision)
         VALUES ('0190b3c0-0000-7000-8000-000000000001', 5, 't', 'p', 'file', 'read x', 1, '[]', 'r')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!("../migrations/sqlite/0002_decision_log.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    let row: crate::rows::DecisionLogRow = sqlx::query_as(concat!(
        "SELECT ",
        crate::rows::decision_log_columns!(),
        " FROM decisions"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let entry = DecisionLogEntry::try_from(row).unwrap();
    assert_eq!(entry.details, DecisionDetails::default());
    assert_eq!(entry.record.summary, "read x");
}

/// Descriptors of this process open on `path`.
fn fds_on(path: &std::path::Path) -> usize {
    let path = path.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == path)
        .count()
}

/// A file store opens every connection of its pool at once and keeps them
/// (no idle timeout, no maximum age), so its descriptors and memory do not
/// move with the traffic; each connection holds the database file open.
#[tokio::test]
async fn a_file_store_opens_its_whole_pool_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(fds_on(&path), super::sqlite::MAX_CONNECTIONS as usize);
    store.close().await;
    assert_eq!(fds_on(&path), 0);
}

/// Appends queued while a commit is in progress are committed as one
/// batch; the append whose write is refused gets the store's error, and
/// those before and after it in the same transaction are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_inside_one_batch_spares_the_others_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    a_refused_write_inside_one_batch_spares_the_others(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_inside_one_batch_spares_the_others_on_postgres() {
    a_refused_write_inside_one_batch_spares_the_others(&fresh_pg_url().await).await;
}

async fn a_refused_write_inside_one_batch_spares_the_others(url: &str) {
    let store = open_store(url).await.unwrap();
    let log = std::sync::Arc::new(AuditLog::open(url, AuditOptions::default()).await.unwrap());
    let taken = command_task(vec!["taken".into()]);
    store.insert_task(&taken).await.unwrap();
    let first = command_task(vec!["first".into()]);
    let last = command_task(vec!["last".into()]);
    let held = log.hold_commits().await;
    let mut joins = Vec::new();
    for (n, t) in [first.clone(), taken.clone(), last.clone()]
        .into_iter()
        .enumerate()
    {
        let appender = log.clone();
        joins.push(tokio::spawn(async move {
            appender
                .append_with(audit_event(n as i64), vec![StoreWrite::InsertTask(t)])
                .await
        }));
        // Queued in this order before the gate opens.
        while log.queued() <= n {
            tokio::task::yield_now().await;
        }
    }
    drop(held);
    let answers: Vec<_> = futures_join(joins).await;
    assert_eq!(answers[0].as_ref().map(|r| r.seq).ok(), Some(1));
    assert!(
        matches!(answers[1], Err(StoreError::DuplicateTask { id }) if id == taken.id),
        "{:?}",
        answers[1]
    );
    assert_eq!(answers[2].as_ref().map(|r| r.seq).ok(), Some(2));
    assert_eq!(log.append_stats(), (2, 1), "one transaction for the three");
    for t in [&first, &last] {
        assert!(store.get_task("t", t.id).await.unwrap().is_some());
    }
    assert_eq!(
        answers[2].as_ref().unwrap().prev_hash,
        answers[0].as_ref().unwrap().hash
    );
}

async fn futures_join<T>(joins: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for j in joins {
        out.push(j.await.unwrap());
    }
    out
}

/// A fresh database on the PostgreSQL server `MCP_TEST_DATABASE_URL` names
/// (scripts/pg-test-cluster.sh); its URL. Panics, saying how to start a
/// server, when there is none: a test that needs one never passes without.
pub(crate) async fn fresh_pg_url() -> String {
    use sqlx::Connection;
    let Ok(server) = std::env::var("MCP_TEST_DATABASE_URL") else {
        panic!(
            "MCP_TEST_DATABASE_URL is not set: start a PostgreSQL with \
             `eval \"$(scripts/pg-test-cluster.sh start)\"` (scripts/test.sh does)"
        );
    };
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    let name = format!("mcp_u_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (head, query) = server.split_once('?').unwrap_or((&server, ""));
    let base = head.rsplit_once('/').map_or(head, |(b, _)| b);
    format!("{base}/{name}?{query}")
}

/// The task store's PostgreSQL sessions relax `synchronous_commit` (like
/// SQLite's `NORMAL`) unless asked not to; the audit log's keep the
/// server's setting, so what an append carries is durable.
#[tokio::test]
async fn pg_task_writes_relax_synchronous_commit_and_audit_appends_do_not() {
    use sqlx::Connection;
    let server = fresh_pg_url().await;
    let show = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let mut plain = sqlx::PgConnection::connect(&server).await.unwrap();
    let default: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    assert_ne!(
        default, "off",
        "the test needs a server that syncs by default"
    );
    let relaxed = PgStore::open(&PgOptions::new(server.clone()))
        .await
        .unwrap();
    assert_eq!(show(relaxed.pool.clone()).await, "off");
    let durable = PgStore::open(&PgOptions::new(server.clone()).durable_task_writes(true))
        .await
        .unwrap();
    assert_eq!(show(durable.pool.clone()).await, default);
    let log = AuditLog::open(&server, AuditOptions::default())
        .await
        .unwrap();
    let Some(pool) = log.pg_pool() else {
        panic!("a postgres url opens a PostgreSQL log");
    };
    assert_eq!(show(pool).await, default);
}
