//! `cargo xtask image`: a distroless OCI image, built without a daemon.
//!
//! The root file system holds the staged release binary (the same bytes as
//! the packages), bubblewrap, the everyday tools the default policy allows
//! (coreutils, grep, find; not python3, not a shell), exactly the shared
//! libraries they load (found with `ldd`, copied from this Debian host's
//! packages, with those packages' copyright files and a `status.d` entry per
//! package as Google's distroless images have), CA certificates, the
//! container configuration, the policies and the profiles. No shell, no
//! package manager. `umoci` packs it into an OCI layout that is written as
//! an OCI archive to `<target>/dist/`; `--rootfs DIR` only assembles the root
//! file system (the `Containerfile` uses that).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::dist::{self, Staged};
use crate::util::{Opts, capture, repo, run, source_date_epoch};

/// uid and gid the gateway runs as (distroless' `nonroot`).
pub const UID: u32 = 65532;

/// Commands of the default policy's allow-list that the image carries.
/// python3 is left out: it would triple the image. Derived images add
/// tools (and policies) of their own.
const TOOLS: &[&str] = &[
    "basename", "cat", "cut", "date", "dirname", "echo", "env", "false", "find", "grep", "head",
    "id", "ls", "printf", "pwd", "seq", "sleep", "sort", "stat", "tail", "tr", "true", "uname",
    "uniq", "wc",
];

pub fn main(opts: &Opts) -> anyhow::Result<()> {
    let staged = dist::stage(opts)?;
    if let Some(dir) = &opts.rootfs {
        return assemble(&staged, dir);
    }
    if fs::metadata("/proc/self")?.uid() != 0 {
        bail!("cargo xtask image runs as root: the image's files belong to root and uid {UID}");
    }
    if Command::new("umoci").arg("--version").output().is_err() {
        bail!("umoci is missing: run scripts/bootstrap.sh");
    }

    let work = staged.target_dir.join("image");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let layout = work.join("oci");
    let image = format!("{}:{}", layout.display(), staged.version);
    let bundle = work.join("bundle");
    let created = created_at()?;

    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    assemble(&staged, &bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .args(["--history.created", &created])
        .args(["--history.created_by", "cargo xtask image"])
        .arg(&bundle))?;
    let user = format!("{UID}:{UID}");
    let version_label = format!("org.opencontainers.image.version={}", staged.version);
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--created",
        &created,
        "--history.created",
        &created,
        "--history.created_by",
        "cargo xtask image (config)",
        "--architecture",
        &oci_arch()?,
        "--os",
        "linux",
        "--config.user",
        &user,
        "--config.entrypoint",
        "/usr/bin/mcp-gateway",
        "--config.cmd",
        "serve",
        "--config.workingdir",
        "/var/lib/mcp-gateway",
        "--config.exposedports",
        "8081/tcp",
        "--config.env",
        "PATH=/usr/bin:/bin",
        "--config.env",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        // Two malloc arenas: RSS stays flat over long runs (PERFORMANCE.md).
        "--config.env",
        "MALLOC_ARENA_MAX=2",
        "--config.label",
        "org.opencontainers.image.title=mcp-gateway",
        "--config.label",
        "org.opencontainers.image.description=Policy-checked commands in bubblewrap sandboxes (distroless)",
        "--config.label",
        "org.opencontainers.image.licenses=Apache-2.0",
        "--config.label",
        "org.opencontainers.image.source=https://github.com/mcp-security-gateway/mcp-security-gateway",
        "--config.label",
        &version_label,
    ]))?;
    run(Command::new("umoci").arg("gc").arg("--layout").arg(&layout))?;

    let out = staged.out_dir();
    fs::create_dir_all(&out)?;
    let archive = out.join(format!("mcp-gateway-{}.oci.tar", staged.version));
    // An OCI archive is a tar of the layout (`oci-archive:` for podman,
    // skopeo and buildah).
    run(Command::new("tar")
        .arg("--sort=name")
        .arg(format!("--mtime=@{}", source_date_epoch()?))
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg("."))?;

    let rootfs_bytes = du_bytes(&bundle.join("rootfs"))?;
    let archive_bytes = fs::metadata(&archive)?.len();
    println!("{}", archive.display());
    println!(
        "image {}: root file system {:.1} MiB, OCI archive (gzip layer) {:.1} MiB",
        staged.version,
        mib(rootfs_bytes),
        mib(archive_bytes)
    );
    Ok(())
}

/// Assembles the image's root file system in `root` (created, must not
/// exist or be empty).
fn assemble(staged: &Staged, root: &Path) -> anyhow::Result<()> {
    let repo = repo();
    if root.exists() && fs::read_dir(root)?.next().is_some() {
        bail!("{} is not empty", root.display());
    }
    // Merged /usr, as Debian: /bin, /lib, /lib64, /sbin are links.
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "usr/share/doc",
        "etc/ssl/certs",
        "etc/mcp-gateway/policies",
        "etc/mcp-gateway/sandbox-profiles",
        "var/lib/dpkg/status.d",
        "proc",
        "sys",
        "dev",
        "run",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link))?;
    }
    // bwrap mounts its temporary root on /tmp; the gateway may write there.
    fs::create_dir_all(root.join("tmp"))?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;

    // Executables, then every library they load.
    let mut host_files: Vec<PathBuf> = Vec::new();
    let gateway = root.join("usr/bin/mcp-gateway");
    fs::copy(staged.binary(), &gateway)?;
    let mut elves = vec![(staged.binary(), gateway)];
    host_files.push("/usr/bin/bwrap".into());
    for tool in TOOLS {
        host_files.push(find_tool(tool)?);
    }
    for src in &host_files {
        let name = src.file_name().context("tool without a name")?;
        let dst = root.join("usr/bin").join(name);
        fs::copy(src, &dst).with_context(|| format!("copy {}", src.display()))?;
        elves.push((src.clone(), dst));
    }
    let mut libs = BTreeSet::new();
    for (src, _) in &elves {
        libs.extend(shared_libraries(src)?);
    }
    for lib in &libs {
        let dst = root.join(in_usr(lib));
        fs::create_dir_all(dst.parent().context("library at /")?)?;
        fs::copy(lib, &dst).with_context(|| format!("copy {}", lib.display()))?;
    }
    host_files.extend(libs.iter().cloned());

    // Configuration, policies and profiles.
    fs::copy(
        repo.join("packaging/container/config.toml"),
        root.join("etc/mcp-gateway/config.toml"),
    )?;
    for e in fs::read_dir(repo.join("policies"))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".rego") || name == "data.json" {
            fs::copy(&p, root.join("etc/mcp-gateway/policies").join(name))?;
        }
    }
    for e in fs::read_dir(repo.join("sandbox-profiles"))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".toml") {
            let text = fs::read_to_string(&p)?;
            fs::write(
                root.join("etc/mcp-gateway/sandbox-profiles").join(name),
                container_profile(&text),
            )?;
        }
    }

    // Users, name service, certificates, OS identity.
    fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
             nonroot:x:{UID}:{UID}:mcp-gateway:/var/lib/mcp-gateway:/sbin/nologin\n"
        ),
    )?;
    fs::write(
        root.join("etc/group"),
        format!("root:x:0:\nnobody:x:65534:\nnonroot:x:{UID}:\n"),
    )?;
    fs::write(
        root.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    )?;
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    fs::copy(ca, root.join("etc/ssl/certs/ca-certificates.crt"))
        .context("copy /etc/ssl/certs/ca-certificates.crt (install ca-certificates)")?;
    fs::copy("/etc/os-release", root.join("usr/lib/os-release"))?;
    symlink("../usr/lib/os-release", root.join("etc/os-release"))?;

    // Where the gateway keeps its data: the only directory it owns.
    let data = root.join("var/lib/mcp-gateway");
    fs::create_dir_all(&data)?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o750))?;
    run(Command::new("chown").arg(format!("{UID}:{UID}")).arg(&data))?;

    // Licences: ours, and those of every Debian package files came from.
    let ours = root.join("usr/share/doc/mcp-gateway");
    fs::create_dir_all(&ours)?;
    fs::copy(
        repo.join("packaging/debian/copyright"),
        ours.join("copyright"),
    )?;
    fs::copy(repo.join("LICENSE"), ours.join("LICENSE"))?;
    // The bundle is generated by update-ca-certificates, so no package owns
    // the file itself.
    let mut packages = owning_packages(&host_files)?;
    packages.insert("ca-certificates".to_owned());
    for pkg in packages {
        let doc = root.join("usr/share/doc").join(&pkg);
        fs::create_dir_all(&doc)?;
        let copyright = Path::new("/usr/share/doc").join(&pkg).join("copyright");
        fs::copy(&copyright, doc.join("copyright"))
            .with_context(|| format!("copy {}", copyright.display()))?;
        let status = capture(Command::new("dpkg-query").args(["-s", &pkg]))?;
        fs::write(root.join("var/lib/dpkg/status.d").join(&pkg), status)?;
    }

    // The assembled configuration must load: policies compile, profiles
    // parse (the bwrap binary is the host's, which is the same file).
    run(Command::new(staged.binary())
        .arg("check-config")
        .arg("--config")
        .arg(root.join("etc/mcp-gateway/config.toml"))
        .arg("--policies")
        .arg(root.join("etc/mcp-gateway/policies"))
        .arg("--profiles")
        .arg(root.join("etc/mcp-gateway/sandbox-profiles"))
        .arg("--data-dir")
        .arg(staged.target_dir.join("image-check-data")))?;
    let _ = fs::remove_dir_all(staged.target_dir.join("image-check-data"));
    Ok(())
}

/// A container cannot create per-task cgroups (its cgroup file system is
/// read-only), so profiles accept per-process rlimits only there; the
/// container's own cgroup still bounds the gateway and all its sandboxes.
fn container_profile(text: &str) -> String {
    const NOTE: &str = "# Container image: no per-task cgroups (the container's cgroup bounds all\n\
                        # sandboxes together); per-process rlimits apply to each one.\n\
                        require_cgroup = false\n";
    let mut out = String::with_capacity(text.len() + NOTE.len());
    let mut done = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("require_cgroup") {
            if !done {
                out.push_str(NOTE);
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if trimmed == "[limits]" && !done {
            out.push_str(NOTE);
            done = true;
        }
    }
    if !done {
        out.push_str("\n[limits]\n");
        out.push_str(NOTE);
    }
    out
}

/// The host path of a tool the policy allows: /usr/bin first, then /bin.
fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(fs::canonicalize(p)?);
        }
    }
    bail!("{name} not found in /usr/bin or /bin on this host")
}

/// Libraries (and the dynamic loader) an ELF file loads, as `ldd` resolves
/// them on this host.
fn shared_libraries(elf: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = capture(Command::new("ldd").arg(elf))?;
    let libs = parse_ldd(&String::from_utf8(out)?);
    if libs.is_empty() {
        bail!("ldd found no libraries for {}", elf.display());
    }
    Ok(libs)
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)`
/// and the loader line `/lib64/ld-linux-x86-64.so.2 (0x…)`; not the vDSO.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        })
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// `/lib/x/libc.so.6` → `usr/lib/x/libc.so.6` (merged /usr), relative.
fn in_usr(p: &Path) -> PathBuf {
    let rel = p.strip_prefix("/").unwrap_or(p);
    if rel.starts_with("usr") {
        rel.to_owned()
    } else {
        Path::new("usr").join(rel)
    }
}

/// The Debian packages that own these host files (`dpkg -S`; a file may be
/// registered under /usr or the unmerged path).
fn owning_packages(files: &[PathBuf]) -> anyhow::Result<BTreeSet<String>> {
    let mut candidates = Vec::new();
    for f in files {
        for p in [f.clone(), fs::canonicalize(f)?] {
            let rel = p.strip_prefix("/usr").unwrap_or(&p).to_owned();
            let rel = rel.strip_prefix("/").unwrap_or(&rel).to_owned();
            candidates.push(Path::new("/").join(&rel));
            candidates.push(Path::new("/usr").join(&rel));
        }
    }
    let out = Command::new("dpkg")
        .arg("-S")
        .args(&candidates)
        .stderr(std::process::Stdio::null())
        .output()
        .context("run dpkg -S")?;
    let mut pkgs = BTreeSet::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        if line.starts_with("diversion ") {
            continue;
        }
        if let Some((names, _)) = line.split_once(": ") {
            for name in names.split(", ") {
                pkgs.insert(name.split(':').next().unwrap_or(name).to_owned());
            }
        }
    }
    for must in ["bubblewrap", "libc6", "coreutils", "libseccomp2"] {
        if !pkgs.contains(must) {
            bail!("dpkg -S did not find the package {must} among the image's files");
        }
    }
    Ok(pkgs)
}

fn oci_arch() -> anyhow::Result<String> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name for {other}"),
    }
    .to_owned())
}

fn created_at() -> anyhow::Result<String> {
    let out = capture(
        Command::new("date")
            .arg("-u")
            .arg("-d")
            .arg(format!("@{}", source_date_epoch()?))
            .arg("+%Y-%m-%dT%H:%M:%SZ"),
    )?;
    Ok(String::from_utf8(out)?.trim().to_owned())
}

fn du_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = capture(Command::new("du").args(["-sb"]).arg(dir))?;
    let text = String::from_utf8(out)?;
    Ok(text
        .split_whitespace()
        .next()
        .context("du printed nothing")?
        .parse()?)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests;
