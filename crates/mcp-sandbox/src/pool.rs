//! The warm pool: pre-started sandboxes, per (profile, tenant), each
//! waiting on its control channel for the one approved command it will
//! execute (see [`crate::stub`]).
//!
//! Invariants:
//! - a pooled sandbox is started exactly as a cold one for the same profile
//!   and tenant (same bwrap options, seccomp filter, task cgroup, rlimits,
//!   parent-death signal, spawner threads), plus the stub bound read-only
//!   and the channel as stdin; only its command comes later;
//! - it serves exactly one task, of the tenant it was started for, and is
//!   destroyed after it (its pid namespace, tmpfs workspace and cgroup go
//!   with it); the pool refills in the background;
//! - it is only used when the task needs nothing the sandbox was not
//!   started with: no network, no denied paths, the profile's cgroup
//!   limits; the task's rlimits (which can only be lower) are applied by
//!   the stub before exec; anything else runs cold;
//! - the order is sent only from [`Sandbox::run`], after the policy
//!   approved the task; a sandbox whose channel fails is killed, never
//!   reused;
//! - per-tenant pools fill lazily, after a tenant's first request, and all
//!   pools together hold at most `max_total` sandboxes (least recently
//!   used pools give theirs up first).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mcp_core::{NetworkAccess, OutputChunk, ResourceLimits, TaskId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::SandboxError;
use crate::profile::{Profile, Profiles, is_clean_absolute};
use crate::run::{self, RunLimits, RunOutcome};
use crate::sandbox::{RunSpec, Sandbox, cgroup_limits, is_valid_tenant, merged_env};
use crate::stub::{self, Order, READY, STUB_PATH};
use crate::sys;

/// How long a new pooled sandbox may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long sending an order may take (the stub is blocked reading it).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed start, a pool waits this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The wall-clock timeout a waiting sandbox is started with: it bounds its
/// RLIMIT_CPU, which the stub lowers to the task's before exec.
const WARM_TIMEOUT: Duration = Duration::from_secs(u32::MAX as u64);
/// Upper bound of a pool's size per (profile, tenant).
pub const MAX_POOL_SIZE: usize = 64;

/// Warm pool settings (from the gateway config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Pre-started sandboxes per (profile, tenant), by profile name; a
    /// profile not listed (or 0) always runs cold.
    pub sizes: BTreeMap<String, usize>,
    /// Most pre-started sandboxes over all profiles and tenants.
    pub max_total: usize,
    /// The stub executable on the host: the `mcp-gateway` binary (with
    /// `stub_args = ["__sandbox-stub"]`) or `mcp-sandbox-stub`. It is opened
    /// once, so replacing the file later changes nothing.
    pub stub: PathBuf,
    /// Arguments the stub is started with.
    pub stub_args: Vec<String>,
}

/// What the pool did so far (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tasks that ran in a pooled sandbox.
    pub pooled_runs: u64,
    /// Tasks of a pooled profile that ran cold (pool empty, or the task
    /// needed something the pooled sandbox was not started with).
    pub cold_runs: u64,
    /// Pooled sandboxes started and ready.
    pub started: u64,
    /// Pooled sandboxes that failed to start.
    pub failed: u64,
    /// Pooled sandboxes killed unused (dead, evicted, or a failed order).
    pub discarded: u64,
    /// Sandboxes waiting now.
    pub ready: usize,
    /// Sandboxes being started now.
    pub starting: usize,
}

/// What [`Sandbox::build_with`] adds for a pooled sandbox.
#[derive(Debug)]
pub(crate) struct WarmParts {
    /// The sandbox's end of the control channel (bwrap's stdin).
    pub(crate) control: OwnedFd,
    /// The stub executable, bound at [`STUB_PATH`].
    pub(crate) stub: OwnedFd,
}

type Key = (String, String);

#[derive(Debug)]
pub(crate) struct Pool {
    sizes: BTreeMap<String, usize>,
    max_total: usize,
    stub: File,
    stub_args: Vec<String>,
    state: Mutex<State>,
    pooled_runs: AtomicU64,
    cold_runs: AtomicU64,
    started: AtomicU64,
    failed: AtomicU64,
    discarded: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Key, Slot>,
    /// Ready plus starting sandboxes over all slots.
    total: usize,
    /// Orders slots by last use.
    clock: u64,
}

#[derive(Debug, Default)]
struct Slot {
    ready: VecDeque<Warm>,
    starting: usize,
    last_used: u64,
    /// Set by a failed start: no new start before then.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// Tops a pool up when dropped: the refill [`Pool::take`] deferred until
/// the task that claimed a sandbox is over (or its future is dropped).
struct RefillOnDrop {
    pool: Arc<Pool>,
    sandbox: Sandbox,
    key: Key,
}

impl Drop for RefillOnDrop {
    fn drop(&mut self) {
        self.pool.refill(&self.sandbox, &self.key);
    }
}

/// One waiting sandbox. Dropped unused, it is killed and reaped (its
/// channel closed first).
#[derive(Debug)]
struct Warm {
    control: Option<UnixStream>,
    held: run::Held,
}

impl Warm {
    fn alive(&self) -> bool {
        !sys::has_exited(self.held.pid()).unwrap_or(true)
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn size_of(&self, profile: &str) -> usize {
        self.sizes.get(profile).copied().unwrap_or(0)
    }

    /// Whether tasks of `profile` are offered a pooled sandbox.
    pub(crate) fn serves(&self, profile: &str) -> bool {
        self.size_of(profile) > 0
    }

    /// Runs `spec` in a pooled sandbox if one fits; `None` means: run it
    /// cold (and the pool of its profile and tenant is being filled).
    pub(crate) async fn try_run(
        self: &Arc<Self>,
        sandbox: &Sandbox,
        spec: &RunSpec,
        on_output: &(dyn Fn(OutputChunk) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Option<Result<RunOutcome, SandboxError>> {
        if self.size_of(&spec.profile) == 0 || !is_valid_tenant(&spec.tenant) {
            return None;
        }
        let profile = sandbox.profiles().get(&spec.profile)?;
        let key = (spec.profile.clone(), spec.tenant.clone());
        let fits = fits(profile, spec);
        let (warm, _refill) = self.take(sandbox, &key, fits);
        let Some(mut warm) = warm else {
            self.cold_runs.fetch_add(1, Ordering::Relaxed);
            return None;
        };

        let limits = sandbox.task_rlimits(profile, spec);
        let order = Order {
            argv: spec.argv.clone(),
            env: merged_env(profile, &spec.env).into_iter().collect(),
            cwd: spec.cwd.trim_end_matches('/').to_owned(),
            limits,
        };
        let run_limits = RunLimits {
            timeout: spec.timeout,
            cpu_time: profile.limits.cpu_time_secs.map(Duration::from_secs),
            rlimit_cpu_secs: limits.cpu_secs,
        };
        let started = Instant::now();
        if let Err(e) = send(warm.control.take(), &stub::encode(&order)).await {
            // The stub got nothing or a part: it exits without running
            // anything, and we kill it anyway.
            tracing::warn!(error = %e, profile = %spec.profile, "pooled sandbox refused its order; running cold");
            drop(warm);
            self.discarded.fetch_add(1, Ordering::Relaxed);
            self.cold_runs.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (child, guard) = warm.held.into_parts();
        self.pooled_runs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = child.pid, "running in a pooled sandbox");
        let max_output = sandbox.settings().max_output_bytes;
        Some(
            run::supervise(
                child,
                guard,
                run_limits,
                max_output,
                on_output,
                cancel.clone(),
                started,
            )
            .await,
        )
    }

    /// Marks `key` used, takes a live sandbox from it if `want`, and tops
    /// the pool up in the background: at once when it took none or the
    /// pool is now empty, else when the returned guard drops, after the
    /// task. A replacement started at once would compete for the CPU with
    /// the very task that claimed the sandbox (a bwrap start costs several
    /// milliseconds of CPU; on two cores that slowed a pooled run by about
    /// a third), while the sandboxes still waiting serve the next requests.
    fn take(
        self: &Arc<Self>,
        sandbox: &Sandbox,
        key: &Key,
        want: bool,
    ) -> (Option<Warm>, Option<RefillOnDrop>) {
        let mut dead = Vec::new();
        let mut got = None;
        let later = {
            let mut st = self.lock();
            let State {
                slots,
                total,
                clock,
            } = &mut *st;
            *clock += 1;
            let slot = slots.entry(key.clone()).or_default();
            slot.last_used = *clock;
            while want && let Some(w) = slot.ready.pop_front() {
                *total = total.saturating_sub(1);
                if w.alive() {
                    got = Some(w);
                    break;
                }
                dead.push(w);
            }
            got.is_some() && !slot.ready.is_empty()
        };
        self.discarded
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        drop(dead);
        if later {
            let guard = RefillOnDrop {
                pool: Arc::clone(self),
                sandbox: sandbox.clone(),
                key: key.clone(),
            };
            return (got, Some(guard));
        }
        self.refill(sandbox, key);
        (got, None)
    }

    /// Starts as many sandboxes for `key` as it lacks, within `max_total`
    /// (evicting from the least recently used other pools).
    fn refill(self: &Arc<Self>, sandbox: &Sandbox, key: &Key) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let size = self.size_of(&key.0);
        let mut evicted = Vec::new();
        let mut start = 0;
        {
            let mut st = self.lock();
            let State { slots, total, .. } = &mut *st;
            let Some(slot) = slots.get(key) else {
                return;
            };
            if slot.retry_at.is_some_and(|t| Instant::now() < t) {
                return;
            }
            let mine = slot.last_used;
            let mut lacking = size.saturating_sub(slot.ready.len() + slot.starting);
            while lacking > 0 {
                if *total >= self.max_total {
                    let victim = slots
                        .iter_mut()
                        .filter(|(k, s)| *k != key && !s.ready.is_empty() && s.last_used < mine)
                        .min_by_key(|(_, s)| s.last_used)
                        .and_then(|(_, s)| s.ready.pop_front());
                    let Some(v) = victim else { break };
                    evicted.push(v);
                    *total = total.saturating_sub(1);
                }
                *total += 1;
                start += 1;
                lacking -= 1;
            }
            if let Some(slot) = slots.get_mut(key) {
                slot.starting += start;
            }
        }
        self.discarded
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        drop(evicted);
        for _ in 0..start {
            let pool = Arc::clone(self);
            let sandbox = sandbox.clone();
            let key = key.clone();
            rt.spawn(async move { pool.fill_one(sandbox, key).await });
        }
    }

    async fn fill_one(self: Arc<Self>, sandbox: Sandbox, key: Key) {
        let result = self.start_one(&sandbox, &key).await;
        let mut st = self.lock();
        let State { slots, total, .. } = &mut *st;
        let slot = slots.entry(key.clone()).or_default();
        slot.starting = slot.starting.saturating_sub(1);
        match result {
            Ok(w) => {
                self.started.fetch_add(1, Ordering::Relaxed);
                slot.retry_at = None;
                slot.last_error = None;
                slot.ready.push_back(w);
            }
            Err(e) => {
                *total = total.saturating_sub(1);
                self.failed.fetch_add(1, Ordering::Relaxed);
                let msg = error_chain(&e);
                tracing::warn!(error = %msg, profile = %key.0, "cannot start a pooled sandbox; running cold for a while");
                slot.retry_at = Some(Instant::now() + RETRY_AFTER);
                slot.last_error = Some(msg);
            }
        }
    }

    /// Starts one sandbox for `key` and waits until its stub is ready.
    async fn start_one(&self, sandbox: &Sandbox, key: &Key) -> Result<Warm, SandboxError> {
        let spawn_err = |source| SandboxError::Spawn { source };
        let (ours, theirs) = UnixStream::pair().map_err(spawn_err)?;
        let stub_fd = self.stub.try_clone().map_err(spawn_err)?;
        let mut argv = vec![STUB_PATH.to_owned()];
        argv.extend(self.stub_args.iter().cloned());
        let spec = RunSpec {
            task_id: TaskId::new(),
            tenant: key.1.clone(),
            profile: key.0.clone(),
            argv,
            env: BTreeMap::new(),
            cwd: String::new(),
            timeout: WARM_TIMEOUT,
            network: NetworkAccess::None,
            limits: ResourceLimits::default(),
            denied_paths: Vec::new(),
        };
        let parts = WarmParts {
            control: theirs.into(),
            stub: stub_fd.into(),
        };
        let sb = sandbox.clone();
        let (cmd, guard, _) =
            tokio::task::spawn_blocking(move || sb.build_with(&spec, None, Some(parts), None))
                .await
                .map_err(|e| spawn_err(io::Error::other(e)))??;
        let child = run::start(cmd).await?;
        let mut warm = Warm {
            control: None,
            held: run::Held::new(child, guard),
        };
        let ready = async {
            ours.set_nonblocking(true)?;
            let mut ctl = tokio::net::UnixStream::from_std(ours)?;
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(READY_TIMEOUT, ctl.read(&mut b))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n != 1 || b[0] != READY {
                return Err(io::Error::other("the stub exited before it was ready"));
            }
            ctl.into_std()
        };
        match ready.await {
            Ok(ctl) => {
                warm.control = Some(ctl);
                Ok(warm)
            }
            Err(e) => {
                let stderr = warm.held.child_mut().early_stderr().await;
                drop(warm);
                Err(SandboxError::Spawn {
                    source: io::Error::new(e.kind(), format!("{e}: {}", stderr.trim())),
                })
            }
        }
    }

    fn stats(&self) -> PoolStats {
        let (ready, starting) = {
            let st = self.lock();
            let ready = st.slots.values().map(|s| s.ready.len()).sum();
            (ready, st.slots.values().map(|s| s.starting).sum())
        };
        PoolStats {
            pooled_runs: self.pooled_runs.load(Ordering::Relaxed),
            cold_runs: self.cold_runs.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            ready,
            starting,
        }
    }
}

/// Whether `spec` can run in a sandbox started for its profile and tenant
/// with default request settings. Anything doubtful runs cold, where it is
/// validated and reported precisely.
fn fits(profile: &Profile, spec: &RunSpec) -> bool {
    let no_nul = |s: &str| !s.contains('\0');
    let cwd = spec.cwd.trim_end_matches('/');
    spec.network == NetworkAccess::None
        && spec.denied_paths.is_empty()
        && spec.argv.first().is_some_and(|a| a.starts_with('/'))
        && spec.argv.iter().all(|a| no_nul(a))
        && spec
            .env
            .iter()
            .all(|(k, v)| !k.is_empty() && !k.contains('=') && no_nul(k) && no_nul(v))
        && (spec.cwd.is_empty() || (!cwd.starts_with('/') && is_clean_absolute(&format!("/{cwd}"))))
        && cgroup_limits(profile, &spec.limits)
            == cgroup_limits(profile, &ResourceLimits::default())
}

/// Sends the order and closes our end of the channel.
async fn send(control: Option<UnixStream>, msg: &[u8]) -> io::Result<()> {
    let ctl = control.ok_or_else(|| io::Error::other("no control channel"))?;
    ctl.set_nonblocking(true)?;
    let mut ctl = tokio::net::UnixStream::from_std(ctl)?;
    tokio::time::timeout(SEND_TIMEOUT, ctl.write_all(msg))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

impl PoolSettings {
    /// What [`Sandbox::enable_pool`] would refuse with `profiles`, and the
    /// stub opened (`O_PATH`) when it is an executable file. Also behind
    /// `mcp-gateway sandbox check`.
    pub(crate) fn check(&self, profiles: &Profiles) -> (Option<File>, Vec<String>) {
        let mut problems = Vec::new();
        for (name, size) in &self.sizes {
            if profiles.get(name).is_none() {
                problems.push(format!("unknown profile {name:?}"));
            }
            if *size > MAX_POOL_SIZE {
                problems.push(format!(
                    "size {size} of profile {name:?} is above {MAX_POOL_SIZE}"
                ));
            }
        }
        let any = self.sizes.values().any(|s| *s > 0);
        if any && self.max_total == 0 {
            problems.push("max_total must be at least 1 when a pool size is set".to_owned());
        }
        let stub = File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&self.stub);
        let executable = std::fs::metadata(&self.stub)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        let stub = match stub {
            Ok(f) if executable => Some(f),
            _ => {
                problems.push(format!(
                    "stub {} is not an executable file",
                    self.stub.display()
                ));
                None
            }
        };
        (stub, problems)
    }
}

impl Sandbox {
    /// Enables the warm pool. Fails on an unknown profile, a size above
    /// [`MAX_POOL_SIZE`], `max_total` 0 while a size is not, a stub that is
    /// not an executable file, or a second call.
    pub fn enable_pool(&self, settings: PoolSettings) -> Result<(), SandboxError> {
        let (stub, problems) = settings.check(self.profiles());
        let (Some(stub), true) = (stub, problems.is_empty()) else {
            return Err(SandboxError::BadPool {
                reason: problems.join("; "),
            });
        };
        self.cover_stub(&settings.stub);
        let pool = Pool {
            sizes: settings.sizes,
            max_total: settings.max_total,
            stub,
            stub_args: settings.stub_args,
            state: Mutex::new(State::default()),
            pooled_runs: AtomicU64::new(0),
            cold_runs: AtomicU64::new(0),
            started: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        };
        if !self.set_pool(Arc::new(pool)) {
            return Err(SandboxError::BadPool {
                reason: "the pool is already enabled".to_owned(),
            });
        }
        Ok(())
    }

    /// Fills the pool of `profile` for `tenant` now and waits until it is
    /// full (the first request of a tenant would otherwise only start it).
    /// Returns the number of waiting sandboxes; fails with the reason the
    /// last start failed.
    pub async fn prewarm(&self, profile: &str, tenant: &str) -> Result<usize, SandboxError> {
        let Some(pool) = self.pool() else {
            return Ok(0);
        };
        if !is_valid_tenant(tenant) {
            return Err(SandboxError::BadTenant {
                tenant: tenant.chars().take(80).collect(),
            });
        }
        let size = pool.size_of(profile);
        let key = (profile.to_owned(), tenant.to_owned());
        {
            let mut st = pool.lock();
            let slot = st.slots.entry(key.clone()).or_default();
            // An explicit request retries at once.
            slot.retry_at = None;
            slot.last_error = None;
        }
        pool.refill(self, &key);
        let deadline = Instant::now() + READY_TIMEOUT + Duration::from_secs(5);
        loop {
            {
                let st = pool.lock();
                if let Some(slot) = st.slots.get(&key) {
                    if slot.ready.len() >= size {
                        return Ok(slot.ready.len());
                    }
                    if slot.starting == 0
                        && let Some(e) = &slot.last_error
                    {
                        return Err(SandboxError::BadPool { reason: e.clone() });
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(SandboxError::BadPool {
                    reason: format!("the pool of profile {profile:?} did not fill in time"),
                });
            }
            pool.refill(self, &key);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What the warm pool did so far; all zero when it is disabled.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool().map(|p| p.stats()).unwrap_or_default()
    }
}
