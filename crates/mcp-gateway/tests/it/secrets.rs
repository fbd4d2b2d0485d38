//! Secrets by reference against the real server: a `secret://` value
//! reaches the sandbox only when policy grants it, and a command that
//! echoes it never gets it into stored output, the live stream, the
//! decision log, the audit trail or anywhere in the database file.

use std::path::{Path, PathBuf};

use mcp_client::TaskStatus;
use tonic::Code;

use crate::harness::{TestGateway, cmd, code_of, repo, state, test_config};

/// Not shaped like any built-in rule: only the task's literal catches it.
const SECRET: &str = "Zq8vLm3pRt6wXy2n";

/// The shipped policies with `db/password` and `db/missing` granted to
/// the anonymous principal of the default tenant.
fn policies_with_grants(tmp: &Path) -> PathBuf {
    let dir = tmp.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(repo().join("policies")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let mut data: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("data.json")).unwrap()).unwrap();
    data["tenants"]["default"]["secrets"] = serde_json::json!({
        "db/password": {"principals": ["anonymous"]},
        "db/missing": {"principals": ["anonymous"]},
    });
    std::fs::write(dir.join("data.json"), serde_json::to_vec(&data).unwrap()).unwrap();
    dir
}

async fn gateway(tmp: &Path) -> TestGateway {
    let secrets = tmp.join("secrets");
    std::fs::create_dir_all(secrets.join("db")).unwrap();
    std::fs::write(secrets.join("db/password"), SECRET).unwrap();
    std::fs::write(secrets.join("db/other"), "not granted").unwrap();
    let mut raw = test_config(&tmp.join("data"));
    raw.policy.dir = policies_with_grants(tmp);
    raw.secrets.dir = secrets;
    TestGateway::start_with(raw).await
}

/// Prints the secret whole, split across two writes with a pause between
/// them (two chunks of the live stream), and on stderr.
fn echo_secret() -> mcp_client::CommandRequest {
    let script = "import os, sys, time\n\
        v = os.environ['DB_PASSWORD']\n\
        print('pw=' + v, flush=True)\n\
        sys.stderr.write(v + '\\n'); sys.stderr.flush()\n\
        sys.stdout.write('split ' + v[:7]); sys.stdout.flush()\n\
        time.sleep(0.3)\n\
        sys.stdout.write(v[7:] + ' done\\n'); sys.stdout.flush()\n\
        print(len(v))\n";
    let mut req = cmd("python3", &["-c", script]);
    req.env
        .insert("DB_PASSWORD".into(), "secret://db/password".into());
    req
}

fn text(chunks: &[mcp_client::TaskOutputChunk]) -> String {
    chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

#[tokio::test]
async fn a_granted_secret_reaches_the_sandbox_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = gateway(tmp.path()).await;

    // Stored output.
    let done = gw.client.run(echo_secret()).await.unwrap();
    assert_eq!(state(&done), TaskStatus::TaskCompleted);
    let res = done.result.unwrap();
    // The sandbox had the real value: its length is printed.
    assert_eq!(
        res.stdout,
        format!("pw=<masked>\nsplit <masked> done\n{}\n", SECRET.len())
    );
    assert_eq!(res.stderr, "<masked>\n");

    // The live stream, followed from the start while the task runs.
    let created = gw.client.execute(echo_secret()).await.unwrap();
    let live = gw.client.collect_output(&created.task_id).await.unwrap();
    let streamed = text(&live);
    assert!(!streamed.contains(SECRET), "{streamed}");
    assert!(streamed.contains("split <masked> done"), "{streamed}");
    // And replayed after the end.
    let replay = text(&gw.client.collect_output(&created.task_id).await.unwrap());
    assert!(!replay.contains(SECRET), "{replay}");
    gw.stop().await;

    // Nowhere in the database: decisions (with the logged input), tasks,
    // audit records, or any page of the file and its WAL.
    let db = tmp.path().join("data").join("gateway.db");
    for f in [db.clone(), PathBuf::from(format!("{}-wal", db.display()))] {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{} holds the secret",
                f.display()
            );
        }
    }
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&db))
            .await
            .unwrap();
    let inputs: Vec<String> =
        sqlx::query_scalar("SELECT input FROM decisions WHERE input IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(inputs.len(), 2);
    for i in &inputs {
        // Policy saw the name, never the value.
        assert!(i.contains("db/password"), "{i}");
        assert!(!i.contains(SECRET), "{i}");
    }
    let log = mcp_store::AuditLog::open_read_only(&db).await.unwrap();
    let recs = log.records(0, None, 100).await.unwrap();
    assert!(recs.iter().any(|r| r.event.action == "task_end"));
    for r in &recs {
        assert!(!serde_json::to_string(r).unwrap().contains(SECRET));
    }
}

#[tokio::test]
async fn secrets_are_refused_unless_granted_and_available() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = gateway(tmp.path()).await;
    for (reference, why) in [
        (
            "secret://db/other",
            "not granted to principal \"anonymous\"",
        ),
        ("secret://db/missing", "is not available"),
        ("secret://../secrets/db/password", "is not granted"),
    ] {
        let mut req = cmd("printenv", &[]);
        req.command = "echo".into();
        req.env.insert("X".into(), reference.into());
        let (code, msg) = code_of(gw.client.run(req).await);
        assert_eq!(code, Code::PermissionDenied, "{reference}: {msg}");
        assert!(msg.contains(why), "{reference}: {msg}");
    }
    gw.stop().await;
}

/// The shipped policies with `redact` added to every allowed decision's
/// obligations.
fn policies_with_redact(tmp: &Path, patterns: &str) -> PathBuf {
    let dir = policies_with_grants(tmp);
    let main = std::fs::read_to_string(dir.join("main.rego")).unwrap();
    let edited = main.replace(
        r#"{"profile": "default"}"#,
        &format!(r#"{{"profile": "default", "redact": {patterns}}}"#),
    );
    assert_ne!(
        main, edited,
        "main.rego no longer sets the profile this way"
    );
    std::fs::write(dir.join("main.rego"), edited).unwrap();
    dir
}

#[tokio::test]
async fn the_policy_redact_obligation_is_enforced_and_a_bad_pattern_denies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = test_config(&tmp.path().join("data"));
    raw.policy.dir = policies_with_redact(tmp.path(), r#"["ACME-[0-9]{4}"]"#);
    let mut gw = TestGateway::start_with(raw).await;
    let done = gw
        .client
        .run(cmd(
            "echo",
            &["ticket", "ACME-1234", "AKIAIOSFODNN7EXAMPLE"],
        ))
        .await
        .unwrap();
    assert_eq!(done.result.unwrap().stdout, "ticket <masked> <masked>\n");
    gw.stop().await;

    let tmp = tempfile::tempdir().unwrap();
    let mut raw = test_config(&tmp.path().join("data"));
    raw.policy.dir = policies_with_redact(tmp.path(), r#"["("]"#);
    let mut gw = TestGateway::start_with(raw).await;
    let (code, msg) = code_of(gw.client.run(cmd("echo", &["x"])).await);
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    gw.stop().await;
}
