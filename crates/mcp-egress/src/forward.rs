//! The in-sandbox forwarder of restricted network access (plain `std`, no
//! async runtime).
//!
//! The sandbox's network namespace is empty: only its own loopback exists.
//! The forwarder runs first inside it (as a hidden subcommand of the
//! gateway binary, bound read-only into the sandbox), listens on
//! `127.0.0.1:<port>`, relays every connection to the task's proxy socket
//! (bind-mounted from the host), runs the command as its child and exits
//! with the child's status (`128 + signal` when it was killed). It decides
//! nothing: every decision is the gateway proxy's, so a command that talks
//! to the socket directly, or kills the forwarder, gains nothing.

use std::ffi::OsString;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The first argument that selects the forwarder in the gateway binary.
pub const SUBCOMMAND: &str = "__egress-forward";
/// Connections relayed at once; more are closed.
const MAX_CONNECTIONS: usize = 128;
/// Exit status when the forwarder itself cannot start (as `env(1)`).
pub const EXIT_SETUP_FAILED: i32 = 125;

/// `__egress-forward --socket PATH --port N -- COMMAND [ARGS...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardArgs {
    pub socket: PathBuf,
    pub port: u16,
    pub argv: Vec<OsString>,
}

impl ForwardArgs {
    /// The arguments after the binary (starting with [`SUBCOMMAND`]).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            SUBCOMMAND.into(),
            "--socket".into(),
            self.socket.clone().into_os_string(),
            "--port".into(),
            self.port.to_string().into(),
            "--".into(),
        ];
        v.extend(self.argv.iter().cloned());
        v
    }

    /// Parses what [`ForwardArgs::to_args`] produces (after the binary).
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<ForwardArgs, String> {
        let mut it = args.into_iter();
        if it.next().as_deref() != Some(std::ffi::OsStr::new(SUBCOMMAND)) {
            return Err(format!("expected {SUBCOMMAND}"));
        }
        let mut socket = None;
        let mut port = None;
        loop {
            let Some(a) = it.next() else {
                return Err("missing -- COMMAND".to_owned());
            };
            match a.to_str() {
                Some("--socket") => socket = it.next().map(PathBuf::from),
                Some("--port") => {
                    port = it
                        .next()
                        .and_then(|p| p.to_str().and_then(|p| p.parse::<u16>().ok()))
                        .filter(|p| *p != 0);
                    if port.is_none() {
                        return Err("--port needs a port 1-65535".to_owned());
                    }
                }
                Some("--") => break,
                _ => return Err(format!("unexpected argument {a:?}")),
            }
        }
        let argv: Vec<OsString> = it.collect();
        match (socket, port) {
            (Some(socket), Some(port)) if !argv.is_empty() => {
                Ok(ForwardArgs { socket, port, argv })
            }
            _ => Err(
                "usage: __egress-forward --socket PATH --port N -- COMMAND [ARGS...]".to_owned(),
            ),
        }
    }
}

/// Entry point: parses `args` (after the binary), relays and runs the
/// command; returns the process exit status.
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> i32 {
    match ForwardArgs::parse(args) {
        Ok(a) => run(&a),
        Err(e) => {
            eprintln!("egress forwarder: {e}");
            EXIT_SETUP_FAILED
        }
    }
}

/// Listens, starts the relay thread, runs the command and returns its
/// status.
pub fn run(args: &ForwardArgs) -> i32 {
    let listener = match TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "egress forwarder: cannot listen on 127.0.0.1:{}: {e}",
                args.port
            );
            return EXIT_SETUP_FAILED;
        }
    };
    let socket = args.socket.clone();
    let spawned = std::thread::Builder::new()
        .name("egress-accept".to_owned())
        .spawn(move || accept_loop(&listener, &socket));
    if let Err(e) = spawned {
        eprintln!("egress forwarder: cannot start the relay: {e}");
        return EXIT_SETUP_FAILED;
    }
    let Some((program, rest)) = args.argv.split_first() else {
        return EXIT_SETUP_FAILED;
    };
    match Command::new(program).args(rest).status() {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(EXIT_SETUP_FAILED),
        Err(e) => {
            eprintln!("egress forwarder: cannot run {program:?}: {e}");
            // What a shell answers for a command it cannot execute.
            if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, socket: &std::path::Path) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        let Ok(unix) = UnixStream::connect(socket) else {
            continue;
        };
        open.fetch_add(1, Ordering::Relaxed);
        let count = open.clone();
        let started = std::thread::Builder::new()
            .name("egress-relay".to_owned())
            .spawn(move || {
                relay(tcp, unix);
                count.fetch_sub(1, Ordering::Relaxed);
            });
        if started.is_err() {
            // Out of threads: the connection was dropped with the closure.
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Copies both ways until both directions ended.
fn relay(tcp: TcpStream, unix: UnixStream) {
    let (Ok(tcp_r), Ok(unix_r)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .name("egress-up".to_owned())
        .spawn(move || {
            let mut tcp_r = tcp_r;
            let mut unix_w = unix;
            let _ = io::copy(&mut tcp_r, &mut unix_w);
            let _ = unix_w.shutdown(Shutdown::Write);
        });
    let mut unix_r = unix_r;
    let mut tcp_w = tcp;
    let _ = io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    if let Ok(h) = up {
        let _ = h.join();
    }
}
