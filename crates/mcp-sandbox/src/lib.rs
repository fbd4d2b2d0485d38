//! The only crate of mcp-security-gateway that spawns processes.
//!
//! It turns a sandbox profile (`sandbox-profiles/*.toml`, see [`Profiles`])
//! and a [`RunSpec`] into a bubblewrap command with a seccomp filter and a
//! task cgroup, runs it with rlimits, streams its capped output, enforces
//! timeout, CPU time and cancellation, reaps it with resource usage and
//! removes its cgroup ([`Sandbox`]). It also owns the
//! gateway's own file operations on tenant files roots ([`FilesRoot`]) and
//! the host report of `mcp-gateway sandbox check` ([`probe_host`]).
//! The threat model is `docs/security/THREAT_MODEL.md`; the escape suite
//! (`tests/it/escape.rs`) tries each escape for real.
//!
//! Invariants:
//! - every command runs inside bubblewrap with all namespaces unshared
//!   (host network only with `NetworkAccess::Host` on a profile that allows
//!   it; `NetworkAccess::Restricted` keeps the empty namespace and reaches
//!   out only through the gateway's egress proxy, see [`EgressBinding`]),
//!   nested user namespaces disabled, no capabilities, no-new-privs, a
//!   read-only root, an empty environment plus the profile's and request's
//!   variables, and, when the gateway is root, as the unprivileged `run_as`
//!   user; a sandbox never runs as root;
//! - every command runs under the default-deny seccomp filter of its
//!   profile, compiled once per profile at [`Sandbox::new`] (`seccomp`
//!   module); other ABIs are killed;
//! - every command's whole process tree is in its own task cgroup (memory
//!   and swap, pids, CPU bandwidth) before bubblewrap can fork, and the
//!   cgroup is emptied and removed after the run; a profile that needs
//!   cgroups refuses to run without them ([`Sandbox::new`] fails closed,
//!   saying what to change);
//! - bubblewrap itself starts with an empty environment, stdin `/dev/null`,
//!   its own process group and the profile's rlimits (a request can only
//!   lower any limit);
//! - a sandbox's process group is only signalled while its leader is
//!   unreaped, and cgroup members only through pidfds checked to be in the
//!   task cgroup, so a kill can never hit a reused pid; every started
//!   sandbox is reaped, also when the run future is dropped;
//! - bubblewrap is spawned from one thread that lives as long as the
//!   process, with its parent-death signal armed before exec, so a sandbox
//!   dies with the gateway, not with whichever tokio thread started it;
//! - `/workspace` is a fresh size-capped tmpfs per task; the task's host
//!   directory is private (0700) and removed after the run, on every path;
//! - gateway-side file access to a tenant root goes through `cap-std`, so
//!   symlinks planted by commands can never lead outside it;
//! - argv, env and output are never logged above debug level;
//! - `unsafe` lives only in the private `sys` module.
//!
//! Not yet here: bubblewrap arms the parent-death signal
//! of the sandbox's init only after its mount setup (a few ms), so a
//! gateway SIGKILLed inside that window can leave that sandbox running
//! until the next gateway start kills what is left in the dead gateway's
//! task cgroups.

mod cgroup;
mod error;
mod files;
mod host;
// Bench code (`cargo xtask bench`, which turns on the `bench` feature) and
// the unit tests' scratch v2 cgroup; not in the gateway's build.
#[cfg(any(test, feature = "bench"))]
mod join_bench;
// Raw mount syscalls, like `sys`; every block carries its SAFETY note.
mod host_state;
#[allow(unsafe_code)]
mod lean;
mod pool;
mod profile;
mod run;
mod sandbox;
mod seccomp;
mod stub;
#[allow(unsafe_code)]
mod sys;
mod uids;
mod view;

pub use cgroup::CgroupMode;
pub use error::{FileError, SandboxError};
pub use files::FilesRoot;
pub use host::{
    Feature, HostOptions, HostReport, PoolReport, ProfileReport, UidRangeReport, probe_host,
};
pub use host_state::TaskGuard;
#[cfg(feature = "bench")]
pub use join_bench::{JoinLatencies, v2_join_latencies};
pub use pool::{MAX_POOL_SIZE, PoolSettings, PoolStats};
pub use profile::{
    FilesystemPolicy, NetworkPolicy, Profile, ProfileLimits, Profiles, SeccompPolicy,
};
pub use run::{Ending, LimitHits, RunOutcome, adopt_orphans, orphans_reaped};
pub use sandbox::{
    EGRESS_PORT, EgressBinding, Enforcement, RawCommand, RunSpec, Sandbox, SandboxSettings,
};
pub use stub::{EXIT_PROTOCOL, STUB_SUBCOMMAND, stub_main};
pub use uids::UidRange;

#[cfg(test)]
mod tests;
