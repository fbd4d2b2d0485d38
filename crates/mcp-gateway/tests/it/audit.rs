//! The audit trail against the real server: every request leaves a record,
//! `audit verify` passes on an untouched database and names the first bad
//! sequence number after an edit, a deletion, an insertion, a reordering or
//! a cut tail (made directly in the SQLite file, triggers dropped as an
//! attacker would), and a gateway whose audit log refuses writes runs
//! nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcp_audit::{AuditRecord, Signer, sha256_hex};
use mcp_client::TaskStatus;
use mcp_store::AuditLog;
use tonic::Code;

use crate::harness::{TestGateway, cmd, code_of, state, test_config};

const KEY: [u8; 32] = [42; 32];

/// A gateway with a signing key and a checkpoint every 4 records.
async fn audited_gateway(tmp: &Path) -> TestGateway {
    let key = tmp.join("audit.pem");
    std::fs::write(&key, Signer::from_bytes(&KEY).to_pem().unwrap()).unwrap();
    let mut raw = test_config(&tmp.join("data"));
    raw.audit.signing_key = key;
    raw.audit.checkpoint_every = 4;
    TestGateway::start_with(raw).await
}

fn db(tmp: &Path) -> PathBuf {
    tmp.join("data").join("gateway.db")
}

async fn records(db: &Path) -> Vec<AuditRecord> {
    let log = AuditLog::open_read_only(db).await.unwrap();
    let r = log.records(0, None, 10_000).await.unwrap();
    log.close().await;
    r
}

/// Runs `audit verify`; answers (exit code, stdout).
fn verify(db: &Path, public_key: Option<&Path>) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"));
    c.env_remove("MCP_GATEWAY_CONFIG")
        .args(["audit", "verify", "--database"])
        .arg(db);
    if let Some(k) = public_key {
        c.arg("--public-key").arg(k);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn sql(db: &Path, statements: &[&str]) {
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(db))
            .await
            .unwrap();
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(*s))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    pool.close().await;
}

/// Copies the database (and its WAL) to `name` in `dir`.
fn copy_db(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    for ext in ["-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{ext}", from.display()));
        if f.exists() {
            std::fs::copy(&f, format!("{}{ext}", to.display())).unwrap();
        }
    }
    to
}

#[tokio::test]
async fn requests_are_recorded_and_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = audited_gateway(tmp.path()).await;
    let done = gw
        .client
        .run(cmd("echo", &["hello", "password=hunter2"]))
        .await
        .unwrap();
    assert_eq!(state(&done), TaskStatus::TaskCompleted);
    let id = done.task_info.as_ref().unwrap().task_id.clone();
    let denied = gw.client.run(cmd("rm", &["-rf", "/files"])).await;
    assert_eq!(code_of(denied).0, Code::PermissionDenied);
    gw.client.status(&id).await.unwrap();
    let missing = gw
        .client
        .status("01890000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(code_of(missing).0, Code::NotFound);
    gw.stop().await;

    let db = db(tmp.path());
    let recs = records(&db).await;
    let actions: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r.event.action.as_str(), r.event.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("execute", "allowed"),
            ("task_end", "completed:0"),
            ("execute", "denied"),
            ("status", "ok"),
            ("status", "error:6001"),
        ]
    );
    let exec = &recs[0].event;
    assert_eq!(exec.task_id.as_deref(), Some(id.as_str()));
    let decision = exec.decision.as_ref().unwrap();
    assert!(decision.allow);
    assert!(!decision.revision.is_empty());
    let command = exec.command.as_deref().unwrap();
    assert!(
        command.ends_with("echo hello password=<masked>"),
        "{command}"
    );
    assert_eq!(exec.input_sha256.as_deref().map(str::len), Some(64));
    assert_eq!(exec.principal, recs[3].event.principal);
    assert_eq!(
        recs[1].event.output_sha256.as_deref(),
        Some(sha256_hex(b"hello password=hunter2\n\0").as_str()),
        "the output hash covers the full output"
    );
    assert!(!recs[2].event.decision.as_ref().unwrap().allow);
    for r in &recs {
        assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");
    }

    // Untouched: intact, with the signatures checked.
    let key = tmp.path().join("audit.pem");
    let (code, out) = verify(&db, Some(&key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 records"), "{out}");
    assert!(out.contains("with valid signatures"), "{out}");
    // The wrong public key is refused.
    let other = tmp.path().join("other.pem");
    std::fs::write(&other, Signer::from_bytes(&[1; 32]).to_pem().unwrap()).unwrap();
    let (code, out) = verify(&db, Some(&other));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signed by another key"), "{out}");

    let dir = tmp.path();
    let edited = copy_db(&db, dir, "edited.db");
    sql(
        &edited,
        &[
            "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET outcome = 'allowed' WHERE seq = 3",
        ],
    )
    .await;
    let deleted = copy_db(&db, dir, "deleted.db");
    sql(
        &deleted,
        &[
            "DROP TRIGGER audit_log_no_delete",
            "DELETE FROM audit_log WHERE seq = 2",
        ],
    )
    .await;
    let inserted = copy_db(&db, dir, "inserted.db");
    let forged = format!(
        "INSERT INTO audit_log (seq, at, request_id, principal, tenant, action, outcome, latency_us, prev_hash, hash) \
         VALUES (3, 0, 'x', 'mallory', 'default', 'status', 'ok', 0, '{}', '{}')",
        recs[1].hash,
        sha256_hex(b"forged")
    );
    sql(
        &inserted,
        &[
            "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3",
            "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1003",
            &forged,
        ],
    )
    .await;
    let reordered = copy_db(&db, dir, "reordered.db");
    sql(
        &reordered,
        &[
            "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET seq = 1000 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = 1000",
        ],
    )
    .await;
    // The final record is covered by the checkpoint signed at shutdown.
    let cut = copy_db(&db, dir, "cut.db");
    sql(
        &cut,
        &[
            "DROP TRIGGER audit_log_no_delete",
            "DELETE FROM audit_log WHERE seq = 5",
        ],
    )
    .await;
    for (file, seq, why) in [
        (&edited, 3, "does not match its hash"),
        (&deleted, 2, "is missing"),
        (&inserted, 3, "does not match its hash"),
        (&reordered, 2, "does not link to the hash of record 1"),
        (&cut, 5, "log ends at 4"),
    ] {
        let (code, out) = verify(file, Some(&key));
        assert_eq!(code, 1, "{}: {out}", file.display());
        assert!(
            out.contains(&format!("BROKEN at seq {seq}:")) && out.contains(why),
            "{}: {out}",
            file.display()
        );
    }
}

#[tokio::test]
async fn export_writes_json_lines_since_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = audited_gateway(tmp.path()).await;
    gw.client.run(cmd("echo", &["x"])).await.unwrap();
    gw.stop().await;
    let export = |since: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
            .env_remove("MCP_GATEWAY_CONFIG")
            .args(["audit", "export", "--database"])
            .arg(db(tmp.path()))
            .args(["--since", since])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let all = export("1h");
    let lines: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{all}");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["action"], "execute");
    assert_eq!(lines[1]["action"], "task_end");
    assert_eq!(export("2999-01-01T00:00:00Z"), "");
}

#[tokio::test]
async fn an_unavailable_audit_log_fails_requests_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = audited_gateway(tmp.path()).await;
    let db = db(tmp.path());
    // The audit table refuses every insert, as a full or broken store would.
    sql(
        &db,
        &["CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit store down'); END"],
    )
    .await;
    let (code, msg) = code_of(gw.client.execute(cmd("echo", &["must not run"])).await);
    assert_eq!(code, Code::Unavailable, "{msg}");
    let (code, _) = code_of(gw.client.run(cmd("echo", &["nor this"])).await);
    assert_eq!(code, Code::Unavailable);
    let (code, _) = code_of(
        gw.client
            .status("01890000-0000-7000-8000-000000000000")
            .await,
    );
    assert_eq!(code, Code::Unavailable);
    gw.stop().await;
    // Nothing ran: no task was ever created, though the decisions were stored.
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&db))
            .await
            .unwrap();
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    let decisions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM decisions")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(tasks, 0);
    // A decision is stored with its audit record or not at all.
    assert_eq!(decisions, 0);
}

async fn count(db: &Path, table: &str) -> i64 {
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(db))
            .await
            .unwrap();
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// A command's decision, its `execute` record and its task are stored in
/// one transaction: when the task cannot be stored, neither are the other
/// two, nothing runs, and the chain continues without a gap once the
/// store takes writes again. A task's end and its `task_end` record are
/// stored together too, and `RunCommand`, answered from memory, says
/// exactly what a later read of the store says.
#[tokio::test]
async fn a_decision_its_record_and_its_task_are_stored_together() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = audited_gateway(tmp.path()).await;
    let db = db(tmp.path());
    let first = gw.client.run(cmd("echo", &["one"])).await.unwrap();
    assert_eq!(state(&first), TaskStatus::TaskCompleted);
    // Answered from the worker's copy; the store holds the same.
    let id = |r: &mcp_client::TaskStatusResponse| r.task_info.as_ref().unwrap().task_id.clone();
    assert_eq!(gw.client.status(&id(&first)).await.unwrap(), first);
    let (decisions, audited) = (count(&db, "decisions").await, records(&db).await.len());
    sql(
        &db,
        &["CREATE TRIGGER tasks_down BEFORE INSERT ON tasks BEGIN SELECT RAISE(ABORT, 'tasks down'); END"],
    )
    .await;
    // Its sandbox is set up while the task is being stored; the command
    // would leave a file behind if it ran.
    let marker = "refused-ran";
    let write = format!("open('/files/{marker}', 'w').write('ran')");
    let refused = cmd("python3", &["-c", &write]);
    let (code, msg) = code_of(gw.client.run(refused).await);
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert_eq!(count(&db, "decisions").await, decisions);
    assert_eq!(count(&db, "tasks").await, 1);
    // The refused run left no record either.
    assert_eq!(records(&db).await.len(), audited);
    // Nothing ran, and the discarded sandbox leaves nothing behind.
    let workspaces = tmp.path().join("data").join("sockets");
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&workspaces)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !leftovers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(leftovers(), Vec::<String>::new());
    let ran = walkdir(tmp.path())
        .into_iter()
        .filter(|p| p.ends_with(marker))
        .collect::<Vec<_>>();
    assert_eq!(ran, Vec::<PathBuf>::new(), "the refused command ran");
    sql(&db, &["DROP TRIGGER tasks_down"]).await;
    let again = gw.client.run(cmd("ls", &["no-such-file"])).await.unwrap();
    assert_eq!(state(&again), TaskStatus::TaskCompleted);
    assert_eq!(again.result.as_ref().unwrap().exit_code, 2);
    assert_eq!(gw.client.status(&id(&again)).await.unwrap(), again);
    gw.stop().await;
    let all = records(&db).await;
    let actions: Vec<&str> = all.iter().map(|r| r.event.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "execute", "task_end", "status", "execute", "task_end", "status"
        ]
    );
    let (code, out) = verify(&db, None);
    assert_eq!(code, 0, "{out}");
}

/// Every path under `dir`.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}
