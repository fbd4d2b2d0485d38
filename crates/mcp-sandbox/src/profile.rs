//! Sandbox profiles: TOML files in `sandbox-profiles/`, parsed into raw serde
//! structs and validated into [`Profile`]s. The schema is documented in
//! `sandbox-profiles/README.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Visitor};

use crate::error::SandboxError;

/// Mount points the sandbox itself owns; a profile may not bind over them.
pub(crate) const RESERVED_MOUNTS: [&str; 5] = ["/workspace", "/files", "/tmp", "/proc", "/dev"];

/// Limits that bubblewrap itself needs to start; lower values would make every
/// command fail with a confusing bwrap error instead of a profile error.
const MIN_MEMORY_BYTES: u64 = 16 * 1024 * 1024;
const MIN_PIDS: u64 = 4;
const MIN_NOFILE: u64 = 16;

/// All validated profiles, by name. Always contains `default`.
#[derive(Debug, Clone)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
}

/// One validated sandbox profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The file stem of the profile's TOML file.
    pub name: String,
    pub description: String,
    pub filesystem: FilesystemPolicy,
    pub network: NetworkPolicy,
    pub limits: ProfileLimits,
    pub seccomp: SeccompPolicy,
    /// The base environment of every command; request env is applied on top.
    /// Always contains `PATH`.
    pub env: BTreeMap<String, String>,
}

/// What of the host filesystem the sandbox sees, besides the fixed mounts
/// (`/proc`, `/dev`, `/tmp`, `/workspace`, `/files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemPolicy {
    /// Host paths bound read-only at the same place; they must exist.
    pub ro_bind: Vec<PathBuf>,
    /// Like `ro_bind`, but skipped when missing on the host.
    pub ro_bind_try: Vec<PathBuf>,
    /// Size cap of the private `/tmp` tmpfs.
    pub tmp_size_bytes: u64,
    /// Size cap of `/workspace`, a fresh tmpfs per task (its pages count
    /// against the task's memory limit).
    pub workspace_size_bytes: u64,
}

/// The loosest network access a request may ask for; `NetworkAccess::None`
/// (an empty network namespace) is always allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Whether a request may get the host network (`NetworkAccess::Host`).
    pub allow_host: bool,
    /// Whether a request may get egress through the gateway's proxy
    /// (`NetworkAccess::Restricted`); implied by `allow_host`. Such runs
    /// need an [`crate::EgressBinding`] (`Sandbox::run_with_egress`).
    pub allow_restricted: bool,
    /// Whether `AF_INET`/`AF_INET6` sockets are allowed without network
    /// access, for programs (test suites) that talk to themselves over the
    /// namespace's loopback. Without it only `AF_UNIX` works offline.
    pub loopback: bool,
}

/// The profile's additions to the built-in seccomp filter (see
/// `sandbox-profiles/README.md`); it can only deny more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeccompPolicy {
    /// Syscalls that fail with `EPERM` on top of the built-in denials.
    pub deny: Vec<String>,
}

/// Limits applied to every command of the profile: to the whole task
/// through its cgroup, and to each process through rlimits. A request can
/// only lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLimits {
    /// cgroup `memory.max` of the task (swap 0), and RLIMIT_AS per process.
    pub memory_bytes: u64,
    /// cgroup `pids.max` of the task; RLIMIT_NPROC (counted per uid) when
    /// no pids cgroup enforces it.
    pub pids: u64,
    /// RLIMIT_NOFILE: open files per process.
    pub nofile: u64,
    /// RLIMIT_FSIZE: largest file a process may write.
    pub fsize_bytes: u64,
    /// CPU bandwidth in thousandths of a core (cgroup `cpu.max`); `None`
    /// leaves it unlimited.
    pub cpu_millicores: Option<u64>,
    /// Total CPU time of the task in seconds (all its processes, through
    /// the cgroup; RLIMIT_CPU per process as a backstop). `None`: only the
    /// wall-clock timeout bounds it.
    pub cpu_time_secs: Option<u64>,
    /// Relative I/O weight (1-10000, default 100), applied when the host's
    /// cgroups offer it.
    pub io_weight: Option<u32>,
    /// Whether the profile refuses to run without cgroup limits (memory,
    /// pids, cpu for the whole task). True unless the profile opts out.
    pub require_cgroup: bool,
}

impl Profiles {
    /// Loads and validates every `*.toml` file in `dir`. Reports every
    /// problem of every file at once, and requires a profile named `default`.
    pub fn load_dir(dir: &Path) -> Result<Profiles, SandboxError> {
        let io_err = |source| SandboxError::ProfilesDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
        files.sort();

        let mut problems = Vec::new();
        let mut by_name = BTreeMap::new();
        for path in &files {
            let file = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                problems.push(format!("{file}: file name is not valid UTF-8"));
                continue;
            };
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{file}: cannot read: {e}"));
                    continue;
                }
            };
            match Profile::from_toml(name, &text) {
                Ok(p) => {
                    by_name.insert(p.name.clone(), p);
                }
                Err(ps) => problems.extend(ps.into_iter().map(|p| format!("{file}: {p}"))),
            }
        }
        if !files
            .iter()
            .any(|f| f.file_stem().is_some_and(|s| s == "default"))
        {
            problems.push(format!(
                "{}: no profile named \"default\" (default.toml)",
                dir.display()
            ));
        }
        if problems.is_empty() {
            Ok(Profiles { by_name })
        } else {
            Err(SandboxError::BadProfile { problems })
        }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.by_name.get(name)
    }

    /// Profile names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// Only profile `name` (empty if there is none), to check one profile
    /// on its own.
    pub(crate) fn only(&self, name: &str) -> Profiles {
        Profiles {
            by_name: self
                .by_name
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect(),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.by_name.values()
    }
}

impl Profile {
    /// Parses and validates one profile. `name` is the file stem; every
    /// problem found is returned, not just the first.
    pub fn from_toml(name: &str, text: &str) -> Result<Profile, Vec<String>> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| vec![one_line(&e.to_string())])?;
        raw.validate(name)
    }
}

/// The TOML file as written. Unknown fields are errors so a typo such as
/// `ro_binds` cannot silently drop a restriction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: String,
    filesystem: RawFilesystem,
    #[serde(default)]
    network: RawNetwork,
    limits: RawLimits,
    #[serde(default)]
    seccomp: RawSeccomp,
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    #[serde(default)]
    ro_bind: Vec<String>,
    #[serde(default)]
    ro_bind_try: Vec<String>,
    tmp_size: ByteSize,
    workspace_size: ByteSize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow_host: bool,
    #[serde(default)]
    allow_restricted: bool,
    #[serde(default)]
    loopback: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: ByteSize,
    pids: u64,
    nofile: u64,
    fsize: ByteSize,
    cpus: Option<f64>,
    cpu_time_secs: Option<u64>,
    io_weight: Option<u32>,
    #[serde(default = "yes")]
    require_cgroup: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeccomp {
    #[serde(default)]
    deny: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Largest CPU bandwidth a profile may name, in cores.
const MAX_CPUS: f64 = 4096.0;

impl RawProfile {
    fn validate(self, name: &str) -> Result<Profile, Vec<String>> {
        let mut problems = Vec::new();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            problems.push(format!(
                "profile name {name:?} must be non-empty and use only a-z 0-9 - _"
            ));
        }
        if self.description.trim().is_empty() {
            problems.push("description must not be empty".to_owned());
        }

        let fs = &self.filesystem;
        let mut seen: Vec<&str> = Vec::new();
        for (field, paths) in [
            ("filesystem.ro_bind", &fs.ro_bind),
            ("filesystem.ro_bind_try", &fs.ro_bind_try),
        ] {
            for p in paths {
                if let Err(reason) = check_bind_path(p) {
                    problems.push(format!("{field}: {p:?} {reason}"));
                } else if seen.contains(&p.as_str()) {
                    problems.push(format!("{field}: {p:?} is listed more than once"));
                }
                seen.push(p);
            }
        }
        if fs.tmp_size.0 == 0 {
            problems.push("filesystem.tmp_size must be greater than 0".to_owned());
        }
        if fs.workspace_size.0 == 0 {
            problems.push("filesystem.workspace_size must be greater than 0".to_owned());
        }

        let l = &self.limits;
        for (field, value, min) in [
            ("limits.memory", l.memory.0, MIN_MEMORY_BYTES),
            ("limits.pids", l.pids, MIN_PIDS),
            ("limits.nofile", l.nofile, MIN_NOFILE),
            ("limits.fsize", l.fsize.0, 1),
        ] {
            if value < min {
                problems.push(format!("{field} is {value}, it must be at least {min}"));
            }
        }
        let cpu_millicores = match l.cpus {
            None => None,
            Some(c) if c.is_finite() && (0.01..=MAX_CPUS).contains(&c) => {
                // In range, so the rounded value fits a u64 exactly.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some((c * 1000.0).round() as u64)
            }
            Some(c) => {
                problems.push(format!(
                    "limits.cpus is {c}, it must be between 0.01 and {MAX_CPUS} cores"
                ));
                None
            }
        };
        if l.cpu_time_secs == Some(0) {
            problems.push("limits.cpu_time_secs must be at least 1".to_owned());
        }
        if let Some(w) = l.io_weight
            && !(1..=10_000).contains(&w)
        {
            problems.push(format!("limits.io_weight is {w}, it must be 1-10000"));
        }
        for name in &self.seccomp.deny {
            if !crate::seccomp::is_known_syscall(name) {
                problems.push(format!(
                    "seccomp.deny: {name:?} is not a syscall of this architecture"
                ));
            }
        }

        for (k, v) in &self.env {
            if !is_env_name(k) {
                problems.push(format!("env: {k:?} is not a valid variable name"));
            }
            if v.contains('\0') {
                problems.push(format!("env.{k} contains a NUL byte"));
            }
        }
        match self.env.get("PATH") {
            None => problems.push("env.PATH must be set".to_owned()),
            Some(path) => {
                for dir in path.split(':') {
                    if !is_clean_absolute(dir) {
                        problems.push(format!(
                            "env.PATH entry {dir:?} must be a clean absolute path"
                        ));
                    }
                }
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Profile {
            name: name.to_owned(),
            description: self.description,
            filesystem: FilesystemPolicy {
                ro_bind: self
                    .filesystem
                    .ro_bind
                    .into_iter()
                    .map(PathBuf::from)
                    .collect(),
                ro_bind_try: self
                    .filesystem
                    .ro_bind_try
                    .into_iter()
                    .map(PathBuf::from)
                    .collect(),
                tmp_size_bytes: self.filesystem.tmp_size.0,
                workspace_size_bytes: self.filesystem.workspace_size.0,
            },
            network: NetworkPolicy {
                allow_host: self.network.allow_host,
                allow_restricted: self.network.allow_restricted || self.network.allow_host,
                loopback: self.network.loopback,
            },
            limits: ProfileLimits {
                memory_bytes: self.limits.memory.0,
                pids: self.limits.pids,
                nofile: self.limits.nofile,
                fsize_bytes: self.limits.fsize.0,
                cpu_millicores,
                cpu_time_secs: self.limits.cpu_time_secs,
                io_weight: self.limits.io_weight,
                require_cgroup: self.limits.require_cgroup,
            },
            seccomp: SeccompPolicy {
                deny: self.seccomp.deny,
            },
            env: self.env,
        })
    }
}

fn check_bind_path(p: &str) -> Result<(), &'static str> {
    if !is_clean_absolute(p) {
        return Err("must be a clean absolute path (no '.', '..', '//' or trailing '/')");
    }
    if p == "/" {
        return Err("would expose the whole host filesystem");
    }
    if RESERVED_MOUNTS.iter().any(|m| Path::new(p).starts_with(m)) {
        return Err("is (under) a mount point the sandbox owns: /workspace /files /tmp /proc /dev");
    }
    Ok(())
}

/// Absolute, and spelled exactly as its normal form: no `.`, `..`, empty
/// components or trailing slash.
pub(crate) fn is_clean_absolute(p: &str) -> bool {
    if !p.starts_with('/') || p.contains('\0') {
        return false;
    }
    if p == "/" {
        return true;
    }
    let mut rebuilt = String::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => {
                rebuilt.push('/');
                rebuilt.push_str(&s.to_string_lossy());
            }
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return false,
        }
    }
    rebuilt == p
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A size in bytes: an integer, or a string such as `"64MiB"`, `"1GiB"`,
/// `"512KiB"`, `"4096"` (binary units; `K`/`M`/`G` are accepted as aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl ByteSize {
    pub(crate) fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} must start with a number"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "size {s:?} has unknown unit {other:?} (use B, KiB, MiB, GiB or TiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (integer) or a string such as \"64MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {v} must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}
