//! NETWORK_RESTRICTED for real: a command in a real sandbox (empty network
//! namespace) tries to get out through the gateway's egress proxy by every
//! route we know (CONNECT, plain HTTP, SOCKS5, bare addresses, names that
//! resolve inside, look-alikes, other ports, direct sockets) against a
//! local test server; names are pinned to addresses with a static
//! resolver. The policy set is the shipped `network.rego` plus a small
//! command policy that grants restricted network with a `network`
//! obligation.

use std::net::IpAddr;
use std::sync::Arc;

use mcp_client::{Client, SandboxConfig};
use mcp_gateway::server;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{cmd, global_telemetry, repo, require_bwrap, test_config};

const COMMAND_POLICY: &str = r#"
package mcp

import rego.v1

decision := {"allow": true, "deny_reasons": [], "warnings": [], "obligations": {
	"profile": "network-restricted",
	"network": data.test_obligation,
}} if input.request.kind == "command"

decision := {"allow": count(deny) == 0, "deny_reasons": sort([r | some r in deny]), "warnings": [], "obligations": {}} if input.request.kind == "network"
"#;

/// The command run in the sandbox: every attempt, one JSON line of results.
const PROBE: &str = r#"
import json, os, socket, struct, urllib.request, urllib.error
P = int(os.environ["TEST_PORT"])
PROXY = ("127.0.0.1", 3128)
out = {}

def read_all(s):
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data.decode(errors="replace")
        data += b

def connect(host, port):
    s = socket.create_connection(PROXY, timeout=20)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    resp = s.recv(65536).decode(errors="replace")
    status = resp.split(" ")[1] if resp.startswith("HTTP/") else "?"
    if status != "200":
        return status
    s.sendall(b"GET /via-connect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return "200 " + read_all(s)

def socks(host, port):
    s = socket.create_connection(PROXY, timeout=20)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        return "bad greeting"
    h = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port))
    rep = s.recv(10)
    if rep[1] != 0:
        return str(rep[1])
    s.sendall(b"GET /via-socks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return "0 " + read_all(s)

def http(url):
    try:
        r = urllib.request.urlopen(url, timeout=20)
        return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return str(e.code)

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=5)
        return "connected"
    except OSError as e:
        return f"errno {e.errno}"

out["connect_allowed"] = connect("good.test", P)
out["connect_rebind_loopback"] = connect("rebind.test", P)
out["connect_rebind_private"] = connect("ten.test", P)
out["connect_bare_ip"] = connect("127.0.0.1", P)
out["connect_metadata_ip"] = connect("169.254.169.254", 80)
out["connect_metadata_name"] = connect("meta.test", P)
out["connect_lookalike"] = connect("good.test.evil.test", P)
out["connect_other_port"] = connect("good.test", P + 1 if P < 65535 else P - 1)
out["connect_not_in_obligation"] = connect("other.test", P)
out["http_allowed"] = http(f"http://good.test:{P}/via-http")
out["http_rebind"] = http(f"http://rebind.test:{P}/x")
out["socks_allowed"] = socks("good.test", P)
out["socks_rebind"] = socks("rebind.test", P)
out["socks_metadata"] = socks("169.254.169.254", 80)
out["direct_outside"] = direct("1.1.1.1", 80)
out["direct_host_server"] = direct("127.0.0.1", P)
out["direct_metadata"] = direct("169.254.169.254", 80)
out["https_proxy"] = os.environ.get("HTTPS_PROXY")
out["all_proxy"] = os.environ.get("ALL_PROXY")
print(json.dumps(out))
"#;

/// A test HTTP server on 127.0.0.1 answering `hello <request line>`.
async fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let body = format!("hello {}", text.lines().next().unwrap_or_default());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restricted_network_goes_only_where_policy_allows() {
    global_telemetry();
    require_bwrap();
    let port = upstream().await;

    // The policy set: the shipped network.rego, a test command policy.
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(
        repo().join("policies/network.rego"),
        policies.join("network.rego"),
    )
    .unwrap();
    std::fs::write(policies.join("main.rego"), COMMAND_POLICY).unwrap();
    let entry = |host: &str, private: bool| serde_json::json!({"host": host, "ports": [port], "protocol": "tcp", "private": private});
    let data = serde_json::json!({
        "tenants": {"default": {"network": {"allow": [
            // The test server is on loopback, so reaching it needs "private".
            entry("good.test", true),
            entry("other.test", true),
            entry("rebind.test", false),
            entry("ten.test", false),
            entry("meta.test", false),
            entry("127.0.0.1", false),
        ]}}},
        "test_obligation": [
            {"host": "good.test", "port": port, "protocol": "tcp"},
            {"host": "rebind.test", "protocol": "tcp"},
            {"host": "ten.test", "protocol": "tcp"},
            {"host": "meta.test", "protocol": "tcp"},
            {"host": "127.0.0.1", "protocol": "tcp"},
        ],
    });
    std::fs::write(policies.join("data.json"), data.to_string()).unwrap();

    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let mut raw = test_config(&data_dir);
    raw.policy.dir = policies;
    let cfg = raw.validate().unwrap();
    let gateway = server::build(&cfg).await.unwrap();
    gateway.set_egress_forwarder(env!("CARGO_BIN_EXE_mcp-gateway").into());
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    gateway.set_egress_resolver(Arc::new(mcp_egress::StaticResolver::new([
        ("good.test".to_owned(), vec![lo]),
        ("other.test".to_owned(), vec![lo]),
        ("rebind.test".to_owned(), vec![lo]),
        ("good.test.evil.test".to_owned(), vec![lo]),
        ("ten.test".to_owned(), vec!["10.1.2.3".parse().unwrap()]),
        (
            "meta.test".to_owned(),
            vec!["169.254.169.254".parse().unwrap()],
        ),
    ])));
    let (addr, listener) = server::bind(&cfg).await.unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            server::serve(&cfg, gateway, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }
    });
    let mut client = Client::connect(&format!("http://{addr}")).await.unwrap();

    let mut req = cmd("python3", &["-c", PROBE]);
    req.env.insert("TEST_PORT".into(), port.to_string());
    req.timeout = 120;
    req.sandbox_config = Some(SandboxConfig {
        network_access: 2,
        ..Default::default()
    });
    let r = client.run(req).await.unwrap();
    let res = r.result.clone().unwrap();
    assert_eq!(res.exit_code, 0, "stderr: {}", res.stderr);
    let out: Value = serde_json::from_str(res.stdout.trim()).unwrap();
    let get = |k: &str| out[k].as_str().unwrap_or_default().to_owned();

    // Allowed: CONNECT, plain HTTP and SOCKS5 reach the test server.
    assert!(
        get("connect_allowed").starts_with("200 HTTP/1.1 200 OK"),
        "{out}"
    );
    assert!(get("connect_allowed").contains("hello GET /via-connect"));
    assert_eq!(get("http_allowed"), "200 hello GET /via-http HTTP/1.1");
    assert!(
        get("socks_allowed").contains("hello GET /via-socks"),
        "{out}"
    );
    // Refused by policy or by the address check: 403 / SOCKS 0x02.
    for k in [
        "connect_rebind_loopback",
        "connect_rebind_private",
        "connect_bare_ip",
        "connect_metadata_ip",
        "connect_metadata_name",
        "connect_lookalike",
        "connect_other_port",
        "connect_not_in_obligation",
        "http_rebind",
    ] {
        assert_eq!(get(k), "403", "{k}: {out}");
    }
    assert_eq!(get("socks_rebind"), "2", "{out}");
    assert_eq!(get("socks_metadata"), "2", "{out}");
    // No route out but the proxy: ENETUNREACH (101) outside, nothing of the
    // host on the sandbox's own loopback (ECONNREFUSED, 111).
    assert_eq!(get("direct_outside"), "errno 101", "{out}");
    assert_eq!(get("direct_metadata"), "errno 101", "{out}");
    assert_eq!(get("direct_host_server"), "errno 111", "{out}");
    assert_eq!(get("https_proxy"), "http://127.0.0.1:3128");
    assert_eq!(get("all_proxy"), "socks5h://127.0.0.1:3128");

    // Every connection's decision is in the decision log, tied to the task.
    let store = mcp_store::open_store(&format!(
        "sqlite://{}",
        data_dir.join("gateway.db").display()
    ))
    .await
    .unwrap();
    let log = store
        .list_decisions(&mcp_store::DecisionQuery {
            since: None,
            tenant: None,
            with_input: false,
            after: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let task_id: uuid::Uuid = r.task_info.unwrap().task_id.parse().unwrap();
    let network: Vec<_> = log
        .iter()
        .filter(|e| e.record.kind == "network")
        .map(|e| &e.record)
        .collect();
    assert!(
        network
            .iter()
            .all(|d| d.task_id.map(|t| t.to_string()) == Some(task_id.to_string()))
    );
    let allowed: Vec<&str> = network
        .iter()
        .filter(|d| d.allow)
        .map(|d| d.summary.as_str())
        .collect();
    assert_eq!(
        allowed,
        [
            format!("tcp good.test:{port} via http-connect"),
            format!("tcp good.test:{port} via http-forward"),
            format!("tcp good.test:{port} via socks5"),
        ],
        "{network:?}"
    );
    // 8 CONNECT, 1 plain HTTP, 2 SOCKS5 refusals.
    let denied = network.iter().filter(|d| !d.allow).count();
    assert_eq!(denied, 11, "{network:?}");
    let lookalike = network
        .iter()
        .find(|d| d.summary.contains("good.test.evil.test"))
        .unwrap();
    assert!(
        lookalike
            .deny_reasons
            .iter()
            .any(|r| r.contains("not on the network allowlist")),
        "{lookalike:?}"
    );
    let rebind = network
        .iter()
        .find(|d| d.summary.starts_with("tcp rebind.test"))
        .unwrap();
    assert!(
        rebind
            .deny_reasons
            .iter()
            .any(|r| r.contains("resolves to internal address \"127.0.0.1\"")),
        "{rebind:?}"
    );
    let obligation = network
        .iter()
        .find(|d| d.summary.starts_with("tcp other.test"))
        .unwrap();
    assert!(
        obligation
            .deny_reasons
            .iter()
            .any(|r| r.contains("not in the task's network obligation")),
        "{obligation:?}"
    );

    let _ = stop.send(());
    serving.await.unwrap();
}
