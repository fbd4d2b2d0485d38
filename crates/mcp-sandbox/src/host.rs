//! What this host offers the sandbox, and which profiles it can enforce:
//! the report behind `mcp-gateway sandbox check`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::cgroup::Cgroups;
use crate::pool::PoolSettings;
use crate::profile::Profiles;
use crate::sandbox::{Sandbox, SandboxSettings};
use crate::uids::UidRange;
use crate::{seccomp, sys};

/// bubblewrap releases older than this lack options the sandbox relies on
/// (`--disable-userns`).
const MIN_BWRAP: (u32, u32) = (0, 8);

/// One host feature: whether it is usable, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feature {
    pub ok: bool,
    pub detail: String,
}

impl Feature {
    fn ok(detail: impl Into<String>) -> Feature {
        Feature {
            ok: true,
            detail: detail.into(),
        }
    }

    fn missing(detail: impl Into<String>) -> Feature {
        Feature {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Whether one profile can be enforced here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileReport {
    pub name: String,
    /// A sandbox of this profile really started with its seccomp filter,
    /// cgroup and limits.
    pub enforceable: bool,
    /// Why not, and what to change.
    pub problems: Vec<String>,
    /// What holds but is worth knowing (e.g. requests the profile allows
    /// that are refused for now).
    pub notes: Vec<String>,
}

/// What of the configuration beyond the profiles `sandbox check` reports:
/// what `serve` gives [`Sandbox::set_uid_range`] and
/// [`Sandbox::enable_pool`].
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// `sandbox.uid_range`.
    pub uid_range: Option<UidRange>,
    /// `[sandbox.pool]`, when it pools any profile.
    pub pool: Option<PoolSettings>,
}

/// `sandbox.uid_range` as configured, and whether sandboxes get its uids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UidRangeReport {
    pub start: u32,
    /// The last uid of the range.
    pub end: u32,
    /// How many uids: one per running (or pooled, waiting) sandbox, so at
    /// most this many sandboxes exist at once.
    pub count: u32,
    /// Sandboxes get uids of the range only when the gateway runs as root
    /// (it cannot switch users otherwise; `serve` then ignores the range).
    pub used: bool,
    /// What `serve` would refuse.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// `[sandbox.pool]` as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolReport {
    /// Pre-started sandboxes per (profile, tenant), by profile.
    pub sizes: BTreeMap<String, usize>,
    /// Most pre-started sandboxes over all profiles and tenants.
    pub max_total: usize,
    /// The stub executable on the host.
    pub stub: String,
    /// What `serve` would refuse (unknown profile, stub not executable, …).
    pub problems: Vec<String>,
}

/// Everything `mcp-gateway sandbox check` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub bwrap: Feature,
    pub user_namespaces: Feature,
    pub seccomp: Feature,
    pub cgroups: Feature,
    /// Informational: no profile uses landlock yet.
    pub landlock: Feature,
    /// Informational: the size of the mount table bubblewrap starts from,
    /// which every sandbox start pays for (see [`mount_table`]).
    pub mount_table: Feature,
    pub profiles: Vec<ProfileReport>,
    /// `None` when no range is set: every sandbox runs as the `run_as` uid.
    pub uid_range: Option<UidRangeReport>,
    /// `None` when no profile is pooled: every sandbox starts cold.
    pub pool: Option<PoolReport>,
}

impl HostReport {
    /// True when every profile can be enforced on this host.
    pub fn all_enforceable(&self) -> bool {
        self.profiles.iter().all(|p| p.enforceable)
    }

    /// True when `serve` would start with this configuration: every
    /// profile enforceable, and the uid range and pool accepted.
    pub fn passes(&self) -> bool {
        self.all_enforceable()
            && self
                .uid_range
                .as_ref()
                .is_none_or(|r| r.problems.is_empty())
            && self.pool.as_ref().is_none_or(|p| p.problems.is_empty())
    }
}

/// The uid range as `serve` would use it with `settings` and `pool`.
fn uid_range_report(
    range: UidRange,
    settings: &SandboxSettings,
    pool: Option<&PoolSettings>,
) -> UidRangeReport {
    let used = settings.run_as.is_some();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = range.validate() {
        problems.push(e);
    }
    match settings.run_as {
        Some((uid, _)) if range.contains(uid) => problems.push(format!(
            "the range contains the run_as uid {uid}, which the gateway's own files use"
        )),
        Some(_) => {}
        None => notes.push(
            "not used: the gateway is not root and cannot switch users; every sandbox runs \
             as the gateway's user"
                .to_owned(),
        ),
    }
    if let Some(p) = pool.filter(|_| used) {
        let count = usize::try_from(range.count).unwrap_or(usize::MAX);
        if p.max_total >= count {
            notes.push(format!(
                "the warm pool may hold up to {} waiting sandboxes, each with a uid of the \
                 range: tasks find no free uid while it is full",
                p.max_total
            ));
        }
    }
    UidRangeReport {
        start: range.start,
        end: range.start.saturating_add(range.count.saturating_sub(1)),
        count: range.count,
        used,
        problems,
        notes,
    }
}

/// Probes the host (read-only, except for starting one `true` per profile
/// in a real sandbox) and reports which profiles can be enforced, and how
/// `options` (uid range, warm pool) would be used.
pub async fn probe_host(
    settings: SandboxSettings,
    profiles: Profiles,
    options: &HostOptions,
) -> HostReport {
    let uid_range = options
        .uid_range
        .map(|r| uid_range_report(r, &settings, options.pool.as_ref()));
    let pool = options.pool.as_ref().map(|p| PoolReport {
        sizes: p.sizes.clone(),
        max_total: p.max_total,
        stub: p.stub.display().to_string(),
        problems: p.check(&profiles).1,
    });
    let bwrap_path = settings.bwrap.clone();
    let bwrap = tokio::task::spawn_blocking(move || probe_bwrap(&bwrap_path))
        .await
        .unwrap_or_else(|e| Feature::missing(format!("probe failed: {e}")));
    let names: Vec<String> = profiles.names().iter().map(|n| (*n).to_owned()).collect();
    let notes_of = |name: &str| {
        let mut notes = Vec::new();
        if let Some(p) = profiles.get(name) {
            if p.network.allow_restricted {
                notes.push(
                    "allows network \"restricted\" (egress through the gateway's proxy)".to_owned(),
                );
            }
            if !p.limits.require_cgroup && Cgroups::for_this_process().is_err() {
                notes.push("runs with per-process rlimits only (no cgroup here)".to_owned());
            }
        }
        notes
    };
    let notes: Vec<Vec<String>> = names.iter().map(|n| notes_of(n)).collect();

    // Each profile on its own, so a problem is reported against the
    // profile that has it.
    let mut reports = Vec::new();
    let mut lean = None;
    for (name, notes) in names.into_iter().zip(notes) {
        let problems = match Sandbox::new(settings.clone(), profiles.only(&name)) {
            Err(e) => vec![e.to_string()],
            Ok(sandbox) => {
                lean = lean.max(sandbox.lean_mounts());
                match sandbox.check_profile(&name).await {
                    Ok(()) => Vec::new(),
                    Err(e) => vec![e.to_string()],
                }
            }
        };
        reports.push(ProfileReport {
            enforceable: problems.is_empty(),
            name,
            problems,
            notes,
        });
    }

    HostReport {
        bwrap,
        user_namespaces: probe_userns(),
        seccomp: probe_seccomp(),
        cgroups: match Cgroups::for_this_process() {
            Ok(c) => Feature::ok(format!(
                "{}: {} (task cgroups under {})",
                c.mode(),
                c.controllers().join(", "),
                c.dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(reason) => Feature::missing(reason.clone()),
        },
        landlock: match sys::landlock_abi() {
            Ok(v) => Feature::ok(format!("ABI v{v} (not used by profiles yet)")),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                Feature::missing("unknown: the kernel has no landlock (ENOSYS)")
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Feature::missing("disabled at boot (add landlock to the lsm= kernel parameter)")
            }
            Err(e) => Feature::missing(format!("unknown: {e}")),
        },
        mount_table: mount_table(
            std::fs::read_to_string("/proc/self/mountinfo")
                .map(|s| s.lines().count())
                .ok(),
            lean,
        ),
        profiles: reports,
        uid_range,
        pool,
    }
}

fn probe_bwrap(path: &std::path::Path) -> Feature {
    // Through `Spawn` like every bwrap of the gateway, so the orphan reaper
    // knows it is owned (see `sys::reap_orphans`).
    let out = sys::Spawn::new(path, ["--version"], sys::ChildSetup::none()).and_then(sys::output);
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return Feature::missing(format!(
                "{} --version failed ({}): install bubblewrap 0.8+",
                path.display(),
                o.status
            ));
        }
        Err(e) => {
            return Feature::missing(format!(
                "{} cannot run ({e}): `apt-get install bubblewrap` (0.8+)",
                path.display()
            ));
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match parse_bwrap_version(&text) {
        Some(v) if v >= MIN_BWRAP => Feature::ok(format!("{text} ({})", path.display())),
        Some(_) => Feature::missing(format!(
            "{text} is too old: 0.8 or newer is needed for --disable-userns"
        )),
        None => Feature::missing(format!("cannot read the version from {text:?}")),
    }
}

/// `"bubblewrap 0.8.0"` → `(0, 8)`.
pub(crate) fn parse_bwrap_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().last()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn probe_userns() -> Feature {
    let max = read_trim("/proc/sys/user/max_user_namespaces");
    let clone = read_trim("/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    match max.as_deref().map(str::parse::<u64>) {
        None => return Feature::missing("the kernel has no user namespaces"),
        Some(Ok(0)) => {
            return Feature::missing("disabled: set sysctl user.max_user_namespaces > 0");
        }
        Some(_) => {}
    }
    if clone.as_deref() == Some("0") {
        return Feature::missing("disabled: set sysctl kernel.unprivileged_userns_clone=1");
    }
    if apparmor.as_deref() == Some("1") {
        return Feature::missing(
            "restricted by AppArmor: set sysctl kernel.apparmor_restrict_unprivileged_userns=0 \
             or give bwrap an AppArmor profile allowing userns",
        );
    }
    Feature::ok(format!(
        "user.max_user_namespaces = {}",
        max.unwrap_or_default()
    ))
}

/// Above this many mounts, `sandbox check` flags the mount table.
pub const MANY_MOUNTS: usize = 200;

/// How the gateway's mount table (`count` mounts) bears on sandbox
/// start-up. bubblewrap copies the table it starts from into each
/// sandbox's mount namespace and re-reads it once per bind of the profile
/// (to make submounts read-only), so every start costs CPU in proportion to
/// it: on the reference VM ≈ 3.5-4 ms per 100 mounts with the `default`
/// profile, against ≈ 8 ms for a start with the 20 mounts of a plain host
/// (docs/PERFORMANCE.md). Hosts running containers often have hundreds.
/// The gateway starts bubblewrap in a lean namespace (`lean` mounts, see
/// `crate::lean`; unprivileged, inside a user namespace of its own) and the
/// host's count no longer matters; without one (a host that refuses the
/// gateway a user namespace) a large table is flagged.
pub(crate) fn mount_table(count: Option<usize>, lean: Option<usize>) -> Feature {
    match (count, lean) {
        (None, _) => Feature::missing("unknown: /proc/self/mountinfo is not readable"),
        (Some(n), Some(m)) => Feature::ok(format!(
            "{n} mounts; bubblewrap starts in a lean namespace of {m} mounts"
        )),
        (Some(n), None) if n > MANY_MOUNTS => Feature::missing(format!(
            "{n} mounts: every sandbox start reads them once per bind of its profile, \
             ≈ 3.5 ms of CPU per 100 mounts per start, and the gateway could not build \
             its lean mount namespace (see its log); let it create user namespaces, or run \
             it in its own container"
        )),
        (Some(n), None) => Feature::ok(format!("{n} mounts")),
    }
}

fn probe_seccomp() -> Feature {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        return Feature::missing("the kernel has no seccomp (CONFIG_SECCOMP_FILTER)");
    }
    let actions = read_trim("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    for needed in ["errno", "kill_process", "allow"] {
        if !actions.split_whitespace().any(|a| a == needed) {
            return Feature::missing(format!(
                "the kernel's seccomp lacks the {needed} action (has: {actions})"
            ));
        }
    }
    Feature::ok(format!(
        "filters with actions {actions}; libseccomp {}",
        seccomp::libseccomp_version()
    ))
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, name: &str, feat: &Feature| {
            let mark = if feat.ok { "ok" } else { "--" };
            writeln!(f, "{name:<16} {mark:<3} {}", feat.detail)
        };
        line(f, "bubblewrap", &self.bwrap)?;
        line(f, "user namespaces", &self.user_namespaces)?;
        line(f, "seccomp", &self.seccomp)?;
        line(f, "cgroups", &self.cgroups)?;
        line(f, "landlock", &self.landlock)?;
        line(f, "mount table", &self.mount_table)?;
        writeln!(f, "profiles:")?;
        for p in &self.profiles {
            let verdict = if p.enforceable {
                "enforceable"
            } else {
                "NOT ENFORCEABLE"
            };
            writeln!(f, "  {:<20} {verdict}", p.name)?;
            for problem in &p.problems {
                writeln!(f, "    problem: {problem}")?;
            }
            for note in &p.notes {
                writeln!(f, "    note: {note}")?;
            }
        }
        match &self.uid_range {
            None => writeln!(f, "uid range        not set: every sandbox runs as one uid")?,
            Some(r) => {
                let usage = if r.used {
                    "one per sandbox"
                } else {
                    "NOT USED (not root)"
                };
                writeln!(
                    f,
                    "uid range        {}-{}: {} uids, {usage}",
                    r.start, r.end, r.count
                )?;
                for problem in &r.problems {
                    writeln!(f, "    problem: {problem}")?;
                }
                for note in &r.notes {
                    writeln!(f, "    note: {note}")?;
                }
            }
        }
        match &self.pool {
            None => writeln!(f, "warm pool        off: every sandbox starts cold")?,
            Some(p) => {
                let sizes = p
                    .sizes
                    .iter()
                    .map(|(name, n)| format!("{name}={n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                writeln!(
                    f,
                    "warm pool        {sizes} per (profile, tenant); at most {} in all; stub {}",
                    p.max_total, p.stub
                )?;
                for problem in &p.problems {
                    writeln!(f, "    problem: {problem}")?;
                }
            }
        }
        Ok(())
    }
}
