//! [`FilesRoot`]: the gateway's own reads, writes and deletes in a tenant's
//! files root, the same directory sandboxed commands see at `/files`.
//!
//! Those commands can plant anything there (symlinks to `/etc/shadow`, to
//! `../other-tenant`, FIFOs), and the gateway may run as root. Every access
//! therefore goes through a `cap_std::fs::Dir` for the tenant directory:
//! path resolution can never leave it, whatever the links say.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use mcp_core::ValidFile;

use crate::error::FileError;
use crate::sandbox::is_valid_tenant;

/// Tenant files roots at `root/<tenant>`, accessed without ever following a
/// path outside the tenant directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FilesRoot {
    root: Arc<Dir>,
    owner: Option<(u32, u32)>,
    max_read_bytes: u64,
}

impl FilesRoot {
    /// Opens (creating if needed, mode 0711) the directory holding every
    /// tenant's files. `owner` gets new files and directories (the sandbox
    /// user, so commands can use what the gateway wrote); reads refuse files
    /// larger than `max_read_bytes`.
    pub fn new(
        root: PathBuf,
        owner: Option<(u32, u32)>,
        max_read_bytes: u64,
    ) -> Result<FilesRoot, FileError> {
        let io_err = |source| FileError::Io {
            path: root.display().to_string(),
            source,
        };
        if !root.is_dir() {
            std::fs::create_dir_all(&root).map_err(io_err)?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
                .map_err(io_err)?;
        }
        let dir = Dir::open_ambient_dir(&root, cap_std::ambient_authority()).map_err(io_err)?;
        Ok(FilesRoot {
            root: Arc::new(dir),
            owner,
            max_read_bytes,
        })
    }

    /// Reads a whole regular file.
    pub async fn read(&self, tenant: &str, f: &ValidFile) -> Result<Vec<u8>, FileError> {
        let this = self.clone();
        let tenant = tenant.to_owned();
        let path = f.path.clone();
        blocking(move || this.read_blocking(&tenant, &path)).await
    }

    /// Writes `content` to a file (created or truncated), sets its mode to
    /// `f.mode` and returns the bytes written. Missing parent directories
    /// are created only with `create_dirs`.
    pub async fn write(
        &self,
        tenant: &str,
        f: &ValidFile,
        content: &[u8],
        create_dirs: bool,
    ) -> Result<u64, FileError> {
        let this = self.clone();
        let tenant = tenant.to_owned();
        let path = f.path.clone();
        let mode = f.mode & 0o777;
        let content = content.to_vec();
        blocking(move || this.write_blocking(&tenant, &path, mode, &content, create_dirs)).await
    }

    /// Deletes a file or symlink (the link, never its target), or a
    /// directory: an empty one, or any with `f.recursive`.
    pub async fn delete(&self, tenant: &str, f: &ValidFile) -> Result<(), FileError> {
        let this = self.clone();
        let tenant = tenant.to_owned();
        let path = f.path.clone();
        let recursive = f.recursive;
        blocking(move || this.delete_blocking(&tenant, &path, recursive)).await
    }

    fn tenant_dir(&self, tenant: &str, create: bool) -> Result<Dir, FileError> {
        if !is_valid_tenant(tenant) {
            return Err(FileError::BadTenant {
                tenant: tenant.chars().take(80).collect(),
            });
        }
        let err = |e| map_io(".", e);
        match self.root.open_dir(tenant) {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                match self.root.create_dir(tenant) {
                    Ok(()) => {
                        self.own_dir(&self.root, Path::new(tenant), 0o700)
                            .map_err(err)?;
                        self.root.open_dir(tenant).map_err(err)
                    }
                    // Created concurrently by a run of the same tenant.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.root.open_dir(tenant).map_err(err)
                    }
                    Err(e) => Err(err(e)),
                }
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Gives a new file or directory to the owner and sets its mode.
    fn own<F: std::os::fd::AsFd>(&self, f: &F, mode: u32) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
        }
        let file = std::fs::File::from(f.as_fd().try_clone_to_owned()?);
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Gives a directory this call just created to the owner. cap-std's
    /// directory handles are `O_PATH`, which fchown/fchmod refuse, so the
    /// directory is opened for reading, without following a final symlink.
    fn own_dir(&self, parent: &Dir, name: &Path, mode: u32) -> io::Result<()> {
        let d = parent.open_with(
            name,
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW),
        )?;
        self.own(&d, mode)
    }

    fn read_blocking(&self, tenant: &str, path: &str) -> Result<Vec<u8>, FileError> {
        let rel = clean_relative(path)?;
        let dir = self.tenant_dir(tenant, false).map_err(|e| match e {
            FileError::NotFound { .. } => FileError::NotFound {
                path: path.to_owned(),
            },
            other => other,
        })?;
        let (file, meta) = open_regular(&dir, &rel, path, OpenOptions::new().read(true))?;
        let max = self.max_read_bytes;
        if meta.len() > max {
            return Err(FileError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
                max,
            });
        }
        let mut data = Vec::new();
        // The file may grow while we read; never read more than the cap.
        file.into_std()
            .take(max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| map_io(path, e))?;
        let len = data.len() as u64;
        if len > max {
            return Err(FileError::TooLarge {
                path: path.to_owned(),
                size: len,
                max,
            });
        }
        Ok(data)
    }

    fn write_blocking(
        &self,
        tenant: &str,
        path: &str,
        mode: u32,
        content: &[u8],
        create_dirs: bool,
    ) -> Result<u64, FileError> {
        let rel = clean_relative(path)?;
        let dir = self.tenant_dir(tenant, true)?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            if create_dirs {
                self.create_parents(&dir, parent, path)?;
            } else {
                match dir.metadata(parent) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(FileError::NotADirectory {
                            path: parent.display().to_string(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(FileError::ParentMissing {
                            path: path.to_owned(),
                        });
                    }
                    Err(e) => return Err(map_io(path, e)),
                }
            }
        }

        let created = dir.open_with(
            &rel,
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NONBLOCK),
        );
        let file = match created {
            Ok(file) => {
                self.own(&file, mode).map_err(|e| map_io(path, e))?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let (file, _) = open_regular(&dir, &rel, path, OpenOptions::new().write(true))?;
                file.set_len(0).map_err(|e| map_io(path, e))?;
                file
            }
            Err(e) => return Err(map_io(path, e)),
        };
        let mut file = file.into_std();
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| map_io(path, e))?;
        // The fd was opened non-blocking, which regular files ignore.
        file.write_all(content).map_err(|e| map_io(path, e))?;
        file.flush().map_err(|e| map_io(path, e))?;
        Ok(content.len() as u64)
    }

    fn create_parents(&self, dir: &Dir, parent: &Path, path: &str) -> Result<(), FileError> {
        let mut prefix = PathBuf::new();
        for c in parent.components() {
            prefix.push(c);
            match dir.create_dir(&prefix) {
                Ok(()) => self
                    .own_dir(dir, &prefix, 0o755)
                    .map_err(|e| map_io(path, e))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Might be a file or a symlink; opening below reports it.
                }
                Err(e) => return Err(map_io(&prefix.display().to_string(), e)),
            }
        }
        Ok(())
    }

    fn delete_blocking(&self, tenant: &str, path: &str, recursive: bool) -> Result<(), FileError> {
        let rel = clean_relative(path)?;
        let dir = self.tenant_dir(tenant, false).map_err(|e| match e {
            FileError::NotFound { .. } => FileError::NotFound {
                path: path.to_owned(),
            },
            other => other,
        })?;
        // Does not follow a final symlink: deleting a link removes the link.
        let meta = dir.symlink_metadata(&rel).map_err(|e| map_io(path, e))?;
        let r = if meta.is_dir() {
            if recursive {
                dir.remove_dir_all(&rel)
            } else {
                dir.remove_dir(&rel)
            }
        } else {
            dir.remove_file(&rel)
        };
        r.map_err(|e| map_io(path, e))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FileError::Io {
            path: String::new(),
            source: io::Error::other(e),
        })?
}

/// `ValidFile` paths are already clean; this is a second line of defence.
fn clean_relative(path: &str) -> Result<PathBuf, FileError> {
    let escape = || FileError::Escape {
        path: path.to_owned(),
    };
    if path.is_empty() || path.contains('\0') {
        return Err(escape());
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escape());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(escape());
    }
    Ok(out)
}

/// Opens the existing `rel` of `dir` (shown as `path`) with `options`,
/// non-blocking so that a planted FIFO cannot hang the gateway (regular
/// files ignore the flag), and refuses anything but a regular file.
fn open_regular(
    dir: &Dir,
    rel: &Path,
    path: &str,
    options: &mut OpenOptions,
) -> Result<(cap_std::fs::File, cap_std::fs::Metadata), FileError> {
    let file = dir
        .open_with(rel, options.custom_flags(libc::O_NONBLOCK))
        .map_err(|e| map_io(path, e))?;
    let meta = file.metadata().map_err(|e| map_io(path, e))?;
    if meta.is_dir() {
        return Err(FileError::IsADirectory {
            path: path.to_owned(),
        });
    }
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    Ok((file, meta))
}

fn not_regular(path: &str) -> FileError {
    FileError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
    }
}

fn map_io(path: &str, e: io::Error) -> FileError {
    let path = path.to_owned();
    // cap-std reports a resolution that would leave the directory as a
    // synthetic PermissionDenied without an errno; the kernel's EXDEV from
    // openat2(RESOLVE_BENEATH) is mapped to the same error.
    if e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_none() {
        return FileError::Escape { path };
    }
    match e.raw_os_error() {
        Some(libc::ENOENT) => FileError::NotFound { path },
        Some(libc::EISDIR) => FileError::IsADirectory { path },
        Some(libc::ENOTDIR) => FileError::NotADirectory { path },
        Some(libc::ENOTEMPTY) => FileError::DirectoryNotEmpty { path },
        Some(libc::EXDEV) => FileError::Escape { path },
        _ if e.kind() == io::ErrorKind::NotFound => FileError::NotFound { path },
        _ => FileError::Io { path, source: e },
    }
}
