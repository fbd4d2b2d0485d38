#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (Debian's `postgresql`
# package; scripts/bootstrap.sh installs it):
#   scripts/pg-test-cluster.sh start   initdb + pg_ctl start (idempotent), print the env line
#   scripts/pg-test-cluster.sh env     print `export MCP_TEST_DATABASE_URL=...` of the running cluster
#   scripts/pg-test-cluster.sh stop    stop it and delete its directory (idempotent)
# Typical use:  eval "$(scripts/pg-test-cluster.sh start)"; cargo test -p mcp-store
#
# The cluster lives in /tmp (one per checkout: the directory name is derived
# from the repository path, so worktrees and CI clones do not collide),
# listens on a unix socket in that directory only (no TCP port to collide
# on), runs as the `postgres` user when started by root (PostgreSQL refuses
# to run as root), and has one superuser `mcp` with a random password, which
# the socket's scram-sha-256 authentication checks (so password handling is
# tested for real). fsync is off unless MCP_PG_TEST_FSYNC=on: nothing in it
# has to survive a crash, and tests and the gate stay fast.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${MCP_PG_TEST_DIR:-/tmp/mcp-pg-test.$(printf %s "$repo" | sha256sum | cut -c1-12)}"
data="$dir/data"

bindir() {
  local b
  b="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$b" ] || [ ! -x "$b/initdb" ]; then
    echo "pg-test-cluster: PostgreSQL server binaries not found under /usr/lib/postgresql;" \
      "install Debian's postgresql package (scripts/bootstrap.sh does)" >&2
    exit 1
  fi
  printf %s "$b"
}

# Runs a PostgreSQL program as the cluster's owner, from / (initdb and
# postgres fail when they cannot read the directory they start in, and the
# checkout may not be readable by `postgres`).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

print_env() {
  if [ ! -f "$dir/url" ]; then
    echo "pg-test-cluster: no cluster in $dir; run scripts/pg-test-cluster.sh start" >&2
    exit 1
  fi
  printf 'export MCP_TEST_DATABASE_URL=%q\n' "$(cat "$dir/url")"
}

running() {
  [ -f "$data/postmaster.pid" ] && as_owner "$(bindir)/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start() {
  local bin
  bin="$(bindir)"
  if running && [ -f "$dir/url" ]; then
    print_env
    return
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  chmod 700 "$dir"
  local password
  password="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf '%s\n' "$password" >"$dir/pwfile"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$dir"; fi
  as_owner "$bin/initdb" -D "$data" -U mcp --pwfile="$dir/pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
  }
  local fsync="${MCP_PG_TEST_FSYNC:-off}"
  cat >>"$data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 300
fsync = $fsync
full_page_writes = $fsync
shared_buffers = 64MB
CONF
  as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 30 start >/dev/null || {
    cat "$dir/server.log" >&2
    exit 1
  }
  printf 'postgres://mcp:%s@localhost/postgres?host=%s\n' "$password" "$dir" >"$dir/url"
  rm -f "$dir/pwfile"
  print_env
}

stop() {
  if [ -f "$data/postmaster.pid" ]; then
    as_owner "$(bindir)/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
