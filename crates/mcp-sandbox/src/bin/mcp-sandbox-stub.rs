//! `mcp-sandbox-stub`: the in-sandbox stub of a pooled sandbox as a small
//! binary of its own (the `mcp-gateway` binary serves as the stub through
//! its hidden `__sandbox-stub` subcommand). See `mcp_sandbox::stub_main`.

fn main() -> std::process::ExitCode {
    mcp_sandbox::stub_main()
}
