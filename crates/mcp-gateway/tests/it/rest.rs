//! The REST front door: the same cases through gRPC and REST give the same
//! outcome; SSE order and termination; the HTTP edges (malformed JSON,
//! limits, unknown routes) answer with the one error shape.

use std::collections::BTreeMap;
use std::time::Duration;

use mcp_client::{CommandRequest, OutputChunkType, TaskStatus, TaskStatusResponse};
use mcp_gateway::error::code_name;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestGateway, cmd, test_config};

/// A REST client for one test gateway.
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
}

impl Rest {
    pub fn new(gw: &TestGateway) -> Self {
        Self {
            base: gw.endpoint(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// The JSON body of a gRPC `CommandRequest`.
pub fn rest_body(r: &CommandRequest) -> Value {
    let mut v = json!({
        "command": r.command,
        "args": r.args,
        "env": r.env.iter().collect::<BTreeMap<_, _>>(),
        "timeout_secs": r.timeout,
        "metadata": r.metadata.iter().collect::<BTreeMap<_, _>>(),
    });
    if let Some(cwd) = &r.cwd {
        v["cwd"] = json!(cwd);
    }
    if let Some(sb) = &r.sandbox_config {
        let network = match sb.network_access {
            0 => "none",
            1 => "host",
            _ => "restricted",
        };
        let l = sb.resource_limits.unwrap_or_default();
        v["sandbox"] = json!({
            "network": network,
            "limits": {
                "cpu_limit": l.cpu_limit,
                "memory_bytes": l.memory_limit,
                "pids": l.pids_limit,
                "io_weight": l.io_weight,
            },
            "rw_paths": sb.rw_paths,
            "ro_paths": sb.ro_paths,
            "denied_paths": sb.denied_paths,
        });
    }
    v
}

/// What either door answered, reduced to what both must agree on.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Task {
        status: String,
        exit_code: Option<i32>,
        stdout: String,
        stderr: String,
        failure_reason: Option<String>,
        profile: Option<String>,
    },
    Created {
        status: String,
    },
    File(Value),
    Error {
        status: String,
        code: u16,
    },
}

fn grpc_status_name(s: i32) -> String {
    TaskStatus::try_from(s)
        .unwrap()
        .as_str_name()
        .trim_start_matches("TASK_")
        .to_lowercase()
}

fn grpc_task(r: &TaskStatusResponse) -> Outcome {
    let info = r.task_info.as_ref().unwrap();
    let res = r.result.as_ref();
    Outcome::Task {
        status: grpc_status_name(info.status),
        exit_code: res.map(|r| r.exit_code),
        stdout: res.map(|r| r.stdout.clone()).unwrap_or_default(),
        stderr: res.map(|r| r.stderr.clone()).unwrap_or_default(),
        failure_reason: info.failure_reason.clone(),
        profile: info.profile.clone(),
    }
}

fn grpc_error(e: mcp_client::ClientError) -> Outcome {
    let s = e.status().unwrap();
    let code = s
        .metadata()
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Outcome::Error {
        status: code_name(s.code()).to_owned(),
        code,
    }
}

fn grpc<T>(r: Result<T, mcp_client::ClientError>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => ok(v),
        Err(e) => grpc_error(e),
    }
}

fn rest_task(v: &Value) -> Outcome {
    let res = &v["result"];
    let s = |x: &Value| x.as_str().map(str::to_owned);
    Outcome::Task {
        status: v["status"].as_str().unwrap().to_owned(),
        exit_code: res["exit_code"].as_i64().map(|c| c as i32),
        stdout: s(&res["stdout"]).unwrap_or_default(),
        stderr: s(&res["stderr"]).unwrap_or_default(),
        failure_reason: s(&v["failure_reason"]),
        profile: s(&v["profile"]),
    }
}

/// Checks the error shape and reduces it; asserts HTTP status and gRPC
/// code agree with the documented mapping.
pub async fn rest_error(resp: reqwest::Response) -> (Outcome, Value) {
    let http = resp.status();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    let e = &body["error"];
    assert!(e["code"].is_u64(), "{body}");
    assert!(e["message"].is_string(), "{body}");
    assert!(e["details"].is_object(), "{body}");
    let request_id = e["request_id"].as_str().unwrap();
    uuid::Uuid::parse_str(request_id).unwrap();
    assert_eq!(rid.as_deref(), Some(request_id), "x-request-id header");
    let code = e["code"].as_u64().unwrap() as u16;
    assert!(
        (1000..7000).contains(&code),
        "code {code} outside the families"
    );
    assert!(http.is_client_error() || http.is_server_error(), "{http}");
    (
        Outcome::Error {
            status: e["status"].as_str().unwrap().to_owned(),
            code,
        },
        body,
    )
}

async fn rest<F>(resp: reqwest::Response, ok: F) -> Outcome
where
    F: FnOnce(&Value) -> Outcome,
{
    if resp.status().is_success() {
        let v: Value = resp.json().await.unwrap();
        ok(&v)
    } else {
        rest_error(resp).await.0
    }
}

/// Both doors of one gateway.
struct Doors {
    gw: TestGateway,
    rest: Rest,
}

impl Doors {
    async fn start() -> Self {
        let gw = TestGateway::start().await;
        let rest = Rest::new(&gw);
        Self { gw, rest }
    }

    async fn run(&mut self, req: CommandRequest) -> (Outcome, Outcome) {
        let g = grpc(self.gw.client.run(req.clone()).await, |r| grpc_task(&r));
        let r = rest(
            self.rest.post_json("/v1/run", &rest_body(&req)).await,
            rest_task,
        )
        .await;
        (g, r)
    }

    async fn execute(&mut self, req: CommandRequest) -> (Outcome, Outcome) {
        let g = grpc(self.gw.client.execute(req.clone()).await, |r| {
            Outcome::Created {
                status: grpc_status_name(r.status),
            }
        });
        let resp = self.rest.post_json("/v1/execute", &rest_body(&req)).await;
        let r = if resp.status().is_success() {
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let loc = resp.headers()["location"].to_str().unwrap().to_owned();
            let v: Value = resp.json().await.unwrap();
            assert_eq!(loc, format!("/v1/tasks/{}", v["task_id"].as_str().unwrap()));
            Outcome::Created {
                status: v["status"].as_str().unwrap().to_owned(),
            }
        } else {
            rest_error(resp).await.0
        };
        (g, r)
    }

    async fn status(&mut self, id: &str) -> (Outcome, Outcome) {
        let g = grpc(self.gw.client.status(id).await, |r| grpc_task(&r));
        let r = rest(self.rest.get(&format!("/v1/tasks/{id}")).await, rest_task).await;
        (g, r)
    }

    async fn cancel(&mut self, id: &str) -> (Outcome, Outcome) {
        let g = grpc(self.gw.client.cancel(id).await, |r| grpc_task(&r));
        let r = rest(
            self.rest
                .http
                .post(self.rest.url(&format!("/v1/tasks/{id}/cancel")))
                .send()
                .await
                .unwrap(),
            rest_task,
        )
        .await;
        (g, r)
    }
}

fn assert_same(name: &str, (g, r): (Outcome, Outcome)) -> Outcome {
    assert_eq!(g, r, "{name}: gRPC and REST disagree");
    g
}

#[tokio::test]
async fn commands_give_the_same_outcome_through_both_doors() {
    let mut d = Doors::start().await;
    let hello = assert_same("echo", d.run(cmd("echo", &["hello"])).await);
    assert!(
        matches!(&hello, Outcome::Task { status, exit_code: Some(0), stdout, .. } if status == "completed" && stdout == "hello\n"),
        "{hello:?}"
    );
    let ls = assert_same("ls", d.run(cmd("ls", &["/nonexistent"])).await);
    assert!(
        matches!(
            &ls,
            Outcome::Task {
                exit_code: Some(2),
                ..
            }
        ),
        "{ls:?}"
    );
    let mut t = cmd("sleep", &["30"]);
    t.timeout = 1;
    let timed = assert_same("timeout", d.run(t).await);
    assert!(
        matches!(&timed, Outcome::Task { status, .. } if status == "timed_out"),
        "{timed:?}"
    );
    let mut env = cmd("env", &[]);
    env.env.insert("GREETING".into(), "hi".into());
    let env = assert_same("env", d.run(env).await);
    assert!(
        matches!(&env, Outcome::Task { stdout, .. } if stdout.contains("GREETING=hi")),
        "{env:?}"
    );
    let created = assert_same("execute", d.execute(cmd("true", &[])).await);
    assert_eq!(
        created,
        Outcome::Created {
            status: "created".into()
        }
    );
    d.gw.stop().await;
}

/// Every case of `bad_input.rs`, through both doors: same gRPC code, same
/// error number.
#[tokio::test]
async fn refused_requests_get_the_same_error_through_both_doors() {
    let mut d = Doors::start().await;
    let big = "x".repeat(200 * 1024);
    let mut cases: Vec<(&str, CommandRequest, &str, u16)> = vec![
        ("empty", cmd("", &[]), "INVALID_ARGUMENT", 2001),
        ("NUL", cmd("ec\0ho", &[]), "INVALID_ARGUMENT", 2001),
        (
            "args too large",
            cmd("echo", &[&big]),
            "INVALID_ARGUMENT",
            2001,
        ),
        ("rm", cmd("rm", &["-rf", "/"]), "PERMISSION_DENIED", 3001),
        ("relative", cmd("./evil.sh", &[]), "PERMISSION_DENIED", 3001),
        (
            "find -exec",
            cmd("find", &["/", "-exec", "id", ";"]),
            "PERMISSION_DENIED",
            3001,
        ),
    ];
    let mut r = cmd("echo", &[]);
    r.env.insert("LD_PRELOAD".into(), "/files/evil.so".into());
    cases.push(("LD_PRELOAD", r, "PERMISSION_DENIED", 3001));
    let mut r = cmd("echo", &[]);
    r.env.insert("BAD-NAME".into(), "1".into());
    cases.push(("env name", r, "INVALID_ARGUMENT", 2001));
    let mut r = cmd("ls", &[]);
    r.cwd = Some("../etc".into());
    cases.push(("cwd", r, "INVALID_ARGUMENT", 2001));
    let mut r = cmd("sleep", &["1"]);
    r.timeout = 100_000;
    cases.push(("timeout", r, "INVALID_ARGUMENT", 2001));
    let mut r = cmd("echo", &[]);
    r.sandbox_config = Some(mcp_client::SandboxConfig {
        network_access: 1,
        ..Default::default()
    });
    cases.push(("host network", r, "PERMISSION_DENIED", 3001));
    let mut r = cmd("ls", &[]);
    r.sandbox_config = Some(mcp_client::SandboxConfig {
        ro_paths: vec!["relative/path".into()],
        ..Default::default()
    });
    cases.push(("relative sandbox path", r, "INVALID_ARGUMENT", 2001));
    for (name, req, status, code) in cases {
        for (door, out) in [
            ("execute", d.execute(req.clone()).await),
            ("run", d.run(req).await),
        ] {
            let o = assert_same(&format!("{name} ({door})"), out);
            assert_eq!(
                o,
                Outcome::Error {
                    status: status.into(),
                    code
                },
                "{name} ({door})"
            );
        }
    }
    d.gw.stop().await;
}

#[tokio::test]
async fn task_lookups_and_cancels_agree_through_both_doors() {
    let mut d = Doors::start().await;
    for bad in ["not-a-uuid", "0190b1a2-0000-7000-8000-00000000000"] {
        let e = assert_same(bad, d.status(bad).await);
        assert_eq!(
            e,
            Outcome::Error {
                status: "INVALID_ARGUMENT".into(),
                code: 2002
            }
        );
        assert_same(bad, d.cancel(bad).await);
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = assert_same("unknown", d.status(&unknown).await);
    assert_eq!(
        e,
        Outcome::Error {
            status: "NOT_FOUND".into(),
            code: 6001
        }
    );
    assert_same("unknown cancel", d.cancel(&unknown).await);

    // A finished task: the same record through both doors, and neither
    // can cancel it.
    let done = d.gw.client.run(cmd("echo", &["done"])).await.unwrap();
    let id = done.task_info.unwrap().task_id;
    let rec = assert_same("status", d.status(&id).await);
    assert!(matches!(&rec, Outcome::Task { stdout, .. } if stdout == "done\n"));
    let e = assert_same("cancel finished", d.cancel(&id).await);
    assert_eq!(
        e,
        Outcome::Error {
            status: "FAILED_PRECONDITION".into(),
            code: 2008
        }
    );

    // A running task cancelled through REST ends like one cancelled
    // through gRPC.
    for via_rest in [false, true] {
        let created = d.gw.client.execute(cmd("sleep", &["30"])).await.unwrap();
        let id = created.task_id;
        let r = if via_rest {
            let resp = d
                .rest
                .http
                .post(d.rest.url(&format!("/v1/tasks/{id}/cancel")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            rest_task(&resp.json::<Value>().await.unwrap())
        } else {
            grpc_task(&d.gw.client.cancel(&id).await.unwrap())
        };
        assert!(
            matches!(&r, Outcome::Task { status, failure_reason: Some(f), .. } if status == "cancelled" && f == "cancelled by client"),
            "via_rest={via_rest}: {r:?}"
        );
    }
    d.gw.stop().await;
}

#[tokio::test]
async fn files_agree_through_both_doors() {
    let mut d = Doors::start().await;
    // Written through REST, read through gRPC, and the other way round.
    let resp = d
        .rest
        .http
        .put(
            d.rest
                .url("/v1/files/notes/a.txt?create_dirs=true&mode=600"),
        )
        .body("from rest\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"path": "notes/a.txt", "bytes_written": 10}));
    let g = d.gw.client.read_file("notes/a.txt").await.unwrap();
    assert_eq!(g.content, b"from rest\n");
    d.gw.client
        .write_file(mcp_client::WriteFileRequest {
            path: "notes/b.json".into(),
            content: b"{\"x\":1}".to_vec(),
            create_dirs: false,
            mode: 0,
        })
        .await
        .unwrap();
    let resp = d.rest.get("/v1/files/notes/b.json").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"{\"x\":1}");
    // The same file as a command sees it.
    let r =
        d.gw.client
            .run(cmd("cat", &["/files/notes/a.txt"]))
            .await
            .unwrap();
    assert_eq!(r.result.unwrap().stdout, "from rest\n");

    // Refusals: same code through both doors.
    let cases: Vec<(&str, &str, u16)> = vec![
        ("missing.txt", "NOT_FOUND", 6002),
        (".env", "PERMISSION_DENIED", 3001),
        ("notes", "FAILED_PRECONDITION", 2009),
        ("../etc/passwd", "INVALID_ARGUMENT", 2001),
    ];
    for (path, status, code) in cases {
        let want = Outcome::Error {
            status: status.into(),
            code,
        };
        let g = grpc(d.gw.client.read_file(path).await, |_| {
            Outcome::File(json!({}))
        });
        // URL parsing would resolve `..` (also as %2E%2E); an encoded `/`
        // keeps it one segment, which the gateway decodes as meant.
        let url = d
            .rest
            .url(&format!("/v1/files/{}", path.replace('/', "%2F")));
        let r = rest(d.rest.http.get(url).send().await.unwrap(), |_| {
            Outcome::File(json!({}))
        })
        .await;
        assert_eq!(g, want, "gRPC read {path}");
        assert_eq!(r, want, "REST read {path}");
    }
    // Deleting a non-empty directory needs `recursive`, in both doors.
    let resp = d
        .rest
        .http
        .delete(d.rest.url("/v1/files/notes"))
        .send()
        .await
        .unwrap();
    let (e, _) = rest_error(resp).await;
    let g = grpc(d.gw.client.delete_file("notes", false).await, |_| {
        Outcome::File(json!({}))
    });
    assert_eq!(e, g);
    let resp = d
        .rest
        .http
        .delete(d.rest.url("/v1/files/notes?recursive=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"path": "notes", "deleted": true})
    );
    let g = grpc(d.gw.client.read_file("notes/a.txt").await, |_| {
        Outcome::File(json!({}))
    });
    assert_eq!(
        g,
        Outcome::Error {
            status: "NOT_FOUND".into(),
            code: 6002
        }
    );
    // A mode that is not octal is named.
    let resp = d
        .rest
        .http
        .put(d.rest.url("/v1/files/x?mode=rwx"))
        .body("x")
        .send()
        .await
        .unwrap();
    let (e, body) = rest_error(resp).await;
    assert_eq!(
        e,
        Outcome::Error {
            status: "INVALID_ARGUMENT".into(),
            code: 2004
        }
    );
    assert_eq!(body["error"]["details"]["field"], "mode");
    d.gw.stop().await;
}

/// Reads a whole SSE response into (event, data) pairs.
pub async fn sse(resp: reqwest::Response) -> Vec<(String, Value)> {
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the event stream did not end")
        .unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_owned());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if let Some(e) = event {
            events.push((e, serde_json::from_str(&data).unwrap()));
        }
    }
    events
}

#[tokio::test]
async fn output_streams_as_server_sent_events_in_order_and_ends_with_the_exit_code() {
    let mut d = Doors::start().await;
    let script = "import sys,time\nfor i in range(5):\n  print('out', i, flush=True)\n  print('err', i, file=sys.stderr, flush=True)\n  time.sleep(0.05)\nsys.exit(3)";
    let created = d
        .rest
        .post_json(
            "/v1/execute",
            &json!({"command": "python3", "args": ["-c", script]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let id = created["task_id"].as_str().unwrap().to_owned();
    let live = sse(d.rest.get(&format!("/v1/tasks/{id}/output")).await).await;
    let collect = |events: &[(String, Value)], kind: &str| -> String {
        events
            .iter()
            .filter(|(e, _)| e == kind)
            .map(|(_, v)| v["data"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        collect(&live, "stdout"),
        "out 0\nout 1\nout 2\nout 3\nout 4\n"
    );
    assert_eq!(
        collect(&live, "stderr"),
        "err 0\nerr 1\nerr 2\nerr 3\nerr 4\n"
    );
    let (last, data) = live.last().unwrap();
    assert_eq!(last, "exit_code");
    assert_eq!(data["exit_code"], 3);
    assert_eq!(
        live.iter().filter(|(e, _)| e == "exit_code").count(),
        1,
        "exactly one exit_code event"
    );
    assert!(
        live.windows(2)
            .all(|w| w[0].1["timestamp_ms"].as_i64() <= w[1].1["timestamp_ms"].as_i64())
    );

    // The same output through gRPC, and a replay after the end.
    let chunks = d.gw.client.collect_output(&id).await.unwrap();
    let grpc_out: String = chunks
        .iter()
        .filter(|c| c.r#type == OutputChunkType::ChunkStdout as i32)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    let replay = sse(d.rest.get(&format!("/v1/tasks/{id}/output")).await).await;
    assert_eq!(collect(&replay, "stdout"), grpc_out);
    assert_eq!(replay.last().unwrap().1["exit_code"], 3);

    // A cancelled task's stream says why and still ends with the exit code
    // (137: killed by SIGKILL).
    let created = d.gw.client.execute(cmd("sleep", &["30"])).await.unwrap();
    let url = d.rest.url(&format!("/v1/tasks/{}/output", created.task_id));
    let stream = tokio::spawn({
        let http = d.rest.http.clone();
        async move { sse(http.get(url).send().await.unwrap()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.gw.client.cancel(&created.task_id).await.unwrap();
    let events = stream.await.unwrap();
    assert_eq!(events.last().unwrap().0, "exit_code");
    assert_eq!(events.last().unwrap().1["exit_code"], 137);
    assert!(
        events
            .iter()
            .any(|(e, v)| e == "event" && v["data"] == "cancelled by client"),
        "{events:?}"
    );

    let unknown = uuid::Uuid::now_v7();
    let (e, _) = rest_error(d.rest.get(&format!("/v1/tasks/{unknown}/output")).await).await;
    assert_eq!(
        e,
        Outcome::Error {
            status: "NOT_FOUND".into(),
            code: 6001
        }
    );
    d.gw.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_400_naming_the_field() {
    let d = Doors::start().await;
    let send = |body: &'static str, ct: &'static str| {
        let http = d.rest.http.clone();
        let url = d.rest.url("/v1/execute");
        async move {
            http.post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let json_ct = "application/json";
    let cases: Vec<(&str, &str, u16, Option<&str>, &str)> = vec![
        ("{", json_ct, 2004, None, "not valid JSON"),
        ("", json_ct, 2004, None, "not valid JSON"),
        (
            "{\"command\":\"echo\"} x",
            json_ct,
            2004,
            None,
            "not valid JSON",
        ),
        (
            "{\"args\":[]}",
            json_ct,
            2004,
            None,
            "missing field `command`",
        ),
        (
            "{\"command\":\"echo\",\"timeout_secs\":\"ten\"}",
            json_ct,
            2004,
            Some("timeout_secs"),
            "invalid type",
        ),
        (
            "{\"command\":\"echo\",\"args\":[1]}",
            json_ct,
            2004,
            Some("args[0]"),
            "invalid type",
        ),
        (
            "{\"command\":\"echo\",\"bogus\":1}",
            json_ct,
            2004,
            Some("bogus"),
            "unknown field `bogus`",
        ),
        (
            "{\"command\":\"echo\",\"sandbox\":{\"network\":\"wifi\"}}",
            json_ct,
            2004,
            Some("sandbox.network"),
            "unknown variant `wifi`",
        ),
        (
            "{\"command\":\"echo\",\"sandbox\":{\"limits\":{\"cpus\":1}}}",
            json_ct,
            2004,
            Some("sandbox.limits.cpus"),
            "unknown field `cpus`",
        ),
        (
            "{\"command\":\"echo\",\"timeout_secs\":-1}",
            json_ct,
            2004,
            Some("timeout_secs"),
            "invalid value",
        ),
        (
            "command=echo",
            "application/x-www-form-urlencoded",
            2006,
            None,
            "application/json",
        ),
    ];
    for (body, ct, code, field, needle) in cases {
        let resp = send(body, ct).await;
        let http = resp.status();
        let (o, v) = rest_error(resp).await;
        let Outcome::Error { code: got, .. } = o else {
            unreachable!()
        };
        assert_eq!(got, code, "{body}: {v}");
        assert_eq!(http, if code == 2006 { 415 } else { 400 }, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg:?} lacks {needle:?}");
        assert_eq!(
            v["error"]["details"]["field"].as_str(),
            field,
            "{body}: {v}"
        );
        if let Some(f) = field {
            assert!(msg.contains(&format!("field `{f}`")), "{msg}");
        }
    }
    // Unknown query parameters are refused too.
    let resp = d
        .rest
        .post_json("/v1/execute?dry_run=1", &json!({"command": "true"}))
        .await;
    let (_, v) = rest_error(resp).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `dry_run`"),
        "{v}"
    );
    // Nothing above ran and the server is fine.
    assert_eq!(d.rest.get("/health").await.status(), StatusCode::OK);
    d.gw.stop().await;
}

#[tokio::test]
async fn http_edges_answer_with_the_error_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = test_config(tmp.path());
    raw.http.max_body_bytes = 1024;
    raw.limits.max_file_bytes = 2048;
    let gw = TestGateway::start_with(raw).await;
    let rest = Rest::new(&gw);

    let cases: Vec<(reqwest::RequestBuilder, u16, &str, u16)> = vec![
        (
            rest.http.get(rest.url("/v2/nothing")),
            404,
            "NOT_FOUND",
            6003,
        ),
        (
            rest.http.delete(rest.url("/v1/execute")),
            405,
            "UNIMPLEMENTED",
            2007,
        ),
        (
            rest.http
                .post(rest.url("/v1/execute"))
                .header("content-type", "application/json")
                .body(format!("{{\"command\":\"{}\"}}", "x".repeat(4096))),
            413,
            "RESOURCE_EXHAUSTED",
            2005,
        ),
        (
            rest.http
                .put(rest.url("/v1/files/big"))
                .body(vec![b'x'; 4096]),
            413,
            "RESOURCE_EXHAUSTED",
            2005,
        ),
        (
            rest.http.get(rest.url("/v1/tasks?limit=0")),
            400,
            "INVALID_ARGUMENT",
            2004,
        ),
        (
            rest.http.get(rest.url("/v1/tasks?status=sleeping")),
            400,
            "INVALID_ARGUMENT",
            2004,
        ),
    ];
    for (req, http, status, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), http);
        let (o, v) = rest_error(resp).await;
        assert_eq!(
            o,
            Outcome::Error {
                status: status.into(),
                code
            },
            "{v}"
        );
    }
    // A file just under the file limit is fine although above the JSON one.
    let resp = rest
        .http
        .put(rest.url("/v1/files/ok"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn slow_requests_time_out_and_the_concurrency_limit_refuses_the_excess() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = test_config(tmp.path());
    raw.http.request_timeout_secs = 1;
    raw.http.max_concurrent_requests = 1;
    let gw = TestGateway::start_with(raw).await;
    let rest = Rest::new(&gw);

    // A body that never finishes arriving.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"abc".to_vec())).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let slow = tokio::spawn({
        let req = rest.http.put(rest.url("/v1/files/slow")).body(body);
        async move { req.send().await.unwrap() }
    });
    // While it holds the only slot, other API calls are refused, but
    // probes still answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (o, _) = rest_error(rest.get("/v1/tasks/x").await).await;
    assert_eq!(
        o,
        Outcome::Error {
            status: "UNAVAILABLE".into(),
            code: 5005
        }
    );
    assert_eq!(rest.get("/health").await.status(), StatusCode::OK);
    assert_eq!(rest.get("/metrics").await.status(), StatusCode::OK);

    let resp = slow.await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let (o, _) = rest_error(resp).await;
    assert_eq!(
        o,
        Outcome::Error {
            status: "DEADLINE_EXCEEDED".into(),
            code: 5004
        }
    );
    drop(tx);
    // `POST /v1/run` may take as long as its task on top.
    let resp = rest
        .post_json("/v1/run", &json!({"command": "sleep", "args": ["1.5"]}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "completed");
    gw.stop().await;
}

#[tokio::test]
async fn health_ready_and_grpc_share_the_port() {
    let mut gw = TestGateway::start().await;
    let rest = Rest::new(&gw);
    let h: Value = rest.get("/health").await.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));

    let resp = rest.get("/ready").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["ready"], true, "{r}");
    for check in ["store", "sandbox", "policy"] {
        assert_eq!(r[check]["ok"], true, "{check}: {r}");
    }
    assert!(!r["policy_revision"].as_str().unwrap().is_empty());

    // The gRPC services answer on the same port.
    assert_eq!(gw.client.health().await.unwrap().status, "SERVING");
    gw.stop().await;
}

#[tokio::test]
async fn readiness_fails_once_shutdown_began() {
    let tmp = tempfile::tempdir().unwrap();
    crate::harness::global_telemetry();
    crate::harness::require_bwrap();
    let cfg = test_config(tmp.path()).validate().unwrap();
    let gateway = mcp_gateway::server::build(&cfg).await.unwrap();
    let app = mcp_gateway::server::app(&cfg, gateway.clone())
        .await
        .unwrap();
    let ready = |app: axum::Router| async move {
        use tower::ServiceExt as _;
        let resp = app
            .oneshot(
                axum::http::Request::get("/ready")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let (status, r) = ready(app.clone()).await;
    assert_eq!(status, 200, "{r}");
    gateway.shutdown(Duration::ZERO).await;
    let (status, r) = ready(app).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["ready"], false);
    assert_eq!(r["accepting"], false);
    assert_eq!(r["store"]["ok"], true, "{r}");
}

#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_checked_in_one() {
    let gw = TestGateway::start().await;
    let rest = Rest::new(&gw);
    let resp = rest.get("/openapi.json").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let served = resp.text().await.unwrap();
    assert_eq!(served, mcp_gateway::rest::openapi_json());
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for (path, method, op) in [
        ("/v1/execute", "post", "ExecuteCommand"),
        ("/v1/run", "post", "RunCommand"),
        ("/v1/tasks", "get", "ListTasks"),
        ("/v1/tasks/{id}", "get", "GetTaskStatus"),
        ("/v1/tasks/{id}/output", "get", "StreamTaskOutput"),
        ("/v1/tasks/{id}/cancel", "post", "CancelTask"),
        ("/v1/files/{path}", "get", "ReadFile"),
        ("/v1/files/{path}", "put", "WriteFile"),
        ("/v1/files/{path}", "delete", "DeleteFile"),
        ("/health", "get", "Health"),
        ("/ready", "get", "Ready"),
        ("/metrics", "get", "Metrics"),
        ("/openapi.json", "get", "OpenApi"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["operationId"], op,
            "{method} {path}"
        );
    }
    gw.stop().await;
}

/// The checked-in `docs/api/openapi.json` is what the code generates. Run
/// with `UPDATE_OPENAPI=1` to rewrite it after changing the API.
#[test]
fn checked_in_openapi_has_not_drifted() {
    let path = crate::harness::repo().join("docs/api/openapi.json");
    let generated = mcp_gateway::rest::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/api/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p mcp-gateway --test it checked_in_openapi` and commit the result"
    );
}

#[tokio::test]
async fn grpc_clients_still_get_unimplemented_for_unknown_methods() {
    let gw = TestGateway::start().await;
    let channel = tonic::transport::Endpoint::from_shared(gw.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mcp.McpService".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1);
    // A gRPC call to a method nobody serves gets gRPC's UNIMPLEMENTED,
    // not the REST 404 document.
    let resp = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!("http://{}/mcp.Nope/Missing", gw.addr))
        .header("content-type", "application/grpc")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "12");
    gw.stop().await;
}

#[tokio::test]
async fn list_tasks_pages_newest_first_and_filters_by_status() {
    let gw = TestGateway::start().await;
    let rest = Rest::new(&gw);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = rest
            .post_json(
                "/v1/run",
                &json!({"command": "echo", "args": [i.to_string()]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        ids.push(v["task_id"].as_str().unwrap().to_owned());
    }
    let page: Value = rest.get("/v1/tasks?limit=2").await.json().await.unwrap();
    let got: Vec<_> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, vec![ids[2].clone(), ids[1].clone()], "{page}");
    let cursor = page["next_cursor"].as_str().unwrap();
    let page2: Value = rest
        .get(&format!("/v1/tasks?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["tasks"].as_array().unwrap().len(), 1, "{page2}");
    assert_eq!(page2["tasks"][0]["task_id"], ids[0].as_str());
    assert!(page2.get("next_cursor").is_none(), "{page2}");

    let done: Value = rest
        .get("/v1/tasks?status=TASK_COMPLETED")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["tasks"].as_array().unwrap().len(), 3, "{done}");
    let running: Value = rest
        .get("/v1/tasks?status=running")
        .await
        .json()
        .await
        .unwrap();
    assert!(running["tasks"].as_array().unwrap().is_empty(), "{running}");
    let future: Value = rest
        .get("/v1/tasks?since=2999-01-01T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert!(future["tasks"].as_array().unwrap().is_empty(), "{future}");
    gw.stop().await;
}
