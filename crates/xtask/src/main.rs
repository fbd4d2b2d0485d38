//! `cargo xtask <task>`: development tasks.
//!
//! - `bench [--quick] …`: end-to-end `RunCommand echo` latency through a
//!   release gateway (a separate process, as in production), sequential,
//!   concurrent, at a fixed rate and up a throughput ramp, against the same
//!   sandbox spawned directly (no gateway) and a bare fork+exec; policy and
//!   store shares; the gateway's RSS and fds over many tasks. All in one run
//!   on one machine (see `bench.rs` and docs/PERFORMANCE.md).
//! - `dist [--no-build]`: one release build, staged with its man page and
//!   completions, packed as `.deb` and `.rpm` into `target/dist/`.
//! - `image [--no-build] [--rootfs DIR]`: the distroless OCI image of the
//!   same staged binary, as an OCI archive in `target/dist/` (root, umoci).

#![forbid(unsafe_code)]

mod bench;
mod dist;
mod image;
mod util;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("bench") => bench::main(&bench::Opts::parse(args).unwrap_or_else(|e| usage(&e))),
        Some("dist") => {
            dist::main(&util::Opts::parse(args, DIST_USAGE).unwrap_or_else(|e| usage(&e)))
        }
        Some("image") => {
            image::main(&util::Opts::parse(args, IMAGE_USAGE).unwrap_or_else(|e| usage(&e)))
        }
        _ => {
            eprintln!("usage: {}", bench::USAGE);
            eprintln!("       {DIST_USAGE}");
            eprintln!("       {IMAGE_USAGE}");
            std::process::exit(2);
        }
    }
}

/// A command line that does not parse: its error (which names the usage),
/// without a backtrace, and exit status 2.
fn usage(e: &anyhow::Error) -> ! {
    eprintln!("{e}");
    std::process::exit(2);
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const DIST_USAGE: &str = "cargo xtask dist [--no-build]";
const IMAGE_USAGE: &str = "cargo xtask image [--no-build] [--rootfs DIR]";
