//! The warm sandbox pool through the gateway: with `[sandbox.pool]` set, a
//! tenant's first request fills its pool, the next one runs in the waiting
//! sandbox (which is then gone and replaced), results are the same as
//! cold, and a killed gateway takes its waiting sandboxes with it.

use std::time::{Duration, Instant};

use crate::harness::{ServedBinary, TestGateway, cmd, test_config};

/// The stub's command line inside a pooled sandbox.
const STUB_CMDLINE: &str = "/.mcp-sandbox-stub __sandbox-stub";

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The stubs of the pooled sandboxes `root` started: processes running
/// the stub (not bwrap, whose command line ends with it) three levels
/// below `root` (stub, bwrap's pid-namespace init, bwrap).
fn stubs_of(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .starts_with(STUB_CMDLINE)
        {
            continue;
        }
        if ppid(pid).and_then(ppid).and_then(ppid) == Some(root) {
            found.push(pid);
        }
    }
    found
}

async fn wait_for_stubs(root: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = stubs_of(root);
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of the gateway's `/metrics` (0 when the series is absent).
async fn metric(rest: &crate::rest::Rest, series: &str) -> u64 {
    let text = rest.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the gateway reports `n` waiting sandboxes: a stub process
/// exists a little before its sandbox is ready to take a task.
async fn wait_ready(rest: &crate::rest::Rest, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = metric(rest, "mcp_sandbox_pool_ready").await;
        if ready >= n || Instant::now() > deadline {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map_or(true, |c| !c.replace('\0', " ").starts_with(STUB_CMDLINE))
}

/// The tenant's first request runs cold and fills the pool; the second
/// runs in the waiting sandbox, which is consumed and replaced by a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_in_pooled_sandboxes_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = test_config(tmp.path());
    raw.sandbox.pool.sizes.insert("default".into(), 1);
    raw.sandbox.pool.stub = env!("CARGO_BIN_EXE_mcp-gateway").into();
    let mut gw = TestGateway::start_with(raw).await;
    let me = std::process::id();

    let r = gw.client.run(cmd("echo", &["first"])).await.unwrap();
    assert_eq!(r.result.unwrap().stdout, "first\n");
    let rest = crate::rest::Rest::new(&gw);
    assert_eq!(wait_ready(&rest, 1).await, 1, "the pool did not fill");
    let waiting = wait_for_stubs(me, 1).await;
    assert_eq!(waiting.len(), 1, "the pool did not fill: {waiting:?}");
    let pooled = "mcp_sandbox_pool_runs_total{sandbox=\"pooled\"}";
    assert_eq!(metric(&rest, pooled).await, 0);

    let script =
        "import os; print(os.environ['X']); print(os.getcwd()); print(os.listdir('/workspace'))";
    let mut req = cmd("python3", &["-c", script]);
    req.env.insert("X".into(), "pooled".into());
    req.cwd = Some("sub".into());
    let r = gw.client.run(req).await.unwrap();
    let res = r.result.unwrap();
    assert_eq!(res.exit_code, 0, "{}", res.stderr);
    assert_eq!(res.stdout, "pooled\n/workspace/sub\n['sub']\n");
    assert_eq!(metric(&rest, pooled).await, 1, "the task ran cold");
    assert!(gone(waiting[0]), "the waiting sandbox was not used");
    let refilled = wait_for_stubs(me, 1).await;
    assert_eq!(refilled.len(), 1, "the pool was not refilled");
    assert_ne!(refilled, waiting);

    // A failing command fails as in a cold sandbox.
    let r = gw
        .client
        .run(cmd("python3", &["-c", "raise SystemExit(7)"]))
        .await
        .unwrap();
    assert_eq!(r.result.unwrap().exit_code, 7);
    gw.stop().await;
}

/// The real binary is its own stub (`__sandbox-stub`, the default), and its
/// waiting sandboxes die when it is SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_the_stub_and_its_pool_dies_with_it() {
    let gw = ServedBinary::start(&[("MCP_GATEWAY_SANDBOX__POOL__SIZES__DEFAULT", "2")]).await;
    let mut client = mcp_client::Client::connect(&gw.endpoint()).await.unwrap();
    let r = client.run(cmd("echo", &["hi"])).await.unwrap();
    assert_eq!(r.result.unwrap().stdout, "hi\n");
    let root = gw.pid();
    let rest = crate::rest::Rest {
        base: gw.endpoint(),
        http: reqwest::Client::new(),
    };
    // A stub process exists a little before its sandbox can take a task.
    assert_eq!(wait_ready(&rest, 2).await, 2, "the pool did not fill");
    let waiting = wait_for_stubs(root, 2).await;
    assert_eq!(waiting.len(), 2, "the pool did not fill: {waiting:?}");
    let r = client.run(cmd("echo", &["again"])).await.unwrap();
    assert_eq!(r.result.unwrap().stdout, "again\n");
    assert_eq!(waiting.iter().filter(|p| gone(**p)).count(), 1);

    let waiting = wait_for_stubs(root, 2).await;
    let _data = gw.kill().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiting.iter().all(|p| gone(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = waiting.iter().filter(|p| !gone(**p)).collect();
    assert!(
        left.is_empty(),
        "pooled sandboxes outlived the gateway: {left:?}"
    );
}
