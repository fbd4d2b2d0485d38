//! The only crate of mcp-security-gateway that spawns processes.
//!
//! It turns a sandbox profile (`sandbox-profiles/*.toml`, see [`Profiles`])
//! and a [`RunSpec`] into a bubblewrap command, runs it with rlimits, streams
//! its capped output, enforces timeout and cancellation, reaps it with
//! resource usage and removes its workspace ([`Sandbox`]). It also owns the
//! gateway's own file operations on tenant files roots ([`FilesRoot`]).
//!
//! Invariants:
//! - every command runs inside bubblewrap with all namespaces unshared
//!   (network only with `NetworkAccess::Host` on a profile that allows it),
//!   no capabilities, an empty environment plus the profile's and request's
//!   variables, and, when the gateway is root, as the unprivileged `run_as`
//!   user; a sandbox never runs as root;
//! - bubblewrap itself starts with an empty environment, stdin `/dev/null`,
//!   its own process group and the profile's rlimits (a request can only
//!   lower them);
//! - a sandbox's process group is only signalled while its leader is
//!   unreaped, so a kill can never hit a reused pid; every started sandbox
//!   is reaped, also when the run future is dropped;
//! - bubblewrap is spawned from one thread that lives as long as the
//!   process, with its parent-death signal armed before exec, so a sandbox
//!   dies with the gateway, not with whichever tokio thread started it;
//! - a per-task workspace is fresh, private (0700) and removed after the
//!   run, on every path;
//! - gateway-side file access to a tenant root goes through `cap-std`, so
//!   symlinks planted by commands can never lead outside it;
//! - argv, env and output are never logged above debug level;
//! - `unsafe` lives only in the private `sys` module.
//!
//! Not yet here (later issues): seccomp filters, cgroup limits (CPU share,
//! I/O weight, per-sandbox pids and memory), restricted network access.
//! Until cgroups land, one gap remains: bubblewrap arms the parent-death
//! signal of the sandbox's init only after its mount setup (a few ms), so a
//! gateway that crashes inside that window can leave that sandbox running;
//! the service manager's cgroup kill (systemd `KillMode=control-group`)
//! covers it.

mod error;
mod files;
mod profile;
mod run;
mod sandbox;
#[allow(unsafe_code)]
mod sys;
mod view;
mod workspace;

pub use error::{FileError, SandboxError};
pub use files::FilesRoot;
pub use profile::{FilesystemPolicy, NetworkPolicy, Profile, ProfileLimits, Profiles};
pub use run::{Ending, RunOutcome};
pub use sandbox::{RunSpec, Sandbox, SandboxSettings};
pub use workspace::WorkspaceGuard;

#[cfg(test)]
mod tests;
