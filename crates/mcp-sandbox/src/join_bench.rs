//! What joining a v2 task cgroup costs a spawn, for `cargo xtask bench`:
//! the bench host may run its sandboxes in v1 hierarchies (a hybrid host)
//! while production hosts are pure v2, so this measures the v2 way on its
//! own, in this host's v2 hierarchy (on a hybrid host the controller-less
//! `unified` mount, where cgroups still take processes).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
#[cfg(feature = "bench")]
use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::cgroup;
#[cfg(feature = "bench")]
use crate::sys::{self, CgroupJoin, ChildSetup, Spawn};

/// A fresh cgroup in this host's v2 hierarchy, under this process's own v2
/// cgroup; removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchV2Cgroup {
    pub(crate) dir: PathBuf,
    /// As `/proc/<pid>/cgroup` shows it (`0::<path>`); the tests check it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) path: String,
}

impl ScratchV2Cgroup {
    /// `<own v2 cgroup>/mcp-<name>-<pid>`. Fails without a v2 hierarchy
    /// or the right to create cgroups in it.
    pub(crate) fn new(name: &str) -> io::Result<Self> {
        let (own_dir, own_path) = cgroup::own_v2_cgroup()?;
        let leaf = format!("mcp-{name}-{}", std::process::id());
        let dir = own_dir.join(&leaf);
        std::fs::create_dir(&dir)?;
        let path = format!("{}/{leaf}", own_path.trim_end_matches('/'));
        Ok(Self { dir, path })
    }

    pub(crate) fn open(&self) -> io::Result<OwnedFd> {
        std::fs::File::open(&self.dir).map(OwnedFd::from)
    }
}

impl Drop for ScratchV2Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Spawn latencies of `/bin/true` (from the clone to its exec), one list
/// per way of entering a v2 cgroup.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Default)]
pub struct JoinLatencies {
    /// No cgroup at all: the baseline.
    pub none: Vec<Duration>,
    /// The child writes itself into `cgroup.procs` (what a v2 host paid
    /// before, and still pays on kernels before 5.7).
    pub procs_write: Vec<Duration>,
    /// The child is cloned into the cgroup (`clone3` with
    /// `CLONE_INTO_CGROUP`), as sandboxes are on v2 hosts now.
    pub clone_into: Vec<Duration>,
}

/// Spawns `/bin/true` `n` times each way, rounds interleaved, `gap` apart
/// (a `cgroup.procs` write pays an RCU grace period when writes are not
/// back to back), each into a fresh cgroup as a task would be. Fails
/// without a writable v2 hierarchy (run as root).
#[cfg(feature = "bench")]
pub fn v2_join_latencies(n: usize, gap: Duration) -> io::Result<JoinLatencies> {
    let program = Path::new("/bin/true");
    let mut out = JoinLatencies::default();
    for i in 0..n {
        for way in 0..3 {
            let cg = ScratchV2Cgroup::new(&format!("join-bench-{i}-{way}"))?;
            let cgroup = match way {
                0 => CgroupJoin::None,
                1 => CgroupJoin::Write(vec![sys::procs_file_of(&cg.open()?)?]),
                _ => CgroupJoin::Into(cg.open()?),
            };
            let setup = ChildSetup {
                cgroup,
                ..ChildSetup::none()
            };
            let spawn = Spawn::new(program, Vec::<&str>::new(), setup)?;
            std::thread::sleep(gap);
            let started = Instant::now();
            let child = spawn.spawn()?;
            let took = started.elapsed();
            sys::reap(child.pid)?;
            match way {
                0 => out.none.push(took),
                1 => out.procs_write.push(took),
                _ => out.clone_into.push(took),
            }
        }
    }
    Ok(out)
}
