//! `cargo xtask dist`: the release build and the `.deb` / `.rpm` packages.
//!
//! One release build is staged in `<target>/release/mcp-gateway-dist/`
//! (stripped binary, man page, bash/zsh/fish completions generated from the
//! CLI) and packed by `cargo deb` and `cargo generate-rpm` with the metadata
//! in `crates/mcp-gateway/Cargo.toml`. `cargo xtask image` reuses the same
//! staged binary, so the packages and the image carry the same bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::util::{Opts, capture, repo, run, source_date_epoch};

/// Where the release build is staged, relative to the target directory.
/// Both packagers rewrite the `target/release/` prefix of their asset paths
/// to the real target directory.
pub const STAGE: &str = "release/mcp-gateway-dist";

/// What one release build left for the packagers.
#[derive(Debug)]
pub struct Staged {
    pub target_dir: PathBuf,
    pub stage: PathBuf,
    pub version: String,
}

impl Staged {
    pub fn binary(&self) -> PathBuf {
        self.stage.join("mcp-gateway")
    }

    /// `<target>/dist`, where packages and images are written.
    pub fn out_dir(&self) -> PathBuf {
        self.target_dir.join("dist")
    }
}

pub fn main(opts: &Opts) -> anyhow::Result<()> {
    let staged = stage(opts)?;
    let out = staged.out_dir();
    fs::create_dir_all(&out)?;
    let root = repo();

    require_tool("deb", "cargo-deb")?;
    require_tool("generate-rpm", "cargo-generate-rpm")?;
    let epoch = source_date_epoch()?.to_string();

    let deb = out.join(format!(
        "mcp-gateway_{}-1_{}.deb",
        staged.version,
        deb_arch()?
    ));
    run(Command::new(env!("CARGO"))
        .args([
            "deb",
            "--locked",
            "--no-build",
            "--no-strip",
            "-p",
            "mcp-gateway",
            "-o",
        ])
        .arg(&deb)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &staged.target_dir)
        .env("SOURCE_DATE_EPOCH", &epoch))?;

    let rpm = out.join(format!(
        "mcp-gateway-{}-1.{}.rpm",
        staged.version,
        std::env::consts::ARCH
    ));
    run(Command::new(env!("CARGO"))
        .args(["generate-rpm", "-p", "crates/mcp-gateway", "-o"])
        .arg(&rpm)
        .arg("--target-dir")
        .arg(&staged.target_dir)
        .current_dir(&root)
        .env("SOURCE_DATE_EPOCH", &epoch))?;

    println!("{}", deb.display());
    println!("{}", rpm.display());
    Ok(())
}

/// Builds the release binary once (unless `--no-build`), then stages the
/// stripped binary, the man page and the completions.
pub fn stage(opts: &Opts) -> anyhow::Result<Staged> {
    let root = repo();
    let meta = cargo_metadata()?;
    let target_dir = PathBuf::from(
        meta["target_directory"]
            .as_str()
            .context("cargo metadata without target_directory")?,
    );
    let version = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "mcp-gateway"))
        .and_then(|p| p["version"].as_str())
        .context("cargo metadata without the mcp-gateway package")?
        .to_owned();
    check_changelogs(&root, &version)?;

    let built = target_dir.join("release/mcp-gateway");
    if opts.no_build {
        if !built.is_file() {
            bail!("--no-build, but {} does not exist", built.display());
        }
    } else {
        eprintln!("xtask: cargo build --release -p mcp-gateway");
        run(Command::new(env!("CARGO"))
            .args(["build", "--release", "--locked", "-p", "mcp-gateway"])
            .current_dir(&root))?;
    }

    let stage = target_dir.join(STAGE);
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    let bin = stage.join("mcp-gateway");
    // A copy, so that a concurrent `cargo build` cannot change what is
    // packed halfway through; stripped, as packages ship no debug info.
    run(Command::new("strip")
        .args([
            "--strip-all",
            "--remove-section=.comment",
            "--remove-section=.note",
            "-o",
        ])
        .arg(&bin)
        .arg(&built))?;

    let pages = man_pages(&bin, &stage.join("man"))?;
    if pages < 2 {
        bail!("expected man pages for mcp-gateway and its subcommands, got {pages}");
    }
    for (shell, file) in [
        ("bash", "mcp-gateway.bash"),
        ("zsh", "_mcp-gateway"),
        ("fish", "mcp-gateway.fish"),
    ] {
        let script = capture(Command::new(&bin).args(["completions", shell]))?;
        if script.is_empty() {
            bail!("mcp-gateway completions {shell} printed nothing");
        }
        fs::write(stage.join(file), script)?;
    }
    Ok(Staged {
        target_dir,
        stage,
        version,
    })
}

/// Writes mcp-gateway(1) and a page per subcommand (mcp-gateway-task-status(1)
/// …), following the SUBCOMMANDS references of each page, as `.1` (cargo-deb
/// compresses them) and `.1.gz` (for the rpm). Returns how many.
fn man_pages(bin: &Path, dir: &Path) -> anyhow::Result<usize> {
    fs::create_dir_all(dir)?;
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut count = 0;
    while let Some(path) = todo.pop() {
        let roff = capture(Command::new(bin).arg("man").args(&path))?;
        let page = std::iter::once("mcp-gateway".to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-");
        let prefix = format!("{}\\-", page.replace('-', "\\-"));
        for line in String::from_utf8(roff.clone())?.lines() {
            if let Some(sub) = line
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix("(1)"))
            {
                let sub = sub.replace("\\-", "-");
                if sub != "help" {
                    let mut next = path.clone();
                    next.push(sub);
                    todo.push(next);
                }
            }
        }
        let file = dir.join(format!("{page}.1"));
        fs::write(&file, &roff)?;
        let gz = capture(Command::new("gzip").args(["-9n", "-c"]).arg(&file))?;
        fs::write(dir.join(format!("{page}.1.gz")), gz)?;
        count += 1;
    }
    Ok(count)
}

fn cargo_metadata() -> anyhow::Result<serde_json::Value> {
    let out = capture(
        Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
            .current_dir(repo()),
    )?;
    Ok(serde_json::from_slice(&out)?)
}

/// The Debian changelog and CHANGELOG.md must name the version being built:
/// lintian and users read them as the package's history.
fn check_changelogs(root: &Path, version: &str) -> anyhow::Result<()> {
    let debian = fs::read_to_string(root.join("packaging/debian/changelog"))?;
    let want = format!("mcp-gateway ({version}-1)");
    if !debian.starts_with(&want) {
        bail!(
            "packaging/debian/changelog must start with an entry \"{want} …\" for the crate version {version}"
        );
    }
    let upstream = fs::read_to_string(root.join("CHANGELOG.md"))?;
    if !upstream.contains(&format!("## [{version}]")) {
        bail!("CHANGELOG.md has no \"## [{version}]\" section");
    }
    Ok(())
}

fn require_tool(sub: &str, krate: &str) -> anyhow::Result<()> {
    let ok = Command::new(env!("CARGO"))
        .args([sub, "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!("`cargo {sub}` is missing: run scripts/bootstrap.sh (it installs {krate})");
    }
    Ok(())
}

fn deb_arch() -> anyhow::Result<String> {
    let out = capture(Command::new("dpkg").arg("--print-architecture"))?;
    Ok(String::from_utf8(out)?.trim().to_owned())
}
