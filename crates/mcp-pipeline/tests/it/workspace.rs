//! Invariants of the whole workspace that ARCHITECTURE.md promises and no
//! compiler checks: one crate owns each outside boundary, and no crate but
//! mcp-sandbox may hold `unsafe` code.

use std::path::Path;

use serde_json::Value;

/// Each boundary crate and the only workspace crate that may depend on it
/// in shipped code (normal and build dependencies; a test may still read
/// the database with sqlx). A name ending in `-` covers a family
/// (`sqlx-core`, `libseccomp-sys`).
const OWNERS: [(&str, &str); 6] = [
    ("regorus", "mcp-policy"),
    ("sqlx", "mcp-store"),
    ("sqlx-", "mcp-store"),
    ("libseccomp", "mcp-sandbox"),
    ("libseccomp-", "mcp-sandbox"),
    ("libc", "mcp-sandbox"),
];

/// The only crate allowed `unsafe` code.
const UNSAFE_CRATE: &str = "mcp-sandbox";

const FORBID_UNSAFE: &str = "#![forbid(unsafe_code)]";

fn owner_of(dependency: &str) -> Option<&'static str> {
    OWNERS.iter().find_map(|(name, owner)| {
        let matches = match name.strip_suffix('-') {
            Some(family) => dependency.starts_with(family) && dependency.len() > family.len(),
            None => dependency == *name,
        };
        matches.then_some(*owner)
    })
}

/// The workspace's packages, from `cargo metadata`.
fn members(meta: &Value) -> Vec<&Value> {
    let ids: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| ids.contains(&p["id"].as_str().unwrap()))
        .collect()
}

/// `crate -> boundary` for every shipped dependency of a workspace crate on
/// a boundary crate another crate owns.
pub fn trespasses(meta: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for package in members(meta) {
        let name = package["name"].as_str().unwrap();
        for dep in package["dependencies"].as_array().unwrap() {
            let shipped = dep["kind"].is_null() || dep["kind"] == "build";
            let dep_name = dep["name"].as_str().unwrap();
            if let Some(owner) = owner_of(dep_name)
                && shipped
                && owner != name
            {
                out.push(format!("{name} -> {dep_name} (owned by {owner})"));
            }
        }
    }
    out
}

/// The library and binary roots of workspace crates other than
/// [`UNSAFE_CRATE`] that do not forbid `unsafe` code.
pub fn unsafe_allowed(meta: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for package in members(meta) {
        if package["name"] == UNSAFE_CRATE {
            continue;
        }
        for target in package["targets"].as_array().unwrap() {
            let kinds = target["kind"].as_array().unwrap();
            if !kinds.iter().any(|k| k == "lib" || k == "bin") {
                continue;
            }
            let path = Path::new(target["src_path"].as_str().unwrap());
            let text = std::fs::read_to_string(path).unwrap();
            if !text.lines().any(|l| l.trim() == FORBID_UNSAFE) {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

#[test]
fn each_boundary_crate_is_used_by_its_owner_only() {
    let meta = super::metadata();
    // The owners really use them, or the check would read nothing.
    let owners: Vec<(&str, &str)> = members(&meta)
        .iter()
        .flat_map(|p| {
            p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |d| (p["name"].as_str().unwrap(), d["name"].as_str().unwrap()))
        })
        .collect();
    for needed in [
        ("mcp-policy", "regorus"),
        ("mcp-store", "sqlx"),
        ("mcp-sandbox", "libseccomp"),
        ("mcp-sandbox", "libc"),
    ] {
        assert!(owners.contains(&needed), "{needed:?} not found");
    }
    let found = trespasses(&meta);
    assert!(
        found.is_empty(),
        "boundary crates used outside their owner: {found:?}"
    );
}

#[test]
fn the_ownership_check_finds_a_trespass() {
    let meta = serde_json::json!({
        "workspace_members": ["a", "b"],
        "packages": [
            {"id": "a", "name": "mcp-gateway", "targets": [], "dependencies": [
                {"name": "sqlx-core", "kind": null},
                {"name": "libc", "kind": "dev"},
            ]},
            {"id": "b", "name": "mcp-store", "targets": [], "dependencies": [
                {"name": "sqlx", "kind": null},
            ]},
        ],
    });
    assert_eq!(
        trespasses(&meta),
        vec!["mcp-gateway -> sqlx-core (owned by mcp-store)".to_owned()]
    );
}

#[test]
fn every_crate_but_the_sandbox_forbids_unsafe_code() {
    let meta = super::metadata();
    let found = unsafe_allowed(&meta);
    assert!(
        found.is_empty(),
        "crate roots without {FORBID_UNSAFE}: {found:?}"
    );
}

#[test]
fn the_unsafe_check_finds_a_crate_without_the_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with.rs");
    let without = dir.path().join("without.rs");
    std::fs::write(&with, format!("//! doc\n\n{FORBID_UNSAFE}\n")).unwrap();
    std::fs::write(&without, "//! doc\n").unwrap();
    let meta = serde_json::json!({
        "workspace_members": ["a", "b", "c"],
        "packages": [
            {"id": "a", "name": "mcp-core", "dependencies": [], "targets": [
                {"kind": ["lib"], "src_path": with},
                {"kind": ["test"], "src_path": without},
            ]},
            {"id": "b", "name": "mcp-new", "dependencies": [], "targets": [
                {"kind": ["bin"], "src_path": without},
            ]},
            {"id": "c", "name": UNSAFE_CRATE, "dependencies": [], "targets": [
                {"kind": ["lib"], "src_path": without},
            ]},
        ],
    });
    assert_eq!(unsafe_allowed(&meta), vec![without.display().to_string()]);
}
