//! NETWORK_RESTRICTED for real: a command in a real sandbox (empty network
//! namespace) tries to get out through the gateway's egress proxy by every
//! route we know (CONNECT, plain HTTP, SOCKS5, bare addresses, names that
//! resolve inside, look-alikes, other ports, direct sockets) against a
//! local test server; names are pinned to addresses with a static
//! resolver. The policy set is the shipped `network.rego` plus a small
//! command policy that grants restricted network with a `network`
//! obligation. Then: the address guard against a policy that allows every
//! connection, and `mcp-gateway exec --network restricted` with the shipped
//! policies and a data change only.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

decision := {"allow": count(deny) == 0, "deny_reasons": sort([r | some r in deny]), "warnings": [], "obligations": connection_obligations} if input.request.kind == "network"

# network.rego's private grants: without them the proxy opens no internal
# address, whatever the allow says.
connection_obligations := object.union_n([o | some o in network_obligations]) if count(deny) == 0

else := {}
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

/// A gateway served in this process with the policy directory `policies`,
/// egress names resolved by `resolver` and upstream connections opened by
/// `connector` (plain TCP when `None`).
struct EgressGateway {
    endpoint: String,
    data: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl EgressGateway {
    async fn start(
        tmp: &Path,
        policies: PathBuf,
        resolver: mcp_egress::StaticResolver,
        connector: Option<Arc<dyn mcp_egress::Connector>>,
    ) -> EgressGateway {
        global_telemetry();
        require_bwrap();
        let data = tmp.join("data");
        std::fs::create_dir(&data).unwrap();
        let mut raw = test_config(&data);
        raw.policy.dir = policies;
        let cfg = raw.validate().unwrap();
        let gateway = server::build(&cfg).await.unwrap();
        gateway.set_egress_forwarder(env!("CARGO_BIN_EXE_mcp-gateway").into());
        gateway.set_egress_resolver(Arc::new(resolver));
        if let Some(c) = connector {
            gateway.set_egress_connector(c);
        }
        let (addr, listener) = server::bind(&cfg).await.unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            server::serve(&cfg, gateway, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        EgressGateway {
            endpoint: format!("http://{addr}"),
            data,
            stop,
            serving,
        }
    }

    /// Every `network` entry of the decision log.
    async fn network_decisions(&self) -> Vec<mcp_store::DecisionRecord> {
        let store = mcp_store::open_store(&format!(
            "sqlite://{}",
            self.data.join("gateway.db").display()
        ))
        .await
        .unwrap();
        store
            .list_decisions(&mcp_store::DecisionQuery {
                since: None,
                tenant: None,
                with_input: false,
                after: None,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.record.kind == "network")
            .map(|e| e.record)
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.unwrap();
    }
}

/// Sends every upstream connection to `to` (a local server) and remembers
/// the vetted address it was for: the test may allow any address and still
/// send nothing off the host.
#[derive(Debug)]
struct Redirect {
    to: SocketAddr,
    asked: Mutex<Vec<SocketAddr>>,
}

#[async_trait::async_trait]
impl mcp_egress::Connector for Redirect {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        self.asked.lock().unwrap().push(addr);
        tokio::net::TcpStream::connect(self.to).await
    }
}

/// Every internal form: a name, the address it resolves to, how the
/// classifier names it.
const INTERNAL_FORMS: [(&str, &str, &str); 20] = [
    (
        "nat64.test",
        "64:ff9b::7f00:1",
        "loopback, nat64 of 127.0.0.1",
    ),
    (
        "nat64-meta.test",
        "64:ff9b::a9fe:a9fe",
        "metadata, nat64 of 169.254.169.254",
    ),
    (
        "nat64-local.test",
        "64:ff9b:1::7f00:1",
        "loopback, nat64 local-use of 127.0.0.1",
    ),
    (
        "sixtofour.test",
        "2002:a9fe:a9fe::1",
        "metadata, 6to4 of 169.254.169.254",
    ),
    (
        "teredo.test",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "loopback, teredo of 127.0.0.1",
    ),
    (
        "compat.test",
        "::7f00:1",
        "loopback, v4-compatible of 127.0.0.1",
    ),
    (
        "siit.test",
        "::ffff:0:a9fe:a9fe",
        "metadata, siit of 169.254.169.254",
    ),
    (
        "mapped.test",
        "::ffff:127.0.0.1",
        "loopback, v4-mapped of 127.0.0.1",
    ),
    ("loopback.test", "127.0.0.1", "loopback"),
    ("private.test", "10.1.2.3", "private"),
    ("meta.test", "169.254.169.254", "metadata"),
    ("linklocal.test", "169.254.1.1", "link-local"),
    ("linklocal6.test", "fe80::1", "link-local"),
    ("ula.test", "fd12:3456::1", "unique-local"),
    ("cgnat.test", "100.64.0.1", "cgnat"),
    ("zero.test", "0.0.0.0", "unspecified"),
    ("zero6.test", "::", "unspecified"),
    ("broadcast.test", "255.255.255.255", "broadcast"),
    ("multicast.test", "224.0.0.1", "multicast"),
    ("multicast6.test", "ff02::1", "multicast"),
];

/// A policy that allows every connection, as one that forgot the address
/// check would; names listed in `data.grants` also carry a private grant
/// (the `network` obligation) for the addresses listed there.
const ALLOW_EVERYTHING_POLICY: &str = r#"
package mcp

import rego.v1

decision := {"allow": true, "deny_reasons": [], "warnings": [], "obligations": {"profile": "network-restricted"}} if input.request.kind == "command"

decision := {"allow": true, "deny_reasons": [], "warnings": [], "obligations": grant} if input.request.kind == "network"

grant := {"network": [{"host": ip, "port": input.request.network.port} | some ip in data.grants[input.request.network.host]]} if {
	data.grants[input.request.network.host]
} else := {}
"#;

/// CONNECTs to each name of `NAMES` (JSON), sends `GET /tunnel` when
/// connected; then one malformed CONNECT. One JSON line of results.
const CONNECT_PROBE: &str = r#"
import json, os, socket
P = int(os.environ["TEST_PORT"])
out = {}
for host in json.loads(os.environ["NAMES"]):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT {host}:{P} HTTP/1.1\r\n\r\n".encode())
    resp = s.recv(65536).decode(errors="replace")
    status = resp.split(" ")[1] if resp.startswith("HTTP/") else "?"
    if status == "200":
        s.sendall(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        status += " " + data.decode(errors="replace")
    out[host] = status
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"CONNECT good.test HTTP/1.1\r\n\r\n")
out["malformed"] = s.recv(65536).decode(errors="replace").split(" ")[1]
print(json.dumps(out))
"#;

/// The independent guard, end to end: a policy allows every connection; a
/// name resolving to any internal form is refused unless the decision
/// grants exactly that address, and the refusal is in the decision log with
/// its reason. No connection leaves the host (every granted one goes to a
/// local server), and a malformed request is in the log too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allow_without_a_private_grant_opens_no_internal_address() {
    let port = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("main.rego"), ALLOW_EVERYTHING_POLICY).unwrap();
    let mut names = Vec::new();
    let mut hosts = Vec::new();
    let mut grants = serde_json::Map::new();
    for (name, ip, _) in INTERNAL_FORMS {
        let ip: IpAddr = ip.parse().unwrap();
        for prefix in ["open", "granted"] {
            names.push(format!("{prefix}.{name}"));
            hosts.push((format!("{prefix}.{name}"), vec![ip]));
        }
        grants.insert(
            format!("granted.{name}"),
            serde_json::json!([ip.to_string()]),
        );
    }
    // A grant names the vetted address itself, not another spelling of it.
    for (name, ip, granted) in [
        ("wrong.mapped.test", "::ffff:127.0.0.1", "127.0.0.1"),
        ("wrong.nat64.test", "64:ff9b::7f00:1", "127.0.0.1"),
        ("wrong.private.test", "10.1.2.3", "10.1.2.4"),
    ] {
        names.push(name.to_owned());
        hosts.push((name.to_owned(), vec![ip.parse().unwrap()]));
        grants.insert(name.to_owned(), serde_json::json!([granted]));
    }
    std::fs::write(
        policies.join("data.json"),
        serde_json::json!({"grants": grants}).to_string(),
    )
    .unwrap();
    let redirect = Arc::new(Redirect {
        to: ([127, 0, 0, 1], port).into(),
        asked: Mutex::new(Vec::new()),
    });
    let gw = EgressGateway::start(
        tmp.path(),
        policies,
        mcp_egress::StaticResolver::new(hosts),
        Some(redirect.clone()),
    )
    .await;
    let mut client = Client::connect(&gw.endpoint).await.unwrap();
    let mut req = cmd("python3", &["-c", CONNECT_PROBE]);
    req.env.insert("TEST_PORT".into(), port.to_string());
    req.env
        .insert("NAMES".into(), serde_json::to_string(&names).unwrap());
    req.timeout = 120;
    req.sandbox_config = Some(SandboxConfig {
        network_access: 2,
        ..Default::default()
    });
    let r = client.run(req).await.unwrap();
    let res = r.result.clone().unwrap();
    assert_eq!(res.exit_code, 0, "stderr: {}", res.stderr);
    let out: Value = serde_json::from_str(res.stdout.trim()).unwrap();
    let log = gw.network_decisions().await;
    let entry = |host: &str| {
        let summary = format!("tcp {host}:{port} via http-connect");
        let found: Vec<_> = log.iter().filter(|d| d.summary == summary).collect();
        assert_eq!(found.len(), 1, "{summary}: {log:?}");
        found[0].clone()
    };

    for (name, ip, label) in INTERNAL_FORMS {
        let ip: IpAddr = ip.parse().unwrap();
        let open = format!("open.{name}");
        assert_eq!(out[&open], "403", "{open}: {out}");
        let d = entry(&open);
        assert!(!d.allow);
        assert_eq!(
            d.deny_reasons,
            [format!(
                "destination {open:?} resolves to internal address {ip} ({label}) without a private grant"
            )]
        );
        let granted = format!("granted.{name}");
        let reply = out[&granted].as_str().unwrap_or_default();
        assert!(
            reply.starts_with("200 HTTP/1.1 200 OK")
                && reply.ends_with("\r\n\r\nhello GET /tunnel HTTP/1.1"),
            "{granted}: {out}"
        );
        assert!(entry(&granted).allow);
    }
    for name in [
        "wrong.mapped.test",
        "wrong.nat64.test",
        "wrong.private.test",
    ] {
        assert_eq!(out[name], "403", "{name}: {out}");
        let d = entry(name);
        assert!(
            !d.allow
                && d.deny_reasons
                    .iter()
                    .any(|r| r.contains("not in the decision's network obligation")),
            "{d:?}"
        );
    }
    // Exactly the granted addresses were connected to, once each.
    let mut asked = redirect.asked.lock().unwrap().clone();
    asked.sort();
    let mut want: Vec<SocketAddr> = INTERNAL_FORMS
        .iter()
        .map(|(_, ip, _)| SocketAddr::new(ip.parse().unwrap(), port))
        .collect();
    want.sort();
    assert_eq!(asked, want);
    // A malformed request is refused with 400 and recorded.
    assert_eq!(out["malformed"], "400", "{out}");
    let malformed: Vec<_> = log
        .iter()
        .filter(|d| d.summary == "rejected http-connect request for good.test")
        .collect();
    assert_eq!(malformed.len(), 1, "{log:?}");
    assert!(!malformed[0].allow);
    assert_eq!(
        malformed[0].deny_reasons,
        ["malformed destination \"good.test\""]
    );
    assert!(malformed[0].task_id.is_some());
    gw.stop().await;
}

/// `mcp-gateway exec --network restricted` as the README shows it: the
/// shipped policies refuse it; a data.json change alone (a network grant
/// and an allowlist entry, private because the test server is on loopback)
/// lets `urllib` reach the destination through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_network_restricted_works_with_a_data_change_alone() {
    let port = upstream().await;
    let script = format!(
        "import urllib.request; print(urllib.request.urlopen('http://api.example.com:{port}/from-exec').read().decode())"
    );
    let exec = async |endpoint: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
            .args(["exec", "--endpoint", endpoint, "--network", "restricted"])
            .args(["--", "python3", "-c", &script])
            .env_remove("MCP_GATEWAY_API_KEY")
            .env_remove("MCP_GATEWAY_TOKEN")
            .output()
            .await
            .unwrap()
    };
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let resolver = || mcp_egress::StaticResolver::new([("api.example.com".to_owned(), vec![lo])]);

    // Off by default.
    let shipped_tmp = tempfile::tempdir().unwrap();
    let shipped = EgressGateway::start(
        shipped_tmp.path(),
        repo().join("policies"),
        resolver(),
        None,
    )
    .await;
    let out = exec(&shipped.endpoint).await;
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("restricted") && stderr.contains("is not granted"),
        "{stderr}"
    );
    shipped.stop().await;

    // The shipped policy files, and data.json with the README's change.
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for e in std::fs::read_dir(repo().join("policies")).unwrap() {
        let path = e.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(policies.join("data.json")).unwrap())
            .unwrap();
    let tenant = &mut data["tenants"]["default"];
    tenant["principals"]["anonymous"]["grants"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"tools": ["network:*"], "scope": "write", "expires": null}));
    tenant["network"]["allow"] = serde_json::json!([
        {"host": "api.example.com", "ports": [port], "private": true}
    ]);
    std::fs::write(policies.join("data.json"), data.to_string()).unwrap();
    let gw = EgressGateway::start(tmp.path(), policies, resolver(), None).await;
    let out = exec(&gw.endpoint).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello GET /from-exec HTTP/1.1"
    );
    let log = gw.network_decisions().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].allow);
    assert_eq!(
        log[0].summary,
        format!("tcp api.example.com:{port} via http-forward")
    );
    gw.stop().await;
}
