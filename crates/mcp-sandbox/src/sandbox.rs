//! [`Sandbox`]: turns a [`RunSpec`] and a profile into a bubblewrap command
//! and runs it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_core::{FILES_MOUNT, NetworkAccess, OutputChunk, ResourceLimits, TaskId, WORKSPACE_MOUNT};
use tokio_util::sync::CancellationToken;

use crate::cgroup::{CgroupLimits, CgroupMode, Cgroups, TaskCgroup};
use crate::error::SandboxError;
use crate::host_state::{self, TaskGuard};
use crate::profile::{Profile, Profiles, is_clean_absolute};
use crate::run::{self, Ending, RunLimits, RunOutcome};
use crate::seccomp::{Families, ProfileFilters};
use crate::sys::{self, CgroupJoin, ChildSetup, Rlimits, Spawn};
use crate::uids::{UidPool, UidRange};
use crate::view::{self, Mount, Resolved, View};

/// The sandbox user when the gateway runs as root: `nobody`.
const NOBODY: (u32, u32) = (65534, 65534);
/// The files directory `check` binds at `/files`; not a valid tenant name,
/// so it can never be a tenant's files.
const CHECK_FILES: &str = ".sandbox-check";
/// With a pids cgroup bounding each task, RLIMIT_NPROC (counted per uid,
/// shared by every sandbox of the same user) is only a backstop; set to the
/// task's pids times this, so one task's fork bomb cannot starve the
/// others of the same uid.
const NPROC_BACKSTOP_FACTOR: u64 = 64;

/// Where the egress forwarder binary appears inside a restricted sandbox.
const EGRESS_FORWARDER: &str = "/run/mcp-egress/forward";
/// Where the task's egress proxy socket appears inside a restricted sandbox.
const EGRESS_SOCKET: &str = "/run/mcp-egress/proxy.sock";
/// The loopback port the in-sandbox forwarder listens on.
pub const EGRESS_PORT: u16 = 3128;

/// What a run with `NetworkAccess::Restricted` needs from the gateway: the
/// task's egress proxy, already listening, and the forwarder to run first
/// inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressBinding {
    /// The task's proxy socket on the host (see
    /// [`Sandbox::egress_socket_path`]); bound read-only into the sandbox.
    pub socket: PathBuf,
    /// The binary that runs `mcp_egress::forward` when called with its
    /// `__egress-forward` subcommand (the gateway's own executable); bound
    /// read-only into the sandbox.
    pub forwarder: PathBuf,
}

/// Host-side settings of the sandbox (from the gateway config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// The bubblewrap binary (0.8 or newer).
    pub bwrap: PathBuf,
    /// The (uid, gid) bubblewrap is started as when the gateway runs as
    /// root. `None` keeps the gateway's uid, which is only allowed when the
    /// gateway is not root.
    pub run_as: Option<(u32, u32)>,
    /// Host-side state of running tasks lives here: the egress proxy
    /// sockets of restricted-network tasks. (A sandbox's `/workspace` is a
    /// tmpfs of its own, nothing on the host's disk.)
    pub sockets_dir: PathBuf,
    /// Per-tenant files roots live at `files_root/<tenant>`.
    pub files_root: PathBuf,
    /// Cap per stream (stdout, stderr), both for the stored result and for
    /// the streamed chunks.
    pub max_output_bytes: usize,
}

impl SandboxSettings {
    /// `Some((65534, 65534))` (nobody) when this process runs as root, else
    /// `None`.
    pub fn default_run_as() -> Option<(u32, u32)> {
        (sys::geteuid() == 0).then_some(NOBODY)
    }
}

/// One command to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub task_id: TaskId,
    /// Selects `files_root/<tenant>`; 1-64 of `A-Z a-z 0-9 _ -`.
    pub tenant: String,
    /// Must name a loaded profile.
    pub profile: String,
    /// `argv[0]` is the resolved absolute in-sandbox path
    /// (see [`Sandbox::resolve_command`]).
    pub argv: Vec<String>,
    /// Applied on top of the profile's base environment.
    pub env: BTreeMap<String, String>,
    /// Relative to `/workspace`, no `..`; created if missing.
    pub cwd: String,
    pub timeout: Duration,
    pub network: NetworkAccess,
    /// Can only tighten the profile's limits; 0 means unset.
    pub limits: ResourceLimits,
    /// Absolute in-sandbox paths to hide: a directory becomes an empty
    /// read-only tmpfs, anything else `/dev/null`. Paths that do not exist
    /// in the sandbox are skipped.
    pub denied_paths: Vec<String>,
}

/// Runs commands in bubblewrap sandboxes. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: SandboxSettings,
    profiles: Profiles,
    /// The identity to switch to (and to chown sandbox dirs to); `None`
    /// when the gateway is not root.
    owner: Option<(u32, u32)>,
    /// The compiled seccomp filters, by profile name.
    filters: BTreeMap<String, ProfileFilters>,
    /// This process's task cgroups; `None` when the host offers none (only
    /// profiles with `require_cgroup = false` run then).
    cgroups: Option<&'static Cgroups>,
    /// Each profile's mounts on this host, planned once at [`Sandbox::new`]
    /// (planning stats every bind; it was done per run).
    plans: BTreeMap<String, Vec<Mount>>,
    /// The warm pool, once [`Sandbox::enable_pool`] was called.
    pool: std::sync::OnceLock<Arc<crate::pool::Pool>>,
    /// Per-sandbox uids, once [`Sandbox::set_uid_range`] was called.
    uids: std::sync::OnceLock<Arc<UidPool>>,
    /// The mount namespace bubblewrap starts in (`crate::lean`); `None`
    /// starts it from the gateway's own.
    lean: Option<crate::lean::LeanNs>,
    /// The mount namespace pooled bubblewraps start in, set by
    /// [`Sandbox::cover_stub`] when the pool is enabled: `lean`, or `lean`
    /// plus the stub when that lies outside it; `None` is the gateway's own.
    pool_mnt_ns: std::sync::OnceLock<Option<crate::lean::NsFds>>,
}

/// How this sandbox enforces its profiles on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// The cgroup layout in use, `None` without cgroup limits.
    pub cgroup_mode: Option<CgroupMode>,
    /// The cgroup controllers in use.
    pub cgroup_controllers: Vec<String>,
    /// Where task cgroups are created (`<dir>/<task id>`), one per
    /// hierarchy.
    pub cgroup_dirs: Vec<PathBuf>,
    /// Why there are no cgroup limits, when there are none.
    pub cgroup_unavailable: Option<String>,
}

impl Sandbox {
    /// Checks that bubblewrap is there and executable, that no sandbox would
    /// run as root, that every profile's required binds exist, compiles
    /// each profile's seccomp filter, sets up this process's cgroups and
    /// checks that every profile can be enforced with them, and creates the
    /// sockets and files directories (mode 0711: the sandbox user can
    /// reach its own socket or files directory but list none). Fails closed, with a message
    /// saying what to change, when any profile cannot be enforced here.
    pub fn new(settings: SandboxSettings, profiles: Profiles) -> Result<Sandbox, SandboxError> {
        let executable = std::fs::metadata(&settings.bwrap)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(SandboxError::BwrapMissing {
                path: settings.bwrap.clone(),
            });
        }

        let owner = if sys::geteuid() == 0 {
            match settings.run_as {
                Some((uid, gid)) if uid != 0 && gid != 0 => Some((uid, gid)),
                _ => return Err(SandboxError::RunAsRoot),
            }
        } else {
            if let Some(run_as) = settings.run_as
                && run_as != (sys::geteuid(), sys::getegid())
            {
                tracing::warn!(
                    uid = run_as.0,
                    gid = run_as.1,
                    "run_as ignored: the gateway is not root and cannot switch users"
                );
            }
            None
        };

        let mut problems = Vec::new();
        for p in profiles.iter() {
            for path in &p.filesystem.ro_bind {
                if std::fs::metadata(path).is_err() {
                    problems.push(format!(
                        "{}.toml: filesystem.ro_bind {} does not exist on this host (use ro_bind_try for optional paths)",
                        p.name,
                        path.display()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(SandboxError::BadProfile { problems });
        }

        let mut filters = BTreeMap::new();
        for p in profiles.iter() {
            let f =
                ProfileFilters::build(&p.seccomp.deny).map_err(|reason| SandboxError::Seccomp {
                    profile: p.name.clone(),
                    reason,
                })?;
            filters.insert(p.name.clone(), f);
        }

        let cgroups = Cgroups::for_this_process();
        let mut problems = Vec::new();
        if let Err(reason) = cgroups {
            for p in profiles.iter().filter(|p| p.limits.require_cgroup) {
                problems.push(format!(
                    "profile {:?} needs cgroup limits, but {reason}; run the gateway as root \
                     or in a delegated cgroup v2 subtree (systemd: Delegate=yes) offering \
                     memory, pids and cpu, or set limits.require_cgroup = false in {}.toml \
                     to accept per-process rlimits only",
                    p.name, p.name
                ));
            }
        }
        if !problems.is_empty() {
            return Err(SandboxError::NotEnforceable { problems });
        }

        let mut settings = settings;
        settings.sockets_dir = host_state::ensure_dir(&settings.sockets_dir, 0o711)?;
        settings.files_root = host_state::ensure_dir(&settings.files_root, 0o711)?;
        let plans: BTreeMap<String, Vec<Mount>> = profiles
            .iter()
            .map(|p| (p.name.clone(), view::plan(&p.filesystem)))
            .collect();
        let lean = lean_namespace(&settings, &plans);

        Ok(Sandbox {
            inner: Arc::new(Inner {
                settings,
                profiles,
                owner,
                filters,
                cgroups: cgroups.as_ref().ok(),
                plans,
                pool: std::sync::OnceLock::new(),
                uids: std::sync::OnceLock::new(),
                lean,
                pool_mnt_ns: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Mounts in the namespace bubblewrap starts in, when it is the lean
    /// one (`None`: the gateway's own, whose table every start copies).
    pub fn lean_mounts(&self) -> Option<usize> {
        self.inner.lean.as_ref().map(|l| l.mounts)
    }

    /// How profiles are enforced on this host (for `sandbox check`).
    pub fn enforcement(&self) -> Enforcement {
        match (self.inner.cgroups, Cgroups::for_this_process()) {
            (Some(c), _) => Enforcement {
                cgroup_mode: Some(c.mode()),
                cgroup_controllers: c.controllers(),
                cgroup_dirs: c.dirs(),
                cgroup_unavailable: None,
            },
            (None, Err(reason)) => Enforcement {
                cgroup_mode: None,
                cgroup_controllers: Vec::new(),
                cgroup_dirs: Vec::new(),
                cgroup_unavailable: Some(reason.clone()),
            },
            (None, Ok(_)) => Enforcement {
                cgroup_mode: None,
                cgroup_controllers: Vec::new(),
                cgroup_dirs: Vec::new(),
                cgroup_unavailable: Some("not in use".to_owned()),
            },
        }
    }

    pub fn profiles(&self) -> &Profiles {
        &self.inner.profiles
    }

    /// Gives every sandbox started from now on a uid of its own from
    /// `range` (group: the `run_as` gid, shared by all sandboxes), instead
    /// of the single `run_as` uid. Only when the gateway runs as root; the
    /// range must not contain the `run_as` uid. Set once, before the first
    /// run.
    pub fn set_uid_range(&self, range: UidRange) -> Result<(), SandboxError> {
        let bad = |reason: String| SandboxError::BadUidRange { reason };
        let range = range.validate().map_err(bad)?;
        let Some((uid, _)) = self.inner.owner else {
            return Err(bad(
                "a uid range needs a gateway running as root (it cannot switch users otherwise)"
                    .to_owned(),
            ));
        };
        if range.contains(uid) {
            return Err(bad(format!(
                "the range contains the run_as uid {uid}, which the gateway's own files use"
            )));
        }
        self.inner
            .uids
            .set(UidPool::new(range))
            .map_err(|_| bad("the uid range is already set".to_owned()))
    }

    /// The per-sandbox uid range and how many of its uids are in use.
    pub fn uid_range(&self) -> Option<(UidRange, usize)> {
        self.inner.uids.get().map(|p| (p.range(), p.in_use()))
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.inner.settings
    }

    /// `profile`'s planned mounts.
    fn plan(&self, profile: &Profile) -> &[Mount] {
        self.inner
            .plans
            .get(&profile.name)
            .map_or(&[], Vec::as_slice)
    }

    /// A task's per-process rlimits on this host ([`effective_limits`]),
    /// for a cold sandbox and for the order of a pooled one alike.
    /// RLIMIT_NPROC counts every process of the uid: when a task cgroup
    /// holds the real pids limit and the uid is shared with other
    /// sandboxes (no uid range), it is only a backstop.
    pub(crate) fn task_rlimits(&self, profile: &Profile, spec: &RunSpec) -> Rlimits {
        let mut rlimits = effective_limits(profile, &spec.limits, spec.timeout);
        let own_uid = self.inner.uids.get().is_some() && self.inner.owner.is_some();
        if self.inner.cgroups.is_some() && !own_uid {
            rlimits.nproc = rlimits.nproc.saturating_mul(NPROC_BACKSTOP_FACTOR);
        }
        rlimits
    }

    /// The warm pool, if enabled.
    pub(crate) fn pool(&self) -> Option<&Arc<crate::pool::Pool>> {
        self.inner.pool.get()
    }

    /// Enables the warm pool (once; a second call fails).
    pub(crate) fn set_pool(&self, pool: Arc<crate::pool::Pool>) -> bool {
        self.inner.pool.set(pool).is_ok()
    }

    /// Chooses where pooled bubblewraps start: the pool's `stub` must be
    /// visible there, because bubblewrap resolves `--ro-bind-fd` to the
    /// file's path. When it lies outside the lean namespace, pooled
    /// sandboxes get one that also holds it.
    pub(crate) fn cover_stub(&self, stub: &Path) {
        let ns = self.inner.lean.as_ref().and_then(|lean| {
            let path = std::fs::canonicalize(stub).ok()?;
            if lean.holds(&path) {
                return Some(lean.fds.clone());
            }
            let mut sources = lean.roots().to_vec();
            sources.push(path);
            match crate::lean::build(&sources) {
                Ok(ns) => Some(ns.fds),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot add the pool's stub to the lean mount namespace; pooled \
                         sandboxes start from the host's mount table"
                    );
                    None
                }
            }
        });
        let _ = self.inner.pool_mnt_ns.set(ns);
    }

    /// Really runs `true` in every profile's sandbox, with its seccomp
    /// filter, cgroup and limits; used at startup. The error names the
    /// profile and says what to install or fix.
    pub async fn check(&self) -> Result<(), SandboxError> {
        for name in self.inner.profiles.names() {
            self.check_profile(name).await?;
        }
        Ok(())
    }

    /// Really runs `true` in profile `name`'s sandbox.
    pub async fn check_profile(&self, name: &str) -> Result<(), SandboxError> {
        let Some(argv0) = self.resolve_command(name, "true") else {
            return Err(SandboxError::Check {
                profile: name.to_owned(),
                exit_code: -1,
                stderr: "`true` is not on the profile's PATH".to_owned(),
            });
        };
        let spec = RunSpec {
            task_id: TaskId::new(),
            tenant: CHECK_FILES.to_owned(),
            profile: name.to_owned(),
            argv: vec![argv0],
            env: BTreeMap::new(),
            cwd: String::new(),
            timeout: Duration::from_secs(30),
            network: NetworkAccess::None,
            limits: ResourceLimits::default(),
            denied_paths: Vec::new(),
        };
        let outcome = self
            .run_unchecked(spec, None, &|_| {}, CancellationToken::new())
            .await?;
        match outcome.ending {
            Ending::Exited(0) => Ok(()),
            _ => Err(SandboxError::Check {
                profile: name.to_owned(),
                exit_code: outcome.result.exit_code,
                stderr: String::from_utf8_lossy(&outcome.result.stderr)
                    .chars()
                    .take(2048)
                    .collect::<String>()
                    .trim()
                    .to_owned(),
            }),
        }
    }

    /// Finds `command` as the profile's sandbox would: a bare name is looked
    /// up on the profile's `PATH` (through its binds and symlinks), and the
    /// in-sandbox path of the first executable regular file is returned; an
    /// absolute path is returned if it is an executable file in the
    /// sandbox. Relative paths with a `/` (`./x.sh`) give `None`: they
    /// depend on the workspace, which does not exist yet. Files under
    /// `/workspace` and `/files` are not found either, for the same reason.
    pub fn resolve_command(&self, profile: &str, command: &str) -> Option<String> {
        let profile = self.inner.profiles.get(profile)?;
        if command.is_empty() || command.contains('\0') {
            return None;
        }
        let view = View::of_profile(self.plan(profile));
        let is_exec = |p: &str| {
            matches!(view.resolve(Path::new(p)),
                Resolved::File(_, m) if m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if command.contains('/') {
            return (is_clean_absolute(command) && is_exec(command)).then(|| command.to_owned());
        }
        if command == "." || command == ".." {
            return None;
        }
        let path = profile.env.get("PATH")?;
        path.split(':')
            .map(|dir| format!("{}/{command}", dir.trim_end_matches('/')))
            .find(|candidate| is_exec(candidate))
    }

    /// Runs `spec` to completion: live output goes to `on_output` (capped
    /// per stream, plus one `Event` chunk per truncated stream; no
    /// `ExitCode` chunk), the sandbox is killed on timeout or when `cancel`
    /// fires, and its cgroup is emptied and removed afterwards. A non-zero exit,
    /// timeout or cancellation is an `Ok` outcome.
    pub async fn run(
        &self,
        spec: RunSpec,
        on_output: &(dyn Fn(OutputChunk) + Send + Sync),
        cancel: CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        check_tenant(&spec.tenant)?;
        self.run_unchecked(spec, None, on_output, cancel).await
    }

    /// Like [`Sandbox::run`]; a spec with `NetworkAccess::Restricted` needs
    /// `egress`: the command then runs under the in-sandbox forwarder with
    /// `HTTP(S)_PROXY`/`ALL_PROXY` pointing at it, in an otherwise empty
    /// network namespace.
    pub async fn run_with_egress(
        &self,
        spec: RunSpec,
        egress: Option<EgressBinding>,
        on_output: &(dyn Fn(OutputChunk) + Send + Sync),
        cancel: CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        check_tenant(&spec.tenant)?;
        self.run_unchecked(spec, egress, on_output, cancel).await
    }

    /// Like [`Sandbox::run`] (no egress), but the command waits for `gate`:
    /// the sandbox is set up while the gate is pending (task cgroup,
    /// namespaces, mounts: bubblewrap stops right before it loads
    /// the seccomp filter and executes the command), the command runs once
    /// `gate` yields true, and the sandbox is killed and removed without
    /// running anything when it yields false (`Ok(None)`). The gateway
    /// stores a task's approval and its audit record while its sandbox
    /// starts, instead of before. A profile with a warm pool waits for the
    /// gate first, then claims a pooled sandbox as `run` does; so does a
    /// host without cgroups.
    ///
    /// A gateway that dies before the gate opens never releases the
    /// command (see [`sys::gate_pipe`]); the waiting sandbox lives on in
    /// its task cgroup until the next gateway sweeps it.
    pub async fn run_gated(
        &self,
        spec: RunSpec,
        gate: impl Future<Output = bool> + Send,
        on_output: &(dyn Fn(OutputChunk) + Send + Sync),
        cancel: CancellationToken,
    ) -> Result<Option<RunOutcome>, SandboxError> {
        check_tenant(&spec.tenant)?;
        let pooled = self
            .inner
            .pool
            .get()
            .is_some_and(|p| p.serves(&spec.profile));
        // Without a task cgroup, a sandbox left waiting by a gateway that
        // died could not be found and killed by the next one (bubblewrap
        // drops its parent-death signal while it sets up), so it starts
        // only after the gate, as before.
        let pipe = if pooled || self.inner.cgroups.is_none() {
            None
        } else {
            sys::gate_pipe()
                .inspect_err(
                    |e| tracing::debug!(error = %e, "no gate pipe; starting after the gate"),
                )
                .ok()
        };
        let Some((writer, reader)) = pipe else {
            if !gate.await {
                return Ok(None);
            }
            return self
                .run_unchecked(spec, None, on_output, cancel)
                .await
                .map(Some);
        };
        let span = run_span(&spec);
        let max_output = self.inner.settings.max_output_bytes;
        let this = self.clone();
        let fut = async move {
            let (cmd, guard, limits) = this.build_off_runtime(spec, None, Some(reader)).await?;
            let held = run::Held::new(run::start(cmd).await?, guard);
            if !gate.await {
                // Killed and reaped; bubblewrap never got past --block-fd.
                drop(held);
                return Ok(None);
            }
            let started = Instant::now();
            if let Err(e) = sys::open_gate(&writer) {
                // bubblewrap is gone (its setup failed): supervising it
                // reports how it ended, as for a cold start.
                tracing::debug!(error = %e, "cannot open the gate of a sandbox");
            }
            drop(writer);
            let (child, guard) = held.into_parts();
            run::supervise(child, guard, limits, max_output, on_output, cancel, started)
                .await
                .map(Some)
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// Where the egress proxy socket of task `task` goes on the host: in
    /// the sockets directory (0711), which the sandbox user can
    /// traverse but not list.
    pub fn egress_socket_path(&self, task: TaskId) -> PathBuf {
        self.inner
            .settings
            .sockets_dir
            .join(format!("{task}.egress.sock"))
    }

    async fn run_unchecked(
        &self,
        spec: RunSpec,
        egress: Option<EgressBinding>,
        on_output: &(dyn Fn(OutputChunk) + Send + Sync),
        cancel: CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        let span = run_span(&spec);
        let max_output = self.inner.settings.max_output_bytes;
        let this = self.clone();
        let fut = async move {
            if let Some(pool) = this.inner.pool.get() {
                let pooled = pool.try_run(&this, &spec, on_output, &cancel).await;
                if let Some(outcome) = pooled {
                    return outcome;
                }
            }
            let (cmd, guard, limits) = this.build_off_runtime(spec, egress, None).await?;
            run::execute(cmd, guard, limits, max_output, on_output, cancel).await
        };
        tracing::Instrument::instrument(fut, span).await
    }

    /// [`Sandbox::build_with`] (no warm parts) on the blocking pool.
    async fn build_off_runtime(
        &self,
        spec: RunSpec,
        egress: Option<EgressBinding>,
        block: Option<OwnedFd>,
    ) -> Result<(Spawn, TaskGuard, RunLimits), SandboxError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build_with(&spec, egress.as_ref(), None, block))
            .await
            .map_err(|e| SandboxError::Spawn {
                source: std::io::Error::other(e),
            })?
    }

    /// Exactly the bubblewrap command `run` would spawn for `spec` (same
    /// argv, environment, uid, rlimits, seccomp filter, cgroup, stdio),
    /// started the same way by [`RawCommand::output`], with the task's host
    /// directory and cgroup prepared; for benchmarks. The guard kills what
    /// is left in the cgroup and removes it and the directory on drop.
    /// `output` blocks its thread until the command ended, so bwrap's
    /// `--die-with-parent` (which fires when the spawning *thread* exits)
    /// cannot cut it short. Limits that need watching (timeout, CPU time)
    /// are the caller's business.
    pub fn raw_command(&self, spec: &RunSpec) -> Result<(RawCommand, TaskGuard), SandboxError> {
        check_tenant(&spec.tenant)?;
        self.build(spec, None)
            .map(|(cmd, guard, _)| (RawCommand(cmd), guard))
    }

    /// Validates `spec`, prepares the task cgroup and the tenant's files
    /// dir, and builds the bubblewrap command. Blocking (filesystem
    /// work).
    fn build(
        &self,
        spec: &RunSpec,
        egress: Option<&EgressBinding>,
    ) -> Result<(Spawn, TaskGuard, RunLimits), SandboxError> {
        self.build_with(spec, egress, None, None)
    }

    /// [`Sandbox::build`], or with `warm` the command of a pooled sandbox:
    /// the stub bound at [`crate::stub::STUB_PATH`] and the control channel
    /// as stdin; with `block` the command waits for a byte on it
    /// (bubblewrap's `--block-fd`, see [`sys::gate_pipe`]).
    pub(crate) fn build_with(
        &self,
        spec: &RunSpec,
        egress: Option<&EgressBinding>,
        warm: Option<crate::pool::WarmParts>,
        block: Option<OwnedFd>,
    ) -> Result<(Spawn, TaskGuard, RunLimits), SandboxError> {
        let settings = &self.inner.settings;
        let profile =
            self.inner
                .profiles
                .get(&spec.profile)
                .ok_or_else(|| SandboxError::UnknownProfile {
                    name: spec.profile.clone(),
                })?;
        let share_net = match spec.network {
            NetworkAccess::None => false,
            NetworkAccess::Host if profile.network.allow_host => true,
            NetworkAccess::Host => {
                return Err(SandboxError::NetworkNotAllowed {
                    profile: profile.name.clone(),
                });
            }
            // Still an empty namespace: the egress proxy is the only way out.
            NetworkAccess::Restricted if profile.network.allow_restricted && egress.is_some() => {
                false
            }
            NetworkAccess::Restricted if profile.network.allow_restricted => {
                return Err(SandboxError::Unsupported {
                    what: "network access \"restricted\" without an egress proxy".to_owned(),
                });
            }
            NetworkAccess::Restricted => {
                return Err(SandboxError::NetworkNotAllowed {
                    profile: profile.name.clone(),
                });
            }
        };
        match spec.argv.first() {
            Some(a) if a.starts_with('/') => {}
            other => {
                return Err(SandboxError::BadArgv {
                    argv0: other.cloned().unwrap_or_default(),
                });
            }
        }
        let cwd_ok = !spec.cwd.starts_with('/')
            && is_clean_absolute(&format!("/{}", spec.cwd.trim_end_matches('/')));
        if !(spec.cwd.is_empty() || cwd_ok) {
            return Err(SandboxError::BadCwd {
                cwd: spec.cwd.clone(),
            });
        }
        for p in &spec.denied_paths {
            if !is_clean_absolute(p) || p == "/" {
                return Err(SandboxError::BadDeniedPath {
                    path: p.clone(),
                    reason: "it must be a clean absolute path other than /".to_owned(),
                });
            }
        }

        // With a uid range, this sandbox's own uid (in the shared sandbox
        // group), held until its host state is torn down.
        let lease = match (self.inner.uids.get(), self.inner.owner) {
            (Some(pool), Some(_)) => Some(pool.lease().ok_or(SandboxError::UidsExhausted {
                count: pool.range().count,
            })?),
            _ => None,
        };
        let owner = match (&lease, self.inner.owner) {
            (Some(l), Some((_, gid))) => Some((l.uid(), gid)),
            _ => self.inner.owner,
        };
        let task = spec.task_id.to_string();
        let mut guard = TaskGuard::default();
        let files = match (&lease, self.inner.owner) {
            (Some(_), Some(run_as)) => {
                host_state::ensure_shared_dir(&settings.files_root, &spec.tenant, run_as)?
            }
            _ => host_state::ensure_owned_dir(&settings.files_root, &spec.tenant, owner)?,
        };
        if let Some(l) = lease {
            guard.set_uid_lease(l);
        }

        let rlimits = self.task_rlimits(profile, spec);
        let mut cgroup = CgroupJoin::None;
        match self.inner.cgroups {
            Some(cgroups) => {
                let limits = cgroup_limits(profile, &spec.limits);
                let cgroup_err = |(path, source)| SandboxError::Cgroup { path, source };
                let cg = TaskCgroup::create(cgroups, &task, &limits).map_err(cgroup_err)?;
                let joined = cg.join();
                guard.set_cgroup(cg);
                cgroup = joined.map_err(cgroup_err)?;
            }
            None if profile.limits.require_cgroup => {
                return Err(SandboxError::NotEnforceable {
                    problems: vec![format!(
                        "profile {:?} needs cgroup limits, which this host does not offer",
                        profile.name
                    )],
                });
            }
            None => {}
        }

        // Restricted runs need AF_INET for the forwarder and the command's
        // proxy connections; the namespace holds only loopback.
        let egress = egress.filter(|_| spec.network == NetworkAccess::Restricted);
        let families = if share_net || profile.network.loopback || egress.is_some() {
            Families::WithInet
        } else {
            Families::UnixOnly
        };
        let bpf = self
            .inner
            .filters
            .get(&profile.name)
            .map(|f| f.get(families))
            .ok_or_else(|| SandboxError::Seccomp {
                profile: profile.name.clone(),
                reason: "no compiled filter".to_owned(),
            })?;
        let seccomp = sys::sealed_memfd(c"mcp-sandbox-seccomp", bpf)
            .map_err(|source| SandboxError::Spawn { source })?;

        let mounts = self.plan(profile);
        // The sandbox view (a copy of every mount) is only needed to
        // resolve denied paths; most runs have none.
        let masks = if spec.denied_paths.is_empty() {
            Vec::new()
        } else {
            let view = View::of_profile(mounts).with_fixed(&files);
            denied_masks(&view, &spec.denied_paths)?
        };
        let mut env = merged_env(profile, &spec.env);
        let argv = match egress {
            Some(_) => {
                // Set last: the request cannot point the proxy elsewhere.
                let http = format!("http://127.0.0.1:{EGRESS_PORT}");
                let socks = format!("socks5h://127.0.0.1:{EGRESS_PORT}");
                for (k, v) in [
                    ("HTTP_PROXY", &http),
                    ("http_proxy", &http),
                    ("HTTPS_PROXY", &http),
                    ("https_proxy", &http),
                    ("ALL_PROXY", &socks),
                    ("all_proxy", &socks),
                    ("NO_PROXY", &String::new()),
                    ("no_proxy", &String::new()),
                ] {
                    env.insert(k.to_owned(), v.clone());
                }
                let fwd = mcp_egress::forward::ForwardArgs {
                    socket: PathBuf::from(EGRESS_SOCKET),
                    port: EGRESS_PORT,
                    argv: spec.argv.iter().map(OsString::from).collect(),
                };
                std::iter::once(EGRESS_FORWARDER.to_owned())
                    .chain(
                        fwd.to_args()
                            .into_iter()
                            .map(|a| a.to_string_lossy().into_owned()),
                    )
                    .collect()
            }
            None => spec.argv.clone(),
        };
        let args = bwrap_args(&BwrapArgs {
            mounts,
            share_net,
            tmp_size: profile.filesystem.tmp_size_bytes,
            workspace_size: profile.filesystem.workspace_size_bytes,
            seccomp_fd: seccomp.as_raw_fd(),
            files: &files,
            masks: &masks,
            cwd: &spec.cwd,
            env,
            egress,
            argv: &argv,
        });
        tracing::debug!(?args, "bwrap command");
        // The options (request env values, host paths) reach bwrap through a
        // sealed memfd, not its argv: argv is readable by every host user
        // (`ps`) and by the sandbox itself (/proc/1/cmdline). bwrap takes
        // the command itself only from argv, after `--`; it is visible in
        // the command's own /proc/<pid>/cmdline anyway.
        // The `--` that bwrap_args puts right before the command (an env
        // value may be "--" too, so it is found from the end).
        let split = args
            .len()
            .checked_sub(argv.len() + 1)
            .filter(|i| args.get(*i).is_some_and(|a| a == "--"))
            .ok_or_else(|| SandboxError::BadArgv {
                argv0: spec.argv.first().cloned().unwrap_or_default(),
            })?;
        let (options, command) = args.split_at(split);
        let mut blob = Vec::new();
        if let Some(b) = &block {
            let fd = b.as_raw_fd().to_string();
            for a in ["--block-fd", &fd] {
                blob.extend_from_slice(a.as_bytes());
                blob.push(0);
            }
        }
        if let Some(w) = &warm {
            let fd = w.stub.as_raw_fd().to_string();
            for a in ["--ro-bind-fd", &fd, crate::stub::STUB_PATH] {
                blob.extend_from_slice(a.as_bytes());
                blob.push(0);
            }
        }
        for a in options {
            if a.as_encoded_bytes().contains(&0) {
                return Err(SandboxError::NulByte);
            }
            blob.extend_from_slice(a.as_encoded_bytes());
            blob.push(0);
        }
        let args_fd = sys::sealed_memfd(c"mcp-sandbox-args", &blob)
            .map_err(|source| SandboxError::Spawn { source })?;
        let args_fd_no = args_fd.as_raw_fd().to_string();

        let mut inherit = vec![seccomp, args_fd];
        inherit.extend(block);
        let mut stdin = None;
        let pooled = warm.is_some();
        if let Some(w) = warm {
            stdin = Some(w.control);
            inherit.push(w.stub);
        }
        let run_limits = RunLimits {
            timeout: spec.timeout,
            cpu_time: profile.limits.cpu_time_secs.map(Duration::from_secs),
            rlimit_cpu_secs: rlimits.cpu_secs,
        };
        let setup = ChildSetup {
            limits: rlimits,
            cgroup,
            inherit,
        };
        let mut bwrap_argv = vec![OsString::from("--args"), args_fd_no.into()];
        bwrap_argv.extend_from_slice(command);
        let mut cmd =
            Spawn::new(&settings.bwrap, &bwrap_argv, setup).map_err(|_| SandboxError::NulByte)?;
        cmd.stdin = stdin;
        // Supplementary groups are dropped when root switches uid.
        cmd.owner = owner;
        let ns = if pooled {
            self.inner.pool_mnt_ns.get().cloned().flatten()
        } else {
            // An egress forwarder outside the lean namespace (a gateway
            // binary replaced on disk) is bound from the gateway's own view.
            self.inner
                .lean
                .as_ref()
                .filter(|ns| egress.is_none_or(|e| ns.holds(&e.forwarder) && ns.holds(&e.socket)))
                .map(|ns| ns.fds.clone())
        };
        if let Some(ns) = ns {
            cmd.mnt_ns = Some(ns.mnt);
            cmd.user_ns = ns.user;
        }
        Ok((cmd, guard, run_limits))
    }
}

/// The lean mount namespace for these profiles (see `crate::lean`), or
/// `None`, with a warning, when it cannot be built: sandboxes then start
/// from the gateway's own mount table, slower but the same.
fn lean_namespace(
    settings: &SandboxSettings,
    plans: &BTreeMap<String, Vec<Mount>>,
) -> Option<crate::lean::LeanNs> {
    let mut sources: Vec<PathBuf> = plans
        .values()
        .flatten()
        .flat_map(|m| match m {
            Mount::Bind { path, host, .. } => vec![path.clone(), host.clone()],
            Mount::Symlink { .. } => Vec::new(),
        })
        .collect();
    sources.extend([
        settings.sockets_dir.clone(),
        settings.files_root.clone(),
        settings.bwrap.clone(),
    ]);
    // The egress forwarder is the gateway's own executable.
    sources.extend(std::env::current_exe().ok());
    match crate::lean::build(&sources).and_then(|ns| enter_check(&settings.bwrap, ns)) {
        Ok(ns) => {
            tracing::debug!(
                mounts = ns.mounts,
                user_namespace = ns.fds.user.is_some(),
                "sandboxes start in a lean mount namespace"
            );
            Some(ns)
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot prepare the lean mount namespace; sandboxes start from the host's \
                 mount table (slower, same isolation)"
            );
            None
        }
    }
}

/// `ns` if a spawn can enter it and execute bubblewrap there (`bwrap
/// --version`): a host that lets the gateway build namespaces but not
/// enter them (a seccomp filter on `setns`) keeps the host's table rather
/// than failing every sandbox.
fn enter_check(bwrap: &Path, ns: crate::lean::LeanNs) -> std::io::Result<crate::lean::LeanNs> {
    let mut probe = Spawn::new(bwrap, ["--version"], ChildSetup::none())?;
    probe.mnt_ns = Some(Arc::clone(&ns.fds.mnt));
    probe.user_ns = ns.fds.user.clone();
    let out = sys::output(probe)?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "bubblewrap does not run in it: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(ns)
}

/// A prepared bubblewrap command from [`Sandbox::raw_command`].
#[derive(Debug)]
pub struct RawCommand(Spawn);

impl RawCommand {
    /// Starts it from the calling thread, reads its stdout and stderr to
    /// their ends and reaps it. Blocking.
    pub fn output(self) -> std::io::Result<std::process::Output> {
        sys::output(self.0)
    }
}

fn check_tenant(tenant: &str) -> Result<(), SandboxError> {
    if is_valid_tenant(tenant) {
        Ok(())
    } else {
        Err(SandboxError::BadTenant {
            tenant: tenant.chars().take(80).collect(),
        })
    }
}

/// `[A-Za-z0-9_-]{1,64}`: safe as a single path component.
pub(crate) fn is_valid_tenant(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn tighten(p: u64, r: u64) -> u64 {
    if r == 0 { p } else { p.min(r) }
}

/// The per-process rlimits: the profile's limits, lowered by the request
/// where it set a value. RLIMIT_CPU is the CPU-time limit or the timeout,
/// whichever is lower, plus a second (the task-wide CPU-time limit is
/// watched through the cgroup; this is the per-process backstop).
pub(crate) fn effective_limits(
    profile: &Profile,
    req: &ResourceLimits,
    timeout: Duration,
) -> Rlimits {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let secs = profile.limits.cpu_time_secs.map_or(secs, |c| c.min(secs));
    Rlimits {
        address_space: tighten(profile.limits.memory_bytes, req.memory_bytes),
        nproc: tighten(profile.limits.pids, u64::from(req.pids)),
        nofile: profile.limits.nofile,
        fsize: profile.limits.fsize_bytes,
        cpu_secs: secs.saturating_add(1),
    }
}

/// The task cgroup's limits: the profile's, lowered by the request where it
/// set a value (`cpu_limit` in cores, `io_weight`).
pub(crate) fn cgroup_limits(profile: &Profile, req: &ResourceLimits) -> CgroupLimits {
    let req_cpu = (req.cpu_limit.is_finite() && req.cpu_limit > 0.0).then(|| {
        // Clamped to a sane range first, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let m = (f64::from(req.cpu_limit).clamp(0.001, 1.0e6) * 1000.0).round() as u64;
        m.max(1)
    });
    let cpu_millicores = match (profile.limits.cpu_millicores, req_cpu) {
        (Some(p), Some(r)) => Some(p.min(r)),
        (p, r) => p.or(r),
    };
    let req_io = (req.io_weight > 0).then_some(req.io_weight.min(10_000));
    let io_weight = match (profile.limits.io_weight, req_io) {
        (Some(p), Some(r)) => Some(p.min(r)),
        (p, r) => p.or(r),
    };
    CgroupLimits {
        memory_bytes: tighten(profile.limits.memory_bytes, req.memory_bytes),
        pids: tighten(profile.limits.pids, u64::from(req.pids)),
        cpu_millicores,
        io_weight,
    }
}

/// The profile's base env with the request's env on top.
pub(crate) fn merged_env(
    profile: &Profile,
    req: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = profile.env.clone();
    env.extend(req.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// How one denied path is hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mask {
    Dir(PathBuf),
    File(PathBuf),
}

/// Resolves each denied path in the sandbox view. The mask goes on the
/// resolved path (symlinks followed in sandbox space), so `/bin/sh` masks
/// `/usr/bin/sh` and no alias of it stays readable.
fn denied_masks(view: &View, denied: &[String]) -> Result<Vec<Mask>, SandboxError> {
    let mut masks = Vec::new();
    for p in denied {
        match view.resolve(Path::new(p)) {
            Resolved::Dir(at) if at == Path::new("/") => {
                return Err(SandboxError::BadDeniedPath {
                    path: p.clone(),
                    reason: "it resolves to the sandbox root".to_owned(),
                });
            }
            Resolved::Dir(at) => masks.push(Mask::Dir(at)),
            Resolved::File(at, _) => masks.push(Mask::File(at)),
            Resolved::Opaque(at) => {
                return Err(SandboxError::BadDeniedPath {
                    path: p.clone(),
                    reason: format!(
                        "{} is under /proc or /dev, which cannot be masked",
                        at.display()
                    ),
                });
            }
            Resolved::Missing => {
                tracing::debug!(path = %p, "denied path does not exist in the sandbox");
            }
        }
    }
    Ok(masks)
}

pub(crate) struct BwrapArgs<'a> {
    pub(crate) mounts: &'a [Mount],
    pub(crate) share_net: bool,
    pub(crate) tmp_size: u64,
    pub(crate) workspace_size: u64,
    /// The descriptor bubblewrap reads the seccomp BPF program from.
    pub(crate) seccomp_fd: i32,
    pub(crate) files: &'a Path,
    pub(crate) masks: &'a [Mask],
    pub(crate) cwd: &'a str,
    pub(crate) env: BTreeMap<String, String>,
    /// Restricted network: the proxy socket and the forwarder to bind.
    pub(crate) egress: Option<&'a EgressBinding>,
    pub(crate) argv: &'a [String],
}

/// The full bubblewrap argv (without the binary).
pub(crate) fn bwrap_args(a: &BwrapArgs<'_>) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        v.extend(items.iter().map(|i| i.as_ref().to_os_string()));
    };
    push(&[
        &"--unshare-all",
        // Explicit so bwrap fails instead of running without a user
        // namespace, and so --disable-userns is allowed.
        &"--unshare-user",
        &"--disable-userns",
        &"--die-with-parent",
        &"--new-session",
        &"--clearenv",
        &"--cap-drop",
        &"ALL",
        &"--hostname",
        &"sandbox",
    ]);
    if a.share_net {
        push(&[&"--share-net"]);
    }
    for m in a.mounts {
        match m {
            Mount::Bind { path, required, .. } => {
                let flag = if *required {
                    "--ro-bind"
                } else {
                    "--ro-bind-try"
                };
                push(&[&flag, path, path]);
            }
            Mount::Symlink { path, target } => push(&[&"--symlink", target, path]),
        }
    }
    let tmp_size = a.tmp_size.to_string();
    let ws_size = a.workspace_size.to_string();
    let cwd = if a.cwd.is_empty() {
        WORKSPACE_MOUNT.to_owned()
    } else {
        format!("{WORKSPACE_MOUNT}/{}", a.cwd.trim_end_matches('/'))
    };
    push(&[
        &"--proc",
        &"/proc",
        &"--dev",
        &"/dev",
        // POSIX shared memory stays writable when /dev is made read-only.
        &"--size",
        &tmp_size,
        &"--tmpfs",
        &"/dev/shm",
        &"--size",
        &tmp_size,
        &"--tmpfs",
        &"/tmp",
        // The workspace lives and dies with the sandbox: a size-capped
        // tmpfs (charged to the task's memory cgroup) cannot fill the
        // host's disk.
        &"--perms",
        &"0700",
        &"--size",
        &ws_size,
        &"--tmpfs",
        &WORKSPACE_MOUNT,
        &"--bind",
        &a.files,
        &FILES_MOUNT,
    ]);
    let mut dir = WORKSPACE_MOUNT.to_owned();
    for part in a.cwd.split('/').filter(|p| !p.is_empty()) {
        dir.push('/');
        dir.push_str(part);
        push(&[&"--dir", &dir]);
    }
    for m in a.masks {
        match m {
            Mask::Dir(p) => push(&[&"--tmpfs", p, &"--remount-ro", p]),
            Mask::File(p) => push(&[&"--ro-bind", &"/dev/null", p]),
        }
    }
    if let Some(e) = a.egress {
        push(&[
            &"--ro-bind",
            &e.forwarder,
            &EGRESS_FORWARDER,
            &"--ro-bind",
            &e.socket,
            &EGRESS_SOCKET,
        ]);
    }
    // bwrap's root and /dev are tmpfs mounts: without this a command
    // could fill them (in memory) and plant files in /, /etc or /dev.
    // Only /workspace, /tmp, /dev/shm and /files stay writable.
    push(&[&"--remount-ro", &"/dev", &"--remount-ro", &"/"]);
    push(&[&"--chdir", &cwd]);
    for (k, val) in &a.env {
        push(&[&"--setenv", k, val]);
    }
    let seccomp_fd = a.seccomp_fd.to_string();
    push(&[&"--seccomp", &seccomp_fd]);
    push(&[&"--"]);
    for arg in a.argv {
        push(&[arg]);
    }
    v
}

/// The span of one sandbox run.
fn run_span(spec: &RunSpec) -> tracing::Span {
    tracing::info_span!(
        "sandbox.run",
        task_id = %spec.task_id,
        profile = %spec.profile
    )
}
