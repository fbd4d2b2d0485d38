//! Per-task workspaces and the directories the sandbox binds.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cgroup::TaskCgroup;
use crate::error::SandboxError;
use crate::uids::UidLease;

const REMOVE_ATTEMPTS: u32 = 5;

/// Owns what the host keeps for one task: its private directory and its
/// cgroup. Dropping it kills whatever is still in the cgroup, removes the
/// directory with everything in it, and hands the cgroup to a background
/// thread that removes it (a few milliseconds later).
#[derive(Debug)]
pub struct WorkspaceGuard {
    path: PathBuf,
    cgroup: Option<Arc<TaskCgroup>>,
    /// The task's own uid, when the gateway leases one per sandbox;
    /// dropped after `drop` killed the cgroup and removed the directory.
    uid_lease: Option<UidLease>,
}

impl WorkspaceGuard {
    /// The task's private host directory (0700, owned by the sandbox user).
    /// The sandbox's `/workspace` is a size-capped tmpfs, not this
    /// directory; host-side state of the task (such as the egress proxy
    /// socket of restricted network access, later) lives here.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn cgroup(&self) -> Option<&Arc<TaskCgroup>> {
        self.cgroup.as_ref()
    }

    pub(crate) fn set_cgroup(&mut self, cgroup: TaskCgroup) {
        self.cgroup = Some(Arc::new(cgroup));
    }

    pub(crate) fn set_uid_lease(&mut self, lease: UidLease) {
        self.uid_lease = Some(lease);
    }
}

impl Drop for WorkspaceGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            // Kill whatever is left now; remove the cgroup in the background.
            cg.kill_all();
            crate::cgroup::destroy_later(cg);
        }
        // std's remove_dir_all never follows symlinks, so links the command
        // planted cannot make the gateway delete anything outside. After a
        // kill, processes of the sandbox may still be dying for a moment and
        // create entries concurrently, hence the retries.
        for attempt in 1..=REMOVE_ATTEMPTS {
            match fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if attempt == REMOVE_ATTEMPTS => tracing::warn!(
                    error = %e,
                    path = %self.path.display(),
                    "cannot remove task workspace"
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(20 * u64::from(attempt))),
            }
        }
    }
}

fn ws_err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Workspace {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates (if needed) a directory the gateway owns and sets its mode, e.g.
/// the workspaces dir with 0711 so the sandbox user can reach its own
/// workspace but not list the others.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<PathBuf, SandboxError> {
    fs::create_dir_all(path).map_err(ws_err(path))?;
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(ws_err(path))?;
    // bubblewrap runs from `/`, so a relative directory (the embedded
    // default `data/files`) would name a different place, or none, to it.
    fs::canonicalize(path).map_err(ws_err(path))
}

/// Creates a fresh private workspace `dir/name`, mode 0700, owned by `owner`.
/// Fails if it already exists: a workspace is never shared.
pub(crate) fn create_workspace(
    dir: &Path,
    name: &str,
    owner: Option<(u32, u32)>,
) -> Result<WorkspaceGuard, SandboxError> {
    let path = dir.join(name);
    DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(ws_err(&path))?;
    let guard = WorkspaceGuard {
        path,
        cgroup: None,
        uid_lease: None,
    };
    chown_and_mode(&guard.path, owner, 0o700).map_err(ws_err(&guard.path))?;
    Ok(guard)
}

/// Makes sure `root/name` exists as a real directory; a new one gets mode
/// 0700 and `owner`. An existing one is left as the operator set it.
pub(crate) fn ensure_owned_dir(
    root: &Path,
    name: &str,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, SandboxError> {
    let path = root.join(name);
    match DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => chown_and_mode(&path, owner, 0o700).map_err(ws_err(&path))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(&path).map_err(ws_err(&path))?;
            if !meta.is_dir() {
                return Err(SandboxError::Workspace {
                    path,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists but is not a directory",
                    ),
                });
            }
        }
        Err(e) => return Err(ws_err(&path)(e)),
    }
    Ok(path)
}

fn chown_and_mode(path: &Path, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    fs::set_permissions(path, Permissions::from_mode(mode))
}

/// The tenant's files directory `root/name` when sandboxes run with uids of
/// their own: owned by `owner` (the `run_as` user) and the shared sandbox
/// group, mode 2770 (group-writable, new entries inherit the group), so
/// every sandbox of the tenant, whatever its uid, can use it. A directory
/// the gateway created earlier for the single sandbox user (owned by it,
/// mode 0700) is converted; one the operator set up otherwise is left as is.
pub(crate) fn ensure_shared_dir(
    root: &Path,
    name: &str,
    owner: (u32, u32),
) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let path = ensure_owned_dir(root, name, Some(owner))?;
    let meta = fs::symlink_metadata(&path).map_err(ws_err(&path))?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() == owner.0 && (mode == 0o700 || (meta.gid() != owner.1 && mode == 0o2770)) {
        chown_and_mode(&path, Some(owner), 0o2770).map_err(ws_err(&path))?;
    }
    Ok(path)
}
