//! A gateway killed mid-task leaves no task looking alive forever: the next
//! start marks it failed with reason `interrupted`. Uses the real binary so
//! the kill is a real SIGKILL.

use std::time::Duration;

use mcp_client::{Client, TaskStatus};

use crate::harness::{ServedBinary, TestGateway, cmd, state, test_config};

#[tokio::test]
async fn tasks_running_when_the_gateway_died_are_marked_interrupted() {
    let gw = ServedBinary::start(&[]).await;
    let mut client = Client::connect(&gw.endpoint()).await.unwrap();
    let marker = format!("restart-marker-{}", uuid::Uuid::now_v7());
    let script = format!("import time\nprint('started', flush=True)\ntime.sleep(300)\n#{marker}");
    let created = client
        .execute(cmd("python3", &["-c", &script]))
        .await
        .unwrap();
    // Wait until the command really runs (past bwrap's own start-up).
    let mut stream = client.stream(&created.task_id).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().data, b"started\n");
    assert!(crate::commands::process_with(&marker));
    let tmp = gw.kill().await;
    // The sandbox dies with the gateway that started it.
    for _ in 0..250 {
        if !crate::commands::process_with(&marker) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !crate::commands::process_with(&marker),
        "the sandbox outlived its gateway"
    );

    let mut gw = TestGateway::start_with(test_config(tmp.path())).await;
    let r = gw.client.status(&created.task_id).await.unwrap();
    assert_eq!(state(&r), TaskStatus::TaskFailed);
    let info = r.task_info.unwrap();
    assert_eq!(info.failure_reason.as_deref(), Some("interrupted"));
    assert!(info.completed_at.is_some());
    // The new gateway works on the same data.
    let r = gw
        .client
        .run(cmd("echo", &["after restart"]))
        .await
        .unwrap();
    assert_eq!(r.result.unwrap().stdout, "after restart\n");
    gw.stop().await;
}

/// `make run` starts the gateway from the repository on the embedded
/// defaults, whose data directory is the relative `data`. bubblewrap runs
/// from `/`, so the sandbox must be handed absolute paths: a task's files
/// land in `./data/files`, and start-up's self-check passes.
#[tokio::test]
async fn a_relative_data_dir_works_as_make_run_uses_it() {
    let cwd = tempfile::tempdir().unwrap();
    let files = cwd.path().join("data/files");
    let gw = ServedBinary::start_relative(cwd, &[]).await;
    let mut client = Client::connect(&gw.endpoint()).await.unwrap();
    let r = client
        .run(cmd(
            "python3",
            &[
                "-c",
                "open('/files/relative-marker', 'w').write('kept\\n')\n\
                 print(open('/files/relative-marker').read(), end='')",
            ],
        ))
        .await
        .unwrap();
    let result = r.result.unwrap();
    assert_eq!(result.stdout, "kept\n", "stderr: {}", result.stderr);
    let found: Vec<_> = walk(&files)
        .into_iter()
        .filter(|p| p.ends_with("relative-marker"))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the file is not under ./data/files: {found:?}"
    );
    assert_eq!(std::fs::read_to_string(&found[0]).unwrap(), "kept\n");
    gw.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
