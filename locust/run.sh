#!/usr/bin/env bash
# Runs the load test headless and keeps its report (locust/README.md).
#
#   locust/run.sh                      # 100 req/s for 5 minutes against a fresh local gateway
#   MCP_LOAD_DURATION=60s locust/run.sh
#   MCP_LOAD_HOST=http://10.0.0.5:8081 locust/run.sh   # an already running gateway
#
# Environment: MCP_LOAD_RATE (100), MCP_LOAD_USERS (50), MCP_LOAD_DURATION (5m),
# MCP_LOAD_HOST (unset: start target/release/mcp-gateway, building it if
# needed, or MCP_LOAD_GATEWAY_BIN, with the shipped policies and profiles and a
# throw-away data dir; MCP_LOAD_POLICIES / MCP_LOAD_PROFILES override the
# policy and profile directories), MCP_TOKEN (optional bearer token).
# Output: locust/results/<UTC timestamp>/{stats*.csv,report.html,summary.txt,
# metrics.txt,gateway.log}. Exit status: 0 when the SLO held (p95 < 400 ms and
# < 0.1 % errors), 1 when it did not, 2 on a set-up problem.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
rate=${MCP_LOAD_RATE:-100}
users=${MCP_LOAD_USERS:-50}
duration=${MCP_LOAD_DURATION:-5m}
out="$here/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

# 1. The virtualenv, reinstalled when requirements.txt changes.
venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
if ! cmp -s "$here/requirements.txt" "$venv/.requirements"; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/.requirements"
fi
"$venv/bin/python" "$here/gen_stubs.py" >/dev/null

# 2. The gateway under test.
gw_pid=""
data=""
cleanup() {
    if [[ -n "$gw_pid" ]]; then
        kill "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    fi
    if [[ -n "$data" ]]; then
        rm -rf "$data"
    fi
}
trap cleanup EXIT

host=${MCP_LOAD_HOST:-}
if [[ -z "$host" ]]; then
    bin=${MCP_LOAD_GATEWAY_BIN:-$repo/target/release/mcp-gateway}
    if [[ -z "${MCP_LOAD_GATEWAY_BIN:-}" ]]; then
        (cd "$repo" && cargo build --release --quiet -p mcp-gateway)
    fi
    port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    host="http://127.0.0.1:$port"
    data=$(mktemp -d)
    chmod 755 "$data" # the sandbox user must reach the workspaces and files under it
    MCP_GATEWAY_LOG__FORMAT=json MCP_GATEWAY_LOG__LEVEL=warn,mcp_gateway::server=info \
        "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" \
        --policies "${MCP_LOAD_POLICIES:-$repo/policies}" \
        --profiles "${MCP_LOAD_PROFILES:-$repo/sandbox-profiles}" \
        2>"$out/gateway.log" &
    gw_pid=$!
    for _ in $(seq 1 100); do
        if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$host/health', timeout=1)" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$gw_pid" 2>/dev/null; then
            echo "the gateway exited; its log:" >&2
            cat "$out/gateway.log" >&2
            exit 2
        fi
        sleep 0.2
    done
fi
echo "load test: $rate req/s, $users users, $duration against $host -> $out"

# 3. Locust, headless.
status=0
(
    cd "$here"
    MCP_LOAD_RATE=$rate MCP_LOAD_USERS=$users "$venv/bin/locust" -f locustfile.py \
        --headless --host "$host" -u "$users" -r "$users" -t "$duration" \
        --csv "$out/stats" --html "$out/report.html" --only-summary \
        --stop-timeout 35 2>&1 | tee "$out/locust.log"
) || status=$?
"$venv/bin/python" -c "import urllib.request; print(urllib.request.urlopen('$host/metrics', timeout=5).read().decode())" \
    >"$out/metrics.txt" 2>/dev/null || true

# 4. The verdict against the original SLO, from the aggregated row.
verdict=0
"$venv/bin/python" - "$out" <<'EOF' || verdict=$?
import csv, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/stats_stats.csv")))
agg = next(r for r in rows if r["Name"] == "Aggregated")
n, fails = int(agg["Request Count"]), int(agg["Failure Count"])
p95 = float(agg["95%"])
err = 100.0 * fails / n if n else 100.0
lines = [f"{r['Type']:<5} {r['Name']:<22} n={r['Request Count']:>6} fail={r['Failure Count']:>4} "
         f"p50={r['50%']:>6} p95={r['95%']:>6} p99={r['99%']:>6} ms  rps={float(r['Requests/s']):.1f}"
         for r in rows]
ok = n > 0 and p95 < 400 and err < 0.1
lines.append(f"SLO (p95 < 400 ms, errors < 0.1 %): p95 {p95:.0f} ms, errors {err:.3f} % "
             f"({fails}/{n}), {float(agg['Requests/s']):.1f} req/s -> {'PASS' if ok else 'FAIL'}")
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if ok else 1)
EOF
echo "report: $out/report.html"
if [[ $status -ne 0 && $verdict -eq 0 ]]; then
    echo "locust exited with $status (see $out/locust.log)" >&2
fi
exit $verdict
