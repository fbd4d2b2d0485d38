"""Load test of mcp-security-gateway: the original baseline.

100 requests/s in total (5 minutes in run.sh's default), half through REST
(`POST /v1/run`, `GET /health`) and half through gRPC (`mcp.McpService/
RunCommand`, `Health`), each a mix of `echo`, `ls`, `cat`, `find`, `grep`
runs and health checks. Every command is allowed by the shipped policies
(policies/command.rego) and reads only what the default sandbox profile
shows (/usr, /etc/passwd, ...): a denial or a non-zero exit code counts as a
failure.

Settings (environment):
  MCP_LOAD_RATE   total requests/s over all users (default 100)
  MCP_LOAD_USERS  the user count given to locust with -u (default 50); each
                  user paces itself to MCP_LOAD_RATE / MCP_LOAD_USERS per second
  MCP_GRPC_TARGET host:port of the gRPC door (default: the --host's host:port)
  MCP_TOKEN       optional bearer token sent on both doors

The pacing is closed per user (locust's constant_throughput): if answers take
longer than MCP_LOAD_USERS / MCP_LOAD_RATE seconds, the offered rate drops;
the report's "Current RPS" shows what was actually offered.
"""

import os
import time
from urllib.parse import urlparse

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, constant_throughput, events, task

import gen_stubs

# grpcio's C core must cooperate with gevent, which locust runs on.
grpc_gevent.init_gevent()

import sys  # noqa: E402

sys.path.insert(0, str(gen_stubs.generate()))
import mcp_pb2  # noqa: E402
import mcp_pb2_grpc  # noqa: E402

RATE = float(os.environ.get("MCP_LOAD_RATE", "100"))
USERS = max(1, int(os.environ.get("MCP_LOAD_USERS", "50")))
PER_USER = RATE / USERS
TOKEN = os.environ.get("MCP_TOKEN", "")
TIMEOUT_S = 30

# name -> (weight, command, args): what each execution task runs, and how
# often against the health check's weight of 2. Both doors run the same mix.
COMMANDS = {
    "echo": (3, "echo", ["hello", "from", "locust"]),
    "ls": (2, "ls", ["-la", "/usr/lib"]),
    "cat": (2, "cat", ["/etc/passwd"]),
    "find": (1, "find", ["/etc", "-maxdepth", "2", "-name", "*.conf"]),
    "grep": (2, "grep", ["-c", "root", "/etc/passwd"]),
}


def _command_task(name):
    def run(user):
        user._run(name)

    run.__name__ = name
    return run


# locust's weighted task table of the command mix; each user class adds its
# own health task with @task.
COMMAND_TASKS = {_command_task(name): weight for name, (weight, _, _) in COMMANDS.items()}


class RestUser(FastHttpUser):
    """The REST/JSON door."""

    wait_time = constant_throughput(PER_USER)
    tasks = COMMAND_TASKS

    def on_start(self):
        self.headers = {"content-type": "application/json"}
        if TOKEN:
            self.headers["authorization"] = f"Bearer {TOKEN}"

    def _run(self, name):
        _, command, args = COMMANDS[name]
        body = {"command": command, "args": args, "timeout_secs": TIMEOUT_S}
        with self.client.post(
            "/v1/run",
            json=body,
            headers=self.headers,
            name=f"REST run {name}",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            result = (resp.json() or {}).get("result") or {}
            if result.get("exit_code") != 0:
                resp.failure(f"exit code {result.get('exit_code')}")

    @task(2)
    def health(self):
        with self.client.get(
            "/health", headers=self.headers, name="REST health", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")


class GrpcUser(User):
    """The gRPC door, through stubs generated from proto/mcp.proto."""

    wait_time = constant_throughput(PER_USER)
    tasks = COMMAND_TASKS

    def on_start(self):
        target = os.environ.get("MCP_GRPC_TARGET") or urlparse(self.host).netloc
        self.channel = grpc.insecure_channel(target)
        self.stub = mcp_pb2_grpc.McpServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {TOKEN}")] if TOKEN else None

    def on_stop(self):
        self.channel.close()

    def _call(self, name, fn, check=None):
        """Calls fn(), times it and reports it to locust as one request."""
        start = time.perf_counter()
        exc = None
        length = 0
        try:
            reply = fn()
            length = reply.ByteSize()
            if check is not None:
                check(reply)
        except grpc.RpcError as e:
            exc = RuntimeError(f"{e.code().name}: {e.details()}")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            exc = e
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    def _run(self, name):
        _, command, args = COMMANDS[name]
        req = mcp_pb2.CommandRequest(command=command, args=args, timeout=TIMEOUT_S)

        def check(reply):
            if not reply.HasField("result") or reply.result.exit_code != 0:
                raise RuntimeError(f"exit code {reply.result.exit_code}")

        self._call(
            f"gRPC run {name}",
            lambda: self.stub.RunCommand(req, metadata=self.metadata, timeout=TIMEOUT_S + 5),
            check,
        )

    @task(2)
    def health(self):
        def check(reply):
            if not reply.status:
                raise RuntimeError("empty health status")

        self._call(
            "gRPC health",
            lambda: self.stub.Health(
                mcp_pb2.HealthRequest(), metadata=self.metadata, timeout=10
            ),
            check,
        )
