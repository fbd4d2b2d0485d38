//! The filesystem as a sandboxed command sees it, computed on the host: which
//! bubblewrap mounts a profile turns into, and how an in-sandbox path maps
//! back onto a host path (for `resolve_command` and `denied_paths`).

use std::ffi::OsString;
use std::fs::Metadata;
use std::path::{Component, Path, PathBuf};

use crate::profile::FilesystemPolicy;

/// Symlink hops followed before giving up, as the kernel does (ELOOP).
const MAX_SYMLINK_HOPS: usize = 40;

/// One profile mount, in the order it is given to bubblewrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mount {
    /// `--ro-bind[-try] path path`; `host` is where the bind really points
    /// (the path with host symlinks resolved).
    Bind {
        path: PathBuf,
        host: PathBuf,
        required: bool,
    },
    /// `--symlink target path`: a merged-/usr style link such as
    /// `/bin -> usr/bin` whose target is itself bound.
    Symlink { path: PathBuf, target: PathBuf },
}

impl Mount {
    fn path(&self) -> &Path {
        match self {
            Mount::Bind { path, .. } | Mount::Symlink { path, .. } => path,
        }
    }
}

/// The profile's mounts on this host. A listed path that is a symlink on the
/// host whose target lies inside another bound (non-symlink) path becomes a
/// `--symlink` with the same target, so `/bin -> usr/bin` stays a link;
/// any other symlink is bound, which gives the target's content. Optional
/// paths missing on the host are left out; required ones are kept so
/// bubblewrap reports them.
pub(crate) fn plan(fs: &FilesystemPolicy) -> Vec<Mount> {
    let listed: Vec<(&PathBuf, bool)> = fs
        .ro_bind
        .iter()
        .map(|p| (p, true))
        .chain(fs.ro_bind_try.iter().map(|p| (p, false)))
        .collect();
    let real_dirs: Vec<&PathBuf> = listed
        .iter()
        .filter(|(p, _)| {
            std::fs::symlink_metadata(p)
                .map(|m| m.is_dir())
                .unwrap_or(false)
        })
        .map(|(p, _)| *p)
        .collect();

    let mut mounts = Vec::new();
    for (path, required) in listed {
        let lmeta = std::fs::symlink_metadata(path);
        match lmeta {
            Err(_) if !required => continue,
            Err(_) => mounts.push(Mount::Bind {
                path: path.clone(),
                host: path.clone(),
                required,
            }),
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(path).ok();
                let inside = target.as_ref().and_then(|t| {
                    let abs = lexical_join(path.parent().unwrap_or(Path::new("/")), t);
                    real_dirs.iter().any(|d| abs.starts_with(d)).then_some(())
                });
                match (target, inside) {
                    (Some(target), Some(())) => mounts.push(Mount::Symlink {
                        path: path.clone(),
                        target,
                    }),
                    _ => match std::fs::canonicalize(path) {
                        Ok(host) => mounts.push(Mount::Bind {
                            path: path.clone(),
                            host,
                            required,
                        }),
                        // A dangling symlink: nothing to show.
                        Err(_) if !required => {}
                        Err(_) => mounts.push(Mount::Bind {
                            path: path.clone(),
                            host: path.clone(),
                            required,
                        }),
                    },
                }
            }
            Ok(_) => mounts.push(Mount::Bind {
                path: path.clone(),
                host: path.clone(),
                required,
            }),
        }
    }
    // Parents before children: a later mount shadows an earlier one.
    mounts.sort_by_key(|m| m.path().components().count());
    mounts
}

/// `base` joined with `rel`, with `.` and `..` resolved lexically.
fn lexical_join(base: &Path, rel: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in base.join(rel).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// What a single in-sandbox path is, without following a final symlink.
#[derive(Debug)]
enum Node {
    Dir,
    Other(Metadata),
    Symlink(PathBuf),
    /// Under `/proc` or `/dev`: exists, but its content is not knowable here.
    Opaque,
    Missing,
}

/// Where an in-sandbox path leads after following symlinks.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// A directory at this in-sandbox path.
    Dir(PathBuf),
    /// A non-directory at this in-sandbox path, with its host metadata.
    File(PathBuf, Metadata),
    /// Somewhere under `/proc` or `/dev`.
    Opaque(PathBuf),
    Missing,
}

/// The sandbox's mount table, as seen from the host.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// (sandbox path, host path) binds, later ones shadow earlier ones.
    binds: Vec<(PathBuf, PathBuf)>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    /// Fresh, empty tmpfs mounts.
    empty: Vec<PathBuf>,
    opaque: Vec<PathBuf>,
}

impl View {
    /// The view of a profile's mounts only (what `resolve_command` needs).
    pub(crate) fn of_profile(mounts: &[Mount]) -> View {
        let mut v = View::default();
        for m in mounts {
            match m {
                Mount::Bind { path, host, .. } => v.binds.push((path.clone(), host.clone())),
                Mount::Symlink { path, target } => {
                    v.symlinks.push((path.clone(), target.clone()));
                }
            }
        }
        v
    }

    /// Adds the sandbox's fixed mounts: the files bind, the fresh tmpfs
    /// mounts at `/tmp` and `/workspace`, and the kernel filesystems.
    pub(crate) fn with_fixed(mut self, files: &Path) -> View {
        self.binds
            .push((PathBuf::from(mcp_core::FILES_MOUNT), files.to_path_buf()));
        self.empty.push(PathBuf::from("/tmp"));
        self.empty.push(PathBuf::from(mcp_core::WORKSPACE_MOUNT));
        self.opaque.push(PathBuf::from("/proc"));
        self.opaque.push(PathBuf::from("/dev"));
        self
    }

    #[cfg(test)]
    pub(crate) fn for_test(
        binds: Vec<(PathBuf, PathBuf)>,
        symlinks: Vec<(PathBuf, PathBuf)>,
    ) -> View {
        View {
            binds,
            symlinks,
            ..View::default()
        }
    }

    fn lookup(&self, p: &Path) -> Node {
        if let Some((_, t)) = self.symlinks.iter().rev().find(|(s, _)| s == p) {
            return Node::Symlink(t.clone());
        }
        // The deepest mount containing `p` wins, as it was mounted last.
        let depth = |m: &Path| m.components().count();
        let bind = self
            .binds
            .iter()
            .filter(|(s, _)| p.starts_with(s))
            .max_by_key(|(s, _)| depth(s));
        let empty = self
            .empty
            .iter()
            .filter(|s| p.starts_with(s))
            .max_by_key(|s| depth(s));
        let opaque = self
            .opaque
            .iter()
            .filter(|s| p.starts_with(s))
            .max_by_key(|s| depth(s));
        let best = [
            bind.map(|(s, _)| depth(s)),
            empty.map(|s| depth(s)),
            opaque.map(|s| depth(s)),
        ];
        let deepest = best.iter().flatten().max().copied();
        match deepest {
            None => {
                // Not under any mount: bubblewrap created it as a plain
                // directory only if it is an ancestor of some mount point.
                let is_ancestor = self
                    .binds
                    .iter()
                    .map(|(s, _)| s)
                    .chain(self.symlinks.iter().map(|(s, _)| s))
                    .chain(&self.empty)
                    .chain(&self.opaque)
                    .any(|s| s.starts_with(p));
                if is_ancestor {
                    Node::Dir
                } else {
                    Node::Missing
                }
            }
            Some(d) if best[2] == Some(d) => Node::Opaque,
            Some(d) if best[1] == Some(d) => match empty {
                Some(s) if s == p => Node::Dir,
                _ => Node::Missing,
            },
            Some(_) => match bind {
                Some((s, host)) => {
                    let Ok(rest) = p.strip_prefix(s) else {
                        return Node::Missing;
                    };
                    let h = if rest.as_os_str().is_empty() {
                        host.clone()
                    } else {
                        host.join(rest)
                    };
                    match std::fs::symlink_metadata(&h) {
                        Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&h) {
                            Ok(t) => Node::Symlink(t),
                            Err(_) => Node::Missing,
                        },
                        Ok(m) if m.is_dir() => Node::Dir,
                        Ok(m) => Node::Other(m),
                        Err(_) => Node::Missing,
                    }
                }
                None => Node::Missing,
            },
        }
    }

    /// Follows `path` through the view the way the kernel would inside the
    /// sandbox: symlink targets are interpreted in sandbox space, never on
    /// the host, and `..` never climbs above the sandbox root.
    pub(crate) fn resolve(&self, path: &Path) -> Resolved {
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, path);
        let mut cur = PathBuf::from("/");
        let mut hops = 0usize;
        while let Some(c) = pending.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            match self.lookup(&next) {
                Node::Dir => cur = next,
                Node::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Resolved::Missing;
                    }
                    if target.is_absolute() {
                        cur = PathBuf::from("/");
                    }
                    push_components(&mut pending, &target);
                }
                Node::Other(meta) => {
                    return if pending.is_empty() {
                        Resolved::File(next, meta)
                    } else {
                        Resolved::Missing
                    };
                }
                Node::Opaque => {
                    let mut p = next;
                    while let Some(rest) = pending.pop() {
                        p.push(rest);
                    }
                    return Resolved::Opaque(p);
                }
                Node::Missing => return Resolved::Missing,
            }
        }
        Resolved::Dir(cur)
    }
}

/// Pushes the components of `p` onto the `pending` stack so that the first
/// component is popped first. `.` and the root are dropped; `..` is kept.
fn push_components(pending: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(comps.into_iter().rev());
}
