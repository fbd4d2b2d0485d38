#!/usr/bin/env bash
# The whole gate, run by `make test` and by CI (.ci/run). Fails on the first
# broken step.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "throwaway PostgreSQL for the store's tests (scripts/pg-test-cluster.sh)"
# Stopped on every exit, passing or not.
trap './scripts/pg-test-cluster.sh stop' EXIT
pg_started=$SECONDS
eval "$(./scripts/pg-test-cluster.sh start)"
export MCP_TEST_DATABASE_URL
printf 'PostgreSQL test cluster up in %ss\n' "$((SECONDS - pg_started))" >&2

step "cargo test (unit, integration, policy cases, real sandboxes, SQLite and PostgreSQL stores)"
cargo test --workspace --locked

step "policy tests with line coverage (mcp-gateway policy test)"
# OPA-style test_* rules beside every shipped policy; fail below 95 % line coverage.
cargo run --quiet --locked -p mcp-gateway -- policy test policies --threshold 95

step "promtool: Prometheus config, alert rules and their unit tests"
# Debian's `prometheus` package ships promtool (scripts/bootstrap.sh installs it).
promtool check rules deploy/prometheus/alerts.yml
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts_test.yml

step "cargo deny check licenses bans sources"
# Advisories need the advisory database, which our machines cannot fetch;
# run `cargo deny check advisories` where the network allows.
cargo deny --locked check licenses bans sources

step "packaging: .deb, .rpm, image, Helm chart (scripts/package-check.sh)"
./scripts/package-check.sh

printf '\nall checks passed\n' >&2
