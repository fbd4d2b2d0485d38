# The two commands of the README, plus a few helpers.
#   make run   - install what is missing, then start the gateway on its embedded defaults
#   make test  - the whole gate: fmt, clippy, every test, cargo deny (what CI runs)

.PHONY: run test bootstrap bench build

bootstrap:
	./scripts/bootstrap.sh

run: bootstrap
	cargo run --release -p mcp-gateway -- serve

test: bootstrap
	./scripts/test.sh

bench: bootstrap
	cargo xtask bench

build:
	cargo build --workspace --release
