//! Running one prepared bubblewrap command: live output, timeout and
//! cancellation, race-free killing and reaping with rusage.

use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use mcp_core::{ChunkKind, OutputChunk, ResourceUsage, TaskResult};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::cgroup::{CgroupStats, TaskCgroup};
use crate::error::SandboxError;
use crate::host_state::TaskGuard;
use crate::sys::{self, Spawn, Spawned};

/// How long output pipes may stay open after bubblewrap was reaped. Every
/// process of the sandbox dies with it (pid namespace + `--die-with-parent`),
/// so this only bounds the kernel's teardown.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
const READ_BUF: usize = 16 * 1024;
/// How often a task's CPU time is compared with its CPU-time limit.
const CPU_POLL: Duration = Duration::from_millis(100);
/// Bounds of the number of spawner threads (the machine's parallelism,
/// clamped).
const SPAWNERS_MIN: usize = 2;
const SPAWNERS_MAX: usize = 4;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (not by us).
    Signaled(i32),
    /// The timeout expired and the sandbox was killed.
    TimedOut,
    /// The cancellation token fired and the sandbox was killed.
    Cancelled,
    /// The task used up its CPU-time limit (all processes together, or
    /// one process its RLIMIT_CPU) and was killed. Distinct from
    /// [`Ending::TimedOut`], which is wall-clock time.
    CpuTimeLimit,
    /// The kernel's OOM killer killed (part of) the task at its memory
    /// limit.
    OutOfMemory,
}

/// Limits a task ran into, as its cgroup counted them (all zero when the
/// host gives sandboxes no cgroups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHits {
    /// Processes the OOM killer killed at the memory limit.
    pub oom_kills: u64,
    /// Forks that failed at the pids limit.
    pub pids_max: u64,
    /// CPU bandwidth periods in which the task was throttled.
    pub cpu_throttled_periods: u64,
}

/// What a run produced: how it ended, its (capped) output and usage, and
/// the limits it ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub ending: Ending,
    pub result: TaskResult,
    pub limits: LimitHits,
}

/// The limits [`execute`] enforces or classifies beyond the timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunLimits {
    pub(crate) timeout: Duration,
    /// The task's CPU-time limit, watched through its cgroup.
    pub(crate) cpu_time: Option<Duration>,
    /// RLIMIT_CPU of each process, to recognise a kill by the kernel.
    pub(crate) rlimit_cpu_secs: u64,
}

/// The bubblewrap process. `exited` turns true, under the lock, before the
/// pid is reaped; [`Proc::kill`] only signals while it is false, so a kill
/// can never reach a reused pid.
#[derive(Debug)]
struct Proc {
    pid: i32,
    exited: Mutex<bool>,
    cgroup: Option<Arc<TaskCgroup>>,
}

impl Proc {
    /// SIGKILLs bwrap's process group if it has not exited. Returns whether
    /// a signal was sent.
    fn kill(&self) -> bool {
        let exited = self.exited.lock().unwrap_or_else(PoisonError::into_inner);
        if *exited {
            return false;
        }
        let killed = match sys::kill_group(self.pid) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, pid = self.pid, "cannot kill sandbox");
                false
            }
        };
        // Also everything that left bwrap's process group (the command's
        // own session): the cgroup holds the whole tree.
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        killed
    }

    /// Blocks until bwrap exits, then reaps it.
    fn wait(&self) -> io::Result<sys::Reaped> {
        let waited = sys::wait_exited_nowait(self.pid);
        // Whatever waitid said, the pid must be treated as gone from here on.
        *self.exited.lock().unwrap_or_else(PoisonError::into_inner) = true;
        waited?;
        sys::reap(self.pid)
    }
}

type SpawnJob = (Spawn, tokio::sync::oneshot::Sender<io::Result<Spawned>>);

/// Spawns `cmd` from a small set of long-lived threads. bwrap's
/// `--die-with-parent` (and our own `PR_SET_PDEATHSIG` in the child) fires
/// when the spawning *thread* exits, not the process: spawning from a tokio
/// blocking-pool thread (or a worker that `block_in_place` retired) would
/// get sandboxes killed when that thread idles out. These threads never
/// exit (the job queue's sender lives in a static), so the signal only
/// fires when the process dies. There are several, so one slow spawn does
/// not queue every other spawn behind it; they share one queue, each taking
/// the next job.
async fn spawn(cmd: Spawn) -> io::Result<Spawned> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism()
            .map_or(SPAWNERS_MIN, |n| n.get().clamp(SPAWNERS_MIN, SPAWNERS_MAX));
        let mut started = 0;
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let thread = std::thread::Builder::new()
                .name(format!("mcp-sandbox-spawner-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job, so
                        // the forks themselves run in parallel.
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok((cmd, reply)) = job else { break };
                        if let Err(Ok(orphan)) = reply.send(cmd.spawn()) {
                            // The run was dropped while we spawned: nobody
                            // owns this child, so kill and reap it here.
                            let _ = sys::kill_group(orphan.pid);
                            let _ = sys::reap(orphan.pid);
                        }
                    }
                });
            match thread {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a sandbox spawner thread"),
            }
        }
        (started > 0).then_some(tx)
    });
    let Some(spawner) = spawner else {
        return Err(io::Error::other(
            "the sandbox spawner threads could not be started",
        ));
    };
    let (reply, result) = tokio::sync::oneshot::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the sandbox spawner threads are gone"))?;
    result
        .await
        .map_err(|_| io::Error::other("the sandbox spawner threads are gone"))?
}

/// Makes this process adopt the sandboxes' orphaned pid-namespace inits
/// (`PR_SET_CHILD_SUBREAPER`) and reap them from a background thread every
/// 250 ms. bwrap exits as soon as its init reported the command's status,
/// while that init is still exiting; without this the init is reparented
/// to PID 1, which in the container image is the gateway itself: it would
/// stay a zombie holding a pid forever. Idempotent; for long-running
/// processes (the gateway's `serve`).
pub fn adopt_orphans() -> io::Result<()> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            sys::become_subreaper().map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("mcp-sandbox-orphans".to_owned())
                .spawn(|| {
                    loop {
                        std::thread::sleep(ORPHAN_SWEEP);
                        sys::reap_orphans();
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(io::Error::other)
}

/// How many orphaned sandbox inits [`adopt_orphans`]' thread has reaped.
pub fn orphans_reaped() -> u64 {
    sys::ORPHANS_REAPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// How often [`adopt_orphans`]' thread reaps.
const ORPHAN_SWEEP: Duration = Duration::from_millis(250);

/// A started bubblewrap: its pid (ours until reaped) and its output pipes.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
}

impl Started {
    /// Kills a sandbox nobody will run a task in (a pooled one that is
    /// discarded) and reaps it on a thread of its own, then drops `guard`
    /// (its cgroup and uid).
    pub(crate) fn abandon(self, guard: TaskGuard) {
        let proc = Proc {
            pid: self.pid,
            exited: Mutex::new(false),
            cgroup: guard.cgroup().cloned(),
        };
        proc.kill();
        drop((self.stdout, self.stderr));
        let reaper = std::thread::Builder::new()
            .name("mcp-sandbox-reap".to_owned())
            .spawn(move || {
                if let Err(e) = proc.wait() {
                    tracing::warn!(error = %e, pid = proc.pid, "cannot reap a discarded sandbox");
                }
                drop(guard);
            });
        if let Err(e) = reaper {
            tracing::warn!(error = %e, "cannot start a thread to reap a discarded sandbox");
        }
    }
}

/// A started sandbox not yet supervised (a pooled one waiting for its
/// order, a cold one for its gate): dropped, it is killed and reaped and
/// its host state removed.
#[derive(Debug)]
pub(crate) struct Held {
    child: Option<Started>,
    guard: Option<TaskGuard>,
}

impl Held {
    pub(crate) fn new(child: Started, guard: TaskGuard) -> Self {
        Held {
            child: Some(child),
            guard: Some(guard),
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        match &self.child {
            Some(c) => c.pid,
            None => unreachable!("a Held is only emptied by into_parts"),
        }
    }

    pub(crate) fn child_mut(&mut self) -> &mut Started {
        match self.child.as_mut() {
            Some(c) => c,
            None => unreachable!("a Held is only emptied by into_parts"),
        }
    }

    /// Hands the sandbox over to [`supervise`].
    pub(crate) fn into_parts(mut self) -> (Started, TaskGuard) {
        match (self.child.take(), self.guard.take()) {
            (Some(c), Some(w)) => (c, w),
            _ => unreachable!("a Held is only emptied here"),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(child), Some(guard)) = (self.child.take(), self.guard.take()) {
            child.abandon(guard);
        }
    }
}

impl Started {
    /// What the sandbox wrote to stderr so far (at most 2 KiB, waiting at
    /// most 100 ms): bubblewrap's reason when a pooled sandbox failed to
    /// start.
    pub(crate) async fn early_stderr(&mut self) -> String {
        let Some(pipe) = self.stderr.take() else {
            return String::new();
        };
        let Ok(pipe) = tokio::process::ChildStderr::from_std(pipe) else {
            return String::new();
        };
        let mut buf = Vec::new();
        let mut pipe = tokio::io::AsyncReadExt::take(pipe, 2048);
        let read = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut buf);
        let _ = tokio::time::timeout(Duration::from_millis(100), read).await;
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Spawns `cmd` (a fully prepared bwrap command) from a spawner thread.
pub(crate) async fn start(cmd: Spawn) -> Result<Started, SandboxError> {
    let child = spawn(cmd)
        .await
        .map_err(|source| SandboxError::Spawn { source })?;
    // From here on the pid is ours to kill and reap.
    Ok(Started {
        pid: child.pid,
        stdout: Some(child.stdout.into()),
        stderr: Some(child.stderr.into()),
    })
}

/// Kills the sandbox if the run future is dropped before it finished; the
/// detached reaper still reaps it and releases its cgroup and uid.
struct KillOnDrop(Arc<Proc>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Spawns `cmd` (a fully prepared bwrap command), streams its output to
/// `on_output`, enforces the timeout, the CPU-time limit and `cancel`,
/// reaps it, and empties and removes its cgroup.
pub(crate) async fn execute(
    cmd: Spawn,
    guard: TaskGuard,
    limits: RunLimits,
    max_output: usize,
    on_output: &(dyn Fn(OutputChunk) + Send + Sync),
    cancel: CancellationToken,
) -> Result<RunOutcome, SandboxError> {
    let started = Instant::now();
    let child = start(cmd).await?;
    supervise(child, guard, limits, max_output, on_output, cancel, started).await
}

/// Everything [`execute`] does once bubblewrap runs: for a cold sandbox
/// right after the spawn, for a pooled one right after its order was sent.
/// `started` is when the task's run began (its execution time).
pub(crate) async fn supervise(
    child: Started,
    guard: TaskGuard,
    limits: RunLimits,
    max_output: usize,
    on_output: &(dyn Fn(OutputChunk) + Send + Sync),
    cancel: CancellationToken,
    started: Instant,
) -> Result<RunOutcome, SandboxError> {
    let cgroup = guard.cgroup().cloned();
    let Started {
        pid,
        stdout,
        stderr,
    } = child;
    tracing::debug!(pid, "sandbox started");

    let proc = Arc::new(Proc {
        pid,
        exited: Mutex::new(false),
        cgroup: cgroup.clone(),
    });
    let _kill_on_drop = KillOnDrop(Arc::clone(&proc));
    let mut reaper = tokio::task::spawn_blocking({
        let proc = Arc::clone(&proc);
        move || {
            let r = proc.wait();
            // bwrap's pid-namespace init is gone, so the kernel is killing
            // whatever is left; make sure of it, then measure and remove.
            let stats = guard.cgroup().map(|c| c.finish());
            drop(guard);
            r.map(|reaped| (reaped, stats))
        }
    });

    let pipes = (
        stdout
            .map(tokio::process::ChildStdout::from_std)
            .transpose(),
        stderr
            .map(tokio::process::ChildStderr::from_std)
            .transpose(),
    );
    let (stdout, stderr) = match pipes {
        (Ok(o), Ok(e)) => (o, e),
        (Err(source), _) | (_, Err(source)) => {
            proc.kill();
            let _ = reaper.await;
            return Err(SandboxError::Spawn { source });
        }
    };

    let reaped = CancellationToken::new();
    let cpu_watch = async {
        match (&cgroup, limits.cpu_time) {
            (Some(cg), Some(limit)) => {
                let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
                loop {
                    tokio::time::sleep(CPU_POLL).await;
                    if cg.cpu_ms().is_some_and(|ms| ms >= limit_ms) {
                        return;
                    }
                }
            }
            _ => std::future::pending().await,
        }
    };
    let waiter = async {
        let killed_for = tokio::select! {
            r = &mut reaper => return (r, None),
            () = tokio::time::sleep(limits.timeout) => Ending::TimedOut,
            () = cancel.cancelled() => Ending::Cancelled,
            () = cpu_watch => Ending::CpuTimeLimit,
        };
        let killed = proc.kill().then_some(killed_for);
        if killed.is_some() {
            tracing::debug!(pid, ending = ?killed_for, "sandbox killed");
        }
        (reaper.await, killed)
    };
    let waiter = async {
        let r = waiter.await;
        reaped.cancel();
        r
    };
    let (out, err, (joined, killed)) = tokio::join!(
        pump(stdout, ChunkKind::Stdout, max_output, on_output, &reaped),
        pump(stderr, ChunkKind::Stderr, max_output, on_output, &reaped),
        waiter,
    );

    let (reaped, stats) = joined
        .map_err(|e| SandboxError::Wait {
            source: io::Error::other(e),
        })?
        .map_err(|source| SandboxError::Wait { source })?;
    let stats = stats.unwrap_or_default();
    let status = reaped.status;
    let (ending, exit_code) = if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (Ending::Exited(code), code)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (Ending::Signaled(sig), 128 + sig)
    } else {
        (Ending::Exited(-1), -1)
    };
    let usage = ResourceUsage {
        cpu_time_ms: stats.cpu_ms.unwrap_or(reaped.cpu_ms),
        max_memory_kb: stats
            .peak_memory_bytes
            .map_or(reaped.max_rss_kb, |b| b / 1024),
        io_read_bytes: stats
            .io_read_bytes
            .unwrap_or(reaped.in_blocks.saturating_mul(512)),
        io_write_bytes: stats
            .io_write_bytes
            .unwrap_or(reaped.out_blocks.saturating_mul(512)),
    };
    let ending = killed.unwrap_or_else(|| classify(ending, &stats, &usage, &limits));

    Ok(RunOutcome {
        ending,
        result: TaskResult {
            exit_code,
            stdout: out.kept,
            stderr: err.kept,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            usage,
            execution_time_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
        limits: LimitHits {
            oom_kills: stats.oom_kills,
            pids_max: stats.pids_max_hits,
            cpu_throttled_periods: stats.cpu_throttled_periods,
        },
    })
}

/// Why a task that we did not kill ended: an OOM kill anywhere in the task
/// makes it `OutOfMemory` (its result cannot be trusted); a SIGKILL or
/// SIGXCPU (bwrap reports the command's signal as 128 + n) after using up
/// RLIMIT_CPU is `CpuTimeLimit`.
pub(crate) fn classify(
    ending: Ending,
    stats: &CgroupStats,
    usage: &ResourceUsage,
    limits: &RunLimits,
) -> Ending {
    if stats.oom_kills > 0 {
        return Ending::OutOfMemory;
    }
    let by_signal = |s: i32| s == libc::SIGKILL || s == libc::SIGXCPU;
    let signalled = match ending {
        Ending::Exited(code) => code > 128 && by_signal(code - 128),
        Ending::Signaled(sig) => by_signal(sig),
        _ => false,
    };
    // RLIMIT_CPU counts whole seconds per process; allow for that.
    let used_rlimit =
        usage.cpu_time_ms.saturating_add(1000) >= limits.rlimit_cpu_secs.saturating_mul(1000);
    if signalled && used_rlimit {
        return Ending::CpuTimeLimit;
    }
    ending
}

#[derive(Debug, Default)]
struct Pumped {
    kept: Vec<u8>,
    truncated: bool,
}

/// Reads one output pipe to EOF: forwards and keeps the first `cap` bytes,
/// then keeps draining (so the command never blocks on a full pipe) but
/// drops the rest and says so once with an `Event` chunk. Stops
/// [`DRAIN_GRACE`] after `reaped` fires even without EOF.
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    kind: ChunkKind,
    cap: usize,
    on_output: &(dyn Fn(OutputChunk) + Send + Sync),
    reaped: &CancellationToken,
) -> Pumped {
    let mut got = Pumped::default();
    let Some(mut pipe) = pipe else {
        return got;
    };
    let mut buf = vec![0u8; READ_BUF];
    let grace = async {
        reaped.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let n = tokio::select! {
            r = pipe.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, stream = ?kind, "cannot read sandbox output");
                    break;
                }
            },
            () = &mut grace => {
                tracing::warn!(stream = ?kind, "sandbox output still open after the sandbox exited");
                break;
            }
        };
        let take = cap.saturating_sub(got.kept.len()).min(n);
        if take > 0 {
            let data = buf.get(..take).unwrap_or_default();
            got.kept.extend_from_slice(data);
            on_output(OutputChunk::new(kind, data.to_vec()));
        }
        if take < n && !got.truncated {
            got.truncated = true;
            let name = match kind {
                ChunkKind::Stderr => "stderr",
                _ => "stdout",
            };
            on_output(OutputChunk::new(
                ChunkKind::Event,
                format!("{name} truncated at {cap} bytes").into_bytes(),
            ));
        }
    }
    got
}
