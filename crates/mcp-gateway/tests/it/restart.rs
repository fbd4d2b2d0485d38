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
