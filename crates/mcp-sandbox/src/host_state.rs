//! What the host keeps per task ([`TaskGuard`]) and the directories the
//! sandbox binds.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cgroup::TaskCgroup;
use crate::error::SandboxError;
use crate::uids::UidLease;

/// Owns what the host keeps for one task's sandbox: its cgroup and, when
/// the gateway leases one uid per sandbox, that uid. Dropping it kills
/// whatever is still in the cgroup, hands the cgroup to a background
/// thread that removes it (a few milliseconds later), and then gives the
/// uid back. The sandbox's `/workspace` is a size-capped tmpfs that dies
/// with it; nothing of the task is kept on the host's disk.
#[derive(Debug, Default)]
pub struct TaskGuard {
    cgroup: Option<Arc<TaskCgroup>>,
    /// Dropped after `drop` killed the cgroup.
    uid_lease: Option<UidLease>,
}

impl TaskGuard {
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

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            // Kill whatever is left now; remove the cgroup in the background.
            cg.kill_all();
            crate::cgroup::destroy_later(cg);
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
/// the sockets dir with 0711 so the sandbox user can reach its own
/// task's socket there but not list the others.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<PathBuf, SandboxError> {
    fs::create_dir_all(path).map_err(ws_err(path))?;
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(ws_err(path))?;
    // bubblewrap runs from `/`, so a relative directory (the embedded
    // default `data/files`) would name a different place, or none, to it.
    fs::canonicalize(path).map_err(ws_err(path))
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
