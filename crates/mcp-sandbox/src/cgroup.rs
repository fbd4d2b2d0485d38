//! Per-task cgroups: the limits that hold for a task's whole process tree
//! (memory + swap, pids, CPU bandwidth, I/O weight), killing the whole tree
//! at once, and its real usage (CPU time, peak memory, I/O bytes, OOM kills).
//!
//! Both layouts are supported, detected once per process:
//! - **cgroup v2** (unified, what production runs): the gateway needs a
//!   delegated subtree (systemd `Delegate=yes`, or root in its own cgroup).
//!   Because a v2 cgroup with controllers enabled for its children may not
//!   hold processes itself, the gateway moves itself into a leaf
//!   `<own>/mcp-gateway` and creates task cgroups under
//!   `<own>/mcp-sandbox/gw-<pid>-<start time>/<task id>`;
//! - **cgroup v1** (hybrid hosts whose memory, pids and cpu controllers are
//!   bound to v1 hierarchies): one task cgroup per hierarchy at
//!   `<own path>/mcp-sandbox/gw-<pid>-<start time>/<task id>`.
//!
//! The child is inside its task cgroup before bubblewrap can fork: on v2 it
//! is cloned into it (`clone3` with `CLONE_INTO_CGROUP`), on v1 it writes
//! `0` to the `tasks` files the gateway opened, between clone and exec.
//! Task cgroups of a gateway that died (found at the next start by their
//! `gw-<pid>-<start time>` name) are killed and removed.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::sys::{self, CgroupJoin};

/// Directory (under the gateway's cgroup) holding all task cgroups.
const PARENT: &str = "mcp-sandbox";
/// The v2 leaf the gateway moves itself into.
const LEAF: &str = "mcp-gateway";
/// CPU bandwidth period (`cpu.max`, `cpu.cfs_period_us`): 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// How long a killed task's processes may take to leave its cgroup.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(2);

/// The controllers every enforced profile needs.
pub(crate) const REQUIRED: [&str; 3] = ["memory", "pids", "cpu"];

/// Which cgroup layout sandboxes use on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V1,
    V2,
}

impl std::fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupMode::V1 => "v1",
            CgroupMode::V2 => "v2",
        })
    }
}

/// One hierarchy the sandboxes use, with this gateway's directory in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// The controllers of ours it carries (v2: all enabled ones).
    controllers: Vec<String>,
    /// How `/proc/<pid>/cgroup` names the hierarchy (its controllers
    /// field; empty for v2).
    proc_key: String,
    /// Where the hierarchy is mounted, and the cgroup path of its mount root.
    mount: PathBuf,
    mount_root: String,
    /// `<mount>/<own>/mcp-sandbox/gw-<pid>-<start>`.
    dir: PathBuf,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The cgroup path of `dir` as `/proc/<pid>/cgroup` would show it.
    fn cgroup_path(&self, dir: &Path) -> Option<String> {
        let rel = dir.strip_prefix(&self.mount).ok()?;
        let root = self.mount_root.trim_end_matches('/');
        Some(format!("{root}/{}", rel.display()))
    }
}

/// This gateway process's cgroups, set up once.
#[derive(Debug)]
pub(crate) struct Cgroups {
    mode: CgroupMode,
    hierarchies: Vec<Hierarchy>,
}

/// The limits written into a task cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    pub(crate) memory_bytes: u64,
    pub(crate) pids: u64,
    pub(crate) cpu_millicores: Option<u64>,
    pub(crate) io_weight: Option<u32>,
}

/// What a task cgroup measured. `None` where this host's cgroups do not
/// report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupStats {
    pub(crate) cpu_ms: Option<u64>,
    pub(crate) peak_memory_bytes: Option<u64>,
    pub(crate) io_read_bytes: Option<u64>,
    pub(crate) io_write_bytes: Option<u64>,
    pub(crate) oom_kills: u64,
    pub(crate) pids_max_hits: u64,
    pub(crate) cpu_throttled_periods: u64,
}

impl Cgroups {
    /// This process's cgroups, detected and set up on first use. `Err`
    /// says why sandboxes cannot get cgroup limits here and what to change.
    pub(crate) fn for_this_process() -> &'static Result<Cgroups, String> {
        static CGROUPS: OnceLock<Result<Cgroups, String>> = OnceLock::new();
        CGROUPS.get_or_init(|| {
            let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
            let plan = plan(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)?;
            let r = setup(plan);
            match &r {
                Ok(c) => tracing::info!(mode = %c.mode, controllers = ?c.controllers(), "sandbox cgroups ready"),
                Err(e) => tracing::warn!(reason = %e, "sandbox cgroups unavailable"),
            }
            r
        })
    }

    pub(crate) fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The controllers in use, sorted.
    pub(crate) fn controllers(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self
            .hierarchies
            .iter()
            .flat_map(|h| &h.controllers)
            .collect();
        set.into_iter().cloned().collect()
    }

    /// Where this gateway's task cgroups are created (one per hierarchy).
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.dir.clone()).collect()
    }
}

/// What detection found, before anything is created.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The gateway's own v2 cgroup (absolute), its path, and the mount.
    V2 {
        mount: PathBuf,
        mount_root: String,
        own: PathBuf,
        own_path: String,
        controllers: Vec<String>,
    },
    /// One entry per v1 hierarchy: (controllers of ours, proc key, mount,
    /// mount root, the gateway's own cgroup dir in it).
    V1(Vec<(Vec<String>, String, PathBuf, String, PathBuf)>),
}

/// Decides the layout from `/proc/self/mountinfo` and `/proc/self/cgroup`:
/// v2 when its hierarchy offers memory, pids and cpu at our cgroup, else v1
/// when each of them has a v1 hierarchy.
pub(crate) fn plan(mountinfo: &str, self_cgroup: &str) -> Result<Plan, String> {
    let mounts = parse_mountinfo(mountinfo);
    let own = own_cgroups(self_cgroup);

    let mut v2_problem = String::from("no cgroup2 filesystem is mounted");
    if let Some((m, path, dir)) = v2_own(&mounts, &own) {
        match dir {
            Some(dir) => {
                // Our own cgroup may be the leaf an earlier gateway process
                // (our parent, re-executing) moved into.
                let own_dir = if dir.file_name().is_some_and(|n| n == LEAF)
                    && dir.parent().is_some_and(|p| p.join(PARENT).is_dir())
                {
                    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
                } else {
                    dir
                };
                let available =
                    fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
                let available: Vec<String> =
                    available.split_whitespace().map(str::to_owned).collect();
                let missing: Vec<&str> = REQUIRED
                    .iter()
                    .copied()
                    .filter(|c| !available.iter().any(|a| a == c))
                    .collect();
                if missing.is_empty() {
                    let own_path = own_dir
                        .strip_prefix(&m.mountpoint)
                        .map(|r| format!("/{}", r.display()))
                        .unwrap_or_else(|_| "/".to_owned());
                    let mut controllers: Vec<String> =
                        REQUIRED.iter().map(|c| (*c).to_owned()).collect();
                    if available.iter().any(|a| a == "io") {
                        controllers.push("io".to_owned());
                    }
                    return Ok(Plan::V2 {
                        mount: m.mountpoint.clone(),
                        mount_root: m.root.clone(),
                        own: own_dir,
                        own_path,
                        controllers,
                    });
                }
                v2_problem = format!(
                    "the cgroup2 hierarchy at {} does not offer {} at {}",
                    m.mountpoint.display(),
                    missing.join(", "),
                    own_dir.display()
                );
            }
            None => {
                v2_problem = format!(
                    "our cgroup {path} is outside the cgroup2 mount at {}",
                    m.mountpoint.display()
                );
            }
        }
    }

    let mut v1 = Vec::new();
    let mut missing = Vec::new();
    let wanted = ["memory", "pids", "cpu", "cpuacct", "blkio"];
    let mut taken: BTreeSet<PathBuf> = BTreeSet::new();
    for c in wanted {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == c));
        let line = own.iter().find(|(k, _)| k.split(',').any(|x| x == c));
        match (mount, line) {
            (Some(m), Some((key, path))) => {
                if taken.contains(&m.mountpoint) {
                    continue;
                }
                let Some(dir) = under_mount(&m.mountpoint, &m.root, path) else {
                    missing.push(c);
                    continue;
                };
                let ours: Vec<String> = wanted
                    .iter()
                    .filter(|w| m.super_opts.iter().any(|o| o == *w))
                    .map(|w| (*w).to_owned())
                    .collect();
                taken.insert(m.mountpoint.clone());
                v1.push((ours, key.clone(), m.mountpoint.clone(), m.root.clone(), dir));
            }
            _ if c == "cpuacct" || c == "blkio" => {}
            _ => missing.push(c),
        }
    }
    if missing.is_empty() {
        return Ok(Plan::V1(v1));
    }
    Err(format!(
        "{v2_problem}, and cgroup v1 has no usable hierarchy for {}",
        missing.join(", ")
    ))
}

/// `/proc/<pid>/cgroup` as (controllers, path) pairs; v2's has no
/// controllers.
fn own_cgroups(self_cgroup: &str) -> Vec<(String, String)> {
    self_cgroup
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// The cgroup2 mount, our v2 cgroup path, and its directory under that
/// mount (`None` when our cgroup is outside it). `None` without a cgroup2
/// mount or a v2 line.
fn v2_own<'a>(
    mounts: &'a [MountEntry],
    own: &'a [(String, String)],
) -> Option<(&'a MountEntry, &'a str, Option<PathBuf>)> {
    let m = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    let (_, path) = own.iter().find(|(k, _)| k.is_empty())?;
    Some((m, path, under_mount(&m.mountpoint, &m.root, path)))
}

/// This process's v2 cgroup: its directory, and its path as
/// `/proc/<pid>/cgroup` shows it. Works on a hybrid host too (the
/// controller-less `unified` mount).
#[cfg(any(test, feature = "bench"))]
pub(crate) fn own_v2_cgroup() -> io::Result<(PathBuf, String)> {
    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo")?);
    let own = own_cgroups(&fs::read_to_string("/proc/self/cgroup")?);
    match v2_own(&mounts, &own) {
        Some((_, path, Some(dir))) => Ok((dir, path.to_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "this process has no cgroup in a mounted cgroup2 hierarchy",
        )),
    }
}

#[derive(Debug)]
struct MountEntry {
    root: String,
    mountpoint: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_owned();
            let _source = post.next()?;
            let super_opts = post
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(MountEntry {
                root: unescape(pre.get(3)?),
                mountpoint: PathBuf::from(unescape(pre.get(4)?)),
                fstype,
                super_opts,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if oct.len() == 3
                && let Ok(v) = u8::from_str_radix(&oct, 8)
            {
                out.push(char::from(v));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Where cgroup `path` is under a mount of cgroup `root`.
fn under_mount(mountpoint: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path).strip_prefix(root).ok()?;
    Some(mountpoint.join(rel))
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> String {
    let p = path.display().to_string();
    let what = what.to_owned();
    move |e| format!("cannot {what} {p}: {e}")
}

/// This process's pid and start time (clock ticks since boot), which
/// together name it uniquely across pid reuse.
fn identity(pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Fields after the command name start at field 3 (state); start time
    // is field 22.
    let start = after.split_whitespace().nth(19)?.parse().ok()?;
    Some((pid, start))
}

fn gw_name((pid, start): (u32, u64)) -> String {
    format!("gw-{pid}-{start}")
}

fn setup(plan: Plan) -> Result<Cgroups, String> {
    let me = identity(std::process::id())
        .ok_or_else(|| "cannot read our own start time from /proc/self/stat".to_owned())?;
    let gw = gw_name(me);
    match plan {
        Plan::V2 {
            mount,
            mount_root,
            own,
            own_path,
            controllers,
        } => {
            let is_root = own == mount;
            if !is_root {
                // A v2 cgroup that hands controllers to children may not
                // hold processes: move ourselves into a leaf first.
                let leaf = own.join(LEAF);
                create_dir(&leaf).map_err(ctx(&leaf, "create"))?;
                let procs = leaf.join("cgroup.procs");
                write_file(&procs, &std::process::id().to_string()).map_err(ctx(&procs, "join"))?;
            }
            let enable: String = controllers
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            let parent = own.join(PARENT);
            let dir = parent.join(&gw);
            for (i, d) in [&own, &parent, &dir].into_iter().enumerate() {
                if i > 0 {
                    create_dir(d).map_err(ctx(d, "create"))?;
                }
                let sc = d.join("cgroup.subtree_control");
                write_file(&sc, &enable).map_err(|e| {
                    let busy = if e.raw_os_error() == Some(libc::EBUSY) {
                        format!(
                            " ({} still holds other processes: start the gateway in a cgroup of its own, e.g. a systemd service with Delegate=yes)",
                            own_path
                        )
                    } else {
                        String::new()
                    };
                    format!("cannot enable {enable} in {}: {e}{busy}", sc.display())
                })?;
            }
            let h = Hierarchy {
                controllers,
                proc_key: String::new(),
                mount,
                mount_root,
                dir,
            };
            sweep_stale(&h, &parent, &gw);
            Ok(Cgroups {
                mode: CgroupMode::V2,
                hierarchies: vec![h],
            })
        }
        Plan::V1(entries) => {
            let mut hierarchies = Vec::new();
            for (controllers, proc_key, mount, mount_root, own) in entries {
                let parent = own.join(PARENT);
                let dir = parent.join(&gw);
                fs::create_dir_all(&dir).map_err(ctx(&dir, "create"))?;
                let h = Hierarchy {
                    controllers,
                    proc_key,
                    mount,
                    mount_root,
                    dir,
                };
                sweep_stale(&h, &parent, &gw);
                hierarchies.push(h);
            }
            Ok(Cgroups {
                mode: CgroupMode::V1,
                hierarchies,
            })
        }
    }
}

fn create_dir(p: &Path) -> io::Result<()> {
    match fs::create_dir(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Kills and removes the task cgroups of gateways that are gone.
fn sweep_stale(h: &Hierarchy, parent: &Path, ours: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("gw-") else {
            continue;
        };
        if name == ours {
            continue;
        }
        let alive = rest
            .split_once('-')
            .and_then(|(pid, start)| Some((pid.parse::<u32>().ok()?, start.parse::<u64>().ok()?)))
            .is_some_and(|(pid, start)| identity(pid).is_some_and(|(_, s)| s == start));
        if alive {
            continue;
        }
        let gw_dir = entry.path();
        if let Ok(tasks) = fs::read_dir(&gw_dir) {
            for t in tasks.flatten() {
                if t.path().is_dir() {
                    let task = TaskCgroup {
                        mode: if h.proc_key.is_empty() {
                            CgroupMode::V2
                        } else {
                            CgroupMode::V1
                        },
                        dirs: vec![(h.clone(), t.path())],
                        removed: AtomicBool::new(false),
                    };
                    tracing::warn!(cgroup = %t.path().display(), "removing a task cgroup left by a gateway that died");
                    task.destroy();
                }
            }
        }
        if let Err(e) = fs::remove_dir(&gw_dir) {
            tracing::warn!(error = %e, cgroup = %gw_dir.display(), "cannot remove a stale gateway cgroup");
        }
    }
}

/// One task's cgroup (one directory per hierarchy). Removed by
/// [`TaskCgroup::destroy`], which kills whatever is still inside.
#[derive(Debug)]
pub(crate) struct TaskCgroup {
    mode: CgroupMode,
    dirs: Vec<(Hierarchy, PathBuf)>,
    removed: AtomicBool,
}

impl TaskCgroup {
    /// Creates `name` in every hierarchy and writes `limits`. On error
    /// nothing is left behind.
    pub(crate) fn create(
        cgroups: &Cgroups,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<TaskCgroup, (PathBuf, io::Error)> {
        let mut task = TaskCgroup {
            mode: cgroups.mode,
            dirs: Vec::new(),
            removed: AtomicBool::new(false),
        };
        for h in &cgroups.hierarchies {
            let dir = h.dir.join(name);
            fs::create_dir(&dir).map_err(|e| (dir.clone(), e))?;
            task.dirs.push((h.clone(), dir));
        }
        if let Err(e) = task.write_limits(limits) {
            task.destroy();
            return Err(e);
        }
        Ok(task)
    }

    /// A task cgroup over ready-made directories (a fake cgroupfs in tests).
    #[cfg(test)]
    pub(crate) fn for_test(mode: CgroupMode, dirs: Vec<(Vec<&str>, PathBuf)>) -> TaskCgroup {
        TaskCgroup {
            mode,
            dirs: dirs
                .into_iter()
                .map(|(controllers, dir)| {
                    let h = Hierarchy {
                        controllers: controllers.into_iter().map(str::to_owned).collect(),
                        proc_key: String::new(),
                        mount: PathBuf::from("/"),
                        mount_root: "/".to_owned(),
                        dir: dir.clone(),
                    };
                    (h, dir)
                })
                .collect(),
            removed: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub(crate) fn write_limits_for_test(&self, l: &CgroupLimits) -> io::Result<()> {
        self.write_limits(l).map_err(|(_, e)| e)
    }

    fn dir_for(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(h, _)| h.has(controller))
            .map(|(_, d)| d.as_path())
    }

    fn write_limits(&self, l: &CgroupLimits) -> Result<(), (PathBuf, io::Error)> {
        let set = |controller: &str, file: &str, value: &str, optional: bool| {
            let Some(dir) = self.dir_for(controller) else {
                return Ok(());
            };
            let path = dir.join(file);
            if optional && !path.exists() {
                return Ok(());
            }
            write_file(&path, value).map_err(|e| (path, e))
        };
        let quota = l
            .cpu_millicores
            .map(|m| (m.saturating_mul(CPU_PERIOD_US) / 1000).max(1000));
        match self.mode {
            CgroupMode::V2 => {
                set("memory", "memory.max", &l.memory_bytes.to_string(), false)?;
                set("memory", "memory.swap.max", "0", true)?;
                // An OOM kill takes the whole task, not one process of it.
                set("memory", "memory.oom.group", "1", true)?;
                set("pids", "pids.max", &l.pids.to_string(), false)?;
                if let Some(q) = quota {
                    set("cpu", "cpu.max", &format!("{q} {CPU_PERIOD_US}"), false)?;
                }
                if let Some(w) = l.io_weight {
                    set("io", "io.weight", &format!("default {w}"), true)?;
                }
            }
            CgroupMode::V1 => {
                let mem = l.memory_bytes.to_string();
                set("memory", "memory.limit_in_bytes", &mem, false)?;
                // memory + swap; must not be below memory.limit_in_bytes.
                set("memory", "memory.memsw.limit_in_bytes", &mem, true)?;
                set("pids", "pids.max", &l.pids.to_string(), false)?;
                if let Some(q) = quota {
                    set(
                        "cpu",
                        "cpu.cfs_period_us",
                        &CPU_PERIOD_US.to_string(),
                        false,
                    )?;
                    set("cpu", "cpu.cfs_quota_us", &q.to_string(), false)?;
                }
                if let Some(w) = l.io_weight {
                    // v1 weights are 10-1000 (default 500), v2 1-10000 (100).
                    let v1 = (u64::from(w) * 5).clamp(10, 1000).to_string();
                    set("blkio", "blkio.weight", &v1, true)?;
                    set("blkio", "blkio.bfq.weight", &v1, true)?;
                }
            }
        }
        Ok(())
    }

    /// How the child joins the task cgroup before exec. On v1 it writes
    /// `0` to `tasks` of every hierarchy: moving only the calling thread
    /// (the child is single-threaded between clone and exec) skips the
    /// kernel's global threadgroup lock and its RCU grace period, which
    /// made each `cgroup.procs` write cost about a millisecond here. v2
    /// domain cgroups only take `cgroup.procs`, so there the child is
    /// cloned into the cgroup instead (see [`CgroupJoin::Into`]).
    pub(crate) fn join(&self) -> Result<CgroupJoin, (PathBuf, io::Error)> {
        // A file to write, or (v2) the directory itself.
        let open = |p: PathBuf, write: bool| {
            let flags = if write { 0 } else { libc::O_DIRECTORY };
            let opened = OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_CLOEXEC | flags)
                .open(&p);
            opened.map(OwnedFd::from).map_err(|e| (p, e))
        };
        match (self.mode, self.dirs.as_slice()) {
            (CgroupMode::V1, dirs) => dirs
                .iter()
                .map(|(_, d)| open(d.join("tasks"), true))
                .collect::<Result<_, _>>()
                .map(CgroupJoin::Write),
            (CgroupMode::V2, [(_, d)]) => open(d.clone(), false).map(CgroupJoin::Into),
            (CgroupMode::V2, _) => Err((
                PathBuf::new(),
                io::Error::other("a v2 task cgroup is one directory"),
            )),
        }
    }

    /// CPU time used by the whole task so far.
    pub(crate) fn cpu_ms(&self) -> Option<u64> {
        match self.mode {
            CgroupMode::V2 => {
                let stat = fs::read_to_string(self.dir_for("cpu")?.join("cpu.stat")).ok()?;
                keyed(&stat, "usage_usec").map(|us| us / 1000)
            }
            CgroupMode::V1 => {
                let ns = fs::read_to_string(self.dir_for("cpuacct")?.join("cpuacct.usage")).ok()?;
                ns.trim().parse::<u64>().ok().map(|ns| ns / 1_000_000)
            }
        }
    }

    /// Usage and limit events; read after the task ended, before removal.
    pub(crate) fn stats(&self) -> CgroupStats {
        let read = |controller: &str, file: &str| {
            self.dir_for(controller)
                .and_then(|d| fs::read_to_string(d.join(file)).ok())
        };
        let number = |controller: &str, file: &str| {
            read(controller, file).and_then(|s| s.trim().parse::<u64>().ok())
        };
        let pids_max_hits = read("pids", "pids.events")
            .and_then(|s| keyed(&s, "max"))
            .unwrap_or(0);
        let cpu_throttled_periods = read("cpu", "cpu.stat")
            .and_then(|s| keyed(&s, "nr_throttled"))
            .unwrap_or(0);
        match self.mode {
            CgroupMode::V2 => {
                let io = read("io", "io.stat");
                let io_sum = |key: &str| {
                    io.as_deref().map(|s| {
                        s.split_whitespace()
                            .filter_map(|kv| kv.strip_prefix(key))
                            .filter_map(|v| v.parse::<u64>().ok())
                            .sum()
                    })
                };
                CgroupStats {
                    cpu_ms: self.cpu_ms(),
                    peak_memory_bytes: number("memory", "memory.peak"),
                    io_read_bytes: io_sum("rbytes="),
                    io_write_bytes: io_sum("wbytes="),
                    oom_kills: read("memory", "memory.events")
                        .and_then(|s| keyed(&s, "oom_kill"))
                        .unwrap_or(0),
                    pids_max_hits,
                    cpu_throttled_periods,
                }
            }
            CgroupMode::V1 => {
                let io = read("blkio", "blkio.throttle.io_service_bytes_recursive");
                let io_sum = |op: &str| {
                    io.as_deref().map(|s| {
                        s.lines()
                            .filter_map(|l| {
                                let mut f = l.split_whitespace();
                                let _dev = f.next()?;
                                (f.next()? == op).then_some(f.next()?.parse::<u64>().ok()?)
                            })
                            .sum()
                    })
                };
                CgroupStats {
                    cpu_ms: self.cpu_ms(),
                    peak_memory_bytes: number("memory", "memory.max_usage_in_bytes"),
                    io_read_bytes: io_sum("Read"),
                    io_write_bytes: io_sum("Write"),
                    oom_kills: read("memory", "memory.oom_control")
                        .and_then(|s| keyed(&s, "oom_kill"))
                        .unwrap_or(0),
                    pids_max_hits,
                    cpu_throttled_periods,
                }
            }
        }
    }

    /// Pids in the task cgroup (any hierarchy holds all of them).
    fn pids(&self) -> Vec<i32> {
        self.dirs
            .first()
            .and_then(|(_, d)| fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the task cgroup, once, without waiting:
    /// atomically through `cgroup.kill` on v2, else one pidfd at a time,
    /// each checked to still be in this cgroup after it was pinned, so a
    /// reused pid is never hit. Cheap enough for async callers; [`finish`]
    /// and [`destroy`] repeat it until the cgroup is empty.
    ///
    /// [`finish`]: TaskCgroup::finish
    /// [`destroy`]: TaskCgroup::destroy
    pub(crate) fn kill_all(&self) {
        self.kill(None);
    }

    /// [`TaskCgroup::kill_all`], given the pids in the cgroup when the
    /// caller has just read them (`None`: read them, if needed).
    fn kill(&self, listed: Option<&[i32]>) {
        if self.removed.load(Ordering::SeqCst) {
            return;
        }
        if self.mode == CgroupMode::V2
            && let Some((_, d)) = self.dirs.first()
        {
            let kill = d.join("cgroup.kill");
            if kill.exists() {
                if let Err(e) = write_file(&kill, "1") {
                    tracing::warn!(error = %e, "cannot kill task cgroup");
                } else {
                    return;
                }
            }
        }
        let Some((h, d)) = self.dirs.first() else {
            return;
        };
        let Some(ours) = h.cgroup_path(d) else {
            return;
        };
        let pids = listed.map_or_else(|| self.pids(), <[i32]>::to_vec);
        for pid in pids {
            let Ok(fd) = sys::pidfd_open(pid) else {
                continue;
            };
            let inside = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .is_some_and(|s| {
                    s.lines().any(|l| {
                        let mut it = l.splitn(3, ':');
                        let _id = it.next();
                        it.next() == Some(h.proc_key.as_str()) && it.next() == Some(&ours)
                    })
                });
            if inside && let Err(e) = sys::pidfd_kill(&fd) {
                tracing::warn!(error = %e, pid, "cannot kill a sandbox process");
            }
        }
    }

    /// Kills until no process is left in the cgroup (a fork bomb may still
    /// be forking between rounds). Returns false on timeout. Blocking.
    ///
    /// Between rounds it waits on pidfds of the processes still inside for
    /// the first of them to exit, rather than sleeping: bwrap exits as
    /// soon as its pid-namespace init reports the command's status, while
    /// that init is still exiting, so the cgroup usually empties within a
    /// millisecond, and a sleep overshoots that (by up to a scheduling
    /// slice on a loaded host). At most [`ROUND`] apart, so forks made in
    /// the meantime are killed too.
    fn kill_until_empty(&self, timeout: Duration) -> bool {
        /// The longest wait between two kill rounds.
        const ROUND: Duration = Duration::from_millis(10);
        /// Most pidfds waited on at once (a fork bomb's rounds need none).
        const MAX_WAITED: usize = 16;
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.kill(Some(&pids));
            let wait = ROUND.min(deadline - now);
            let mut gone = true;
            let pidfds: Vec<OwnedFd> = pids
                .iter()
                .take(MAX_WAITED)
                .filter_map(|&pid| {
                    sys::pidfd_open(pid)
                        .inspect_err(|e| gone &= e.raw_os_error() == Some(libc::ESRCH))
                        .ok()
                })
                .collect();
            // No pidfd because all are gone already: look again at once.
            // No pidfds on this kernel, no descriptors left, or a failed
            // poll: sleep a round instead.
            let waited = if pidfds.is_empty() {
                gone
            } else {
                sys::wait_any_exited(&pidfds, wait)
                    .inspect_err(
                        |e| tracing::debug!(error = %e, "cannot wait on a task's processes"),
                    )
                    .is_ok()
            };
            if !waited {
                std::thread::sleep(wait);
            }
        }
    }

    /// After the task's main process was reaped: kills whatever is left,
    /// waits for the cgroup to empty, and returns what it measured.
    /// Blocking.
    pub(crate) fn finish(&self) -> CgroupStats {
        if !self.kill_until_empty(EMPTY_TIMEOUT) {
            tracing::warn!("processes of a finished task are still in its cgroup");
        }
        self.stats()
    }

    /// Kills whatever is left and removes the cgroup. Idempotent; blocking.
    pub(crate) fn destroy(&self) {
        if self.removed.load(Ordering::SeqCst) {
            return;
        }
        if !self.kill_until_empty(EMPTY_TIMEOUT) {
            tracing::warn!("a task cgroup does not empty; removing it will fail");
        }
        self.removed.store(true, Ordering::SeqCst);
        for (_, d) in &self.dirs {
            let mut last = None;
            for attempt in 0..20u64 {
                match fs::remove_dir(d) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        std::thread::sleep(Duration::from_millis(5 * (attempt + 1)));
                    }
                }
            }
            if let Some(e) = last {
                tracing::warn!(error = %e, cgroup = %d.display(), "cannot remove task cgroup");
            }
        }
    }
}

/// Destroys `task` on a background thread: removing a cgroup that held
/// processes may wait for the kernel (an RCU grace period per hierarchy on
/// some kernels; 0.02-0.09 ms each on the reference VM's 6.18, so one
/// thread keeps up with any rate bwrap allows), which no run should wait
/// for. The task's processes
/// are already gone ([`TaskCgroup::finish`]) or are killed again there. If
/// the gateway exits first, the next one sweeps the directory.
pub(crate) fn destroy_later(task: Arc<TaskCgroup>) {
    static REMOVER: OnceLock<Option<mpsc::Sender<Arc<TaskCgroup>>>> = OnceLock::new();
    let remover = REMOVER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<TaskCgroup>>();
        std::thread::Builder::new()
            .name("mcp-sandbox-cgroup-remover".to_owned())
            .spawn(move || {
                while let Ok(task) = rx.recv() {
                    task.destroy();
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start the cgroup remover thread"))
            .ok()
            .map(|_| tx)
    });
    match remover {
        Some(tx) => {
            if let Err(mpsc::SendError(task)) = tx.send(task) {
                task.destroy();
            }
        }
        None => task.destroy(),
    }
}

/// The value of `key` in a `key value` per line file (cpu.stat,
/// memory.events, pids.events, memory.oom_control).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
