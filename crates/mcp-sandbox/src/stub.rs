//! The in-sandbox stub of a pooled sandbox, and the one message the gateway
//! sends it.
//!
//! A pooled sandbox is bubblewrap with every namespace, mount, limit, cgroup
//! and seccomp filter in place, whose command is this stub: the `mcp-gateway`
//! binary (hidden subcommand [`STUB_SUBCOMMAND`]) or `mcp-sandbox-stub`,
//! bound read-only at [`STUB_PATH`]. Its stdin is the control channel, one
//! end of a socketpair whose other end only the pool holds. The stub says
//! it is ready ([`READY`]), then blocks until the gateway sends exactly one
//! [`Order`] for a task the policy approved, lowers its rlimits to the
//! task's, creates the task's working directory, replaces stdin with
//! `/dev/null` and `execve`s the command. A closed channel, a short read or
//! anything that does not parse makes it exit with [`EXIT_PROTOCOL`]
//! without running anything. It never reads a second message: after the
//! exec the channel is gone from the command.
//!
//! Plain std code: it runs inside the sandbox, under the profile's seccomp
//! filter, as the sandbox user.

use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use mcp_core::WORKSPACE_MOUNT;

use crate::sys::{self, Rlimits};

/// The hidden subcommand that turns the gateway binary into the stub.
pub const STUB_SUBCOMMAND: &str = "__sandbox-stub";
/// Where the stub executable is bound (read-only) inside a pooled sandbox.
pub(crate) const STUB_PATH: &str = "/.mcp-sandbox-stub";
/// The stub's exit code when the channel closed or sent garbage; nothing
/// was executed.
pub const EXIT_PROTOCOL: u8 = 125;
/// The byte the stub writes once it waits for its order.
pub(crate) const READY: u8 = b'R';

const MAGIC: &[u8; 8] = b"MCPSTUB1";
/// The largest order accepted (argv + env are bounded far below by the
/// gateway's request limits).
const MAX_ORDER: u32 = 16 << 20;

/// What the stub runs: the approved command of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    /// `argv[0]` is an absolute in-sandbox path.
    pub(crate) argv: Vec<String>,
    /// The complete environment (profile base + request).
    pub(crate) env: Vec<(String, String)>,
    /// Relative to `/workspace`, clean; empty for `/workspace` itself.
    pub(crate) cwd: String,
    pub(crate) limits: Rlimits,
}

/// Why an order was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadOrder(pub(crate) &'static str);

impl std::fmt::Display for BadOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The wire form: `MAGIC`, the payload length (u32 LE), then the payload:
/// five u64 rlimits, the cwd, argc + argv, envc + (key, value) pairs;
/// strings are u32 LE length + UTF-8 bytes.
pub(crate) fn encode(order: &Order) -> Vec<u8> {
    let mut p = Vec::new();
    let l = &order.limits;
    for v in [l.address_space, l.nproc, l.nofile, l.fsize, l.cpu_secs] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    put_str(&mut p, &order.cwd);
    put_len(&mut p, order.argv.len());
    for a in &order.argv {
        put_str(&mut p, a);
    }
    put_len(&mut p, order.env.len());
    for (k, v) in &order.env {
        put_str(&mut p, k);
        put_str(&mut p, v);
    }
    let mut msg = Vec::with_capacity(p.len() + 12);
    msg.extend_from_slice(MAGIC);
    put_len(&mut msg, p.len());
    msg.extend_from_slice(&p);
    msg
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // Orders are far below 4 GiB (MAX_ORDER); a larger one would be refused
    // by the stub, never misread.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Parses the payload of an order (after magic and length) and checks it:
/// at least one argument, `argv[0]` absolute, no NUL bytes, env names
/// non-empty without `=`, cwd clean and relative, nothing left over.
pub(crate) fn decode(payload: &[u8]) -> Result<Order, BadOrder> {
    let mut r = Reader(payload);
    let mut limit = || r.u64();
    let limits = Rlimits {
        address_space: limit()?,
        nproc: limit()?,
        nofile: limit()?,
        fsize: limit()?,
        cpu_secs: limit()?,
    };
    let cwd = r.string()?;
    let argc = r.count()?;
    let mut argv = Vec::new();
    for _ in 0..argc {
        argv.push(r.string()?);
    }
    let envc = r.count()?;
    let mut env = Vec::new();
    for _ in 0..envc {
        let k = r.string()?;
        let v = r.string()?;
        if k.is_empty() || k.contains('=') {
            return Err(BadOrder("bad environment name"));
        }
        env.push((k, v));
    }
    if !r.0.is_empty() {
        return Err(BadOrder("trailing bytes"));
    }
    if !argv.first().is_some_and(|a| a.starts_with('/')) {
        return Err(BadOrder("argv[0] is missing or not absolute"));
    }
    let clean = cwd
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !(cwd.is_empty() || clean) {
        return Err(BadOrder("bad cwd"));
    }
    Ok(Order {
        argv,
        env,
        cwd,
        limits,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BadOrder> {
        if self.0.len() < n {
            return Err(BadOrder("truncated order"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, BadOrder> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn u32(&mut self) -> Result<u32, BadOrder> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    /// A count of items that each take at least 4 bytes: bounded by what is
    /// left, so garbage cannot make us allocate.
    fn count(&mut self) -> Result<usize, BadOrder> {
        let n = usize::try_from(self.u32()?).map_err(|_| BadOrder("count out of range"))?;
        if n > self.0.len() / 4 {
            return Err(BadOrder("count larger than the order"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, BadOrder> {
        let n = usize::try_from(self.u32()?).map_err(|_| BadOrder("length out of range"))?;
        let b = self.take(n)?;
        if b.contains(&0) {
            return Err(BadOrder("NUL byte in a string"));
        }
        String::from_utf8(b.to_vec()).map_err(|_| BadOrder("string is not UTF-8"))
    }
}

/// Reads one framed order from `chan`.
pub(crate) fn read_order(chan: &mut impl Read) -> Result<Order, BadOrder> {
    let mut head = [0u8; 12];
    chan.read_exact(&mut head)
        .map_err(|_| BadOrder("channel closed before an order"))?;
    let (magic, len) = head.split_at(8);
    if magic != MAGIC {
        return Err(BadOrder("bad magic"));
    }
    let mut l = [0u8; 4];
    l.copy_from_slice(len);
    let len = u32::from_le_bytes(l);
    if len > MAX_ORDER {
        return Err(BadOrder("order too large"));
    }
    let mut payload = vec![0u8; usize::try_from(len).map_err(|_| BadOrder("order too large"))?];
    chan.read_exact(&mut payload)
        .map_err(|_| BadOrder("channel closed inside an order"))?;
    decode(&payload)
}

/// The stub's `main`: runs the one order read from stdin (the control
/// channel), or exits with [`EXIT_PROTOCOL`] without running anything.
/// Returns only on failure.
pub fn stub_main() -> ExitCode {
    match stub() {
        Ok(Exec::Failed(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mcp-sandbox stub: {e}; nothing was run");
            ExitCode::from(EXIT_PROTOCOL)
        }
    }
}

enum Exec {
    /// exec failed; exit with this code (as bubblewrap does).
    Failed(u8),
}

fn stub() -> Result<Exec, BadOrder> {
    let mut chan = sys::stdin_socket().map_err(|_| BadOrder("stdin is not the control channel"))?;
    chan.write_all(&[READY])
        .map_err(|_| BadOrder("cannot report ready"))?;
    let order = read_order(&mut chan)?;
    // Exactly one order: the gateway closes its end right after it, so
    // anything but end-of-file here is refused.
    let mut more = [0u8; 1];
    if !matches!(chan.read(&mut more), Ok(0)) {
        return Err(BadOrder("more than one order"));
    }
    // Lowering only: each limit ends at or below what the sandbox has.
    sys::lower_rlimits(&order.limits).map_err(|_| BadOrder("cannot set the task's rlimits"))?;
    let argv0 = order.argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&argv0);
    // An empty cwd is /workspace, where bubblewrap already started us.
    if !order.cwd.is_empty() {
        let dir = format!("{WORKSPACE_MOUNT}/{}", order.cwd);
        // What bubblewrap's `--dir` does for a cold sandbox.
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
        {
            eprintln!("bwrap: Can't mkdir {dir}: {}", strerror(&e));
            return Ok(Exec::Failed(1));
        }
        cmd.current_dir(&dir);
    }
    cmd.args(order.argv.iter().skip(1))
        .env_clear()
        .envs(order.env.iter().map(|(k, v)| (k, v)))
        // Replaces the channel on fd 0: the command never sees it.
        .stdin(Stdio::null());
    let err = cmd.exec();
    // The same message and status bubblewrap gives for a cold sandbox.
    eprintln!("bwrap: execvp {argv0}: {}", strerror(&err));
    drop(chan);
    Ok(Exec::Failed(1))
}

/// The error text without Rust's " (os error N)" suffix, as strerror(3)
/// gives it.
fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s.get(..i).unwrap_or(&s).to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests;
