//! Checks of written invariants that no compiler enforces: the pipeline
//! knows no front door (no tonic, axum, hyper or prost anywhere in its
//! dependency tree); the modules of the pipeline and the gateway import
//! each other without a cycle; and, workspace-wide (`workspace`), each
//! boundary crate has one owner and only mcp-sandbox may use `unsafe`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod imports;
mod workspace;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The crates of the front doors: the pipeline must not reach any of them.
const FRONT_DOOR_CRATES: [&str; 4] = ["tonic", "axum", "hyper", "prost"];

/// `cargo metadata` of the workspace, for the host's target, offline.
pub fn metadata() -> Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(host_triple())
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The host's target triple, from `rustc -vV` (the tests run on the host).
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// The names of every package `root` depends on, directly or not, through
/// normal and build dependencies (what ships with it; not dev-dependencies).
fn shipped_dependencies(meta: &Value, root: &str) -> BTreeSet<String> {
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = names
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{root} is not in the workspace"));
    let mut seen = BTreeSet::new();
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let shipped = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            let dep_id = dep["pkg"].as_str().unwrap();
            if shipped && seen.insert(dep_id) {
                todo.push(dep_id);
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_owned()).collect()
}

#[test]
fn the_pipeline_reaches_no_front_door_crate() {
    let meta = metadata();
    // The walk must see a front door where there is one, or the check
    // below would pass on a walk that finds nothing.
    let gateway = shipped_dependencies(&meta, "mcp-gateway");
    for name in FRONT_DOOR_CRATES {
        assert!(
            gateway.contains(name),
            "the walk misses {name} under mcp-gateway"
        );
    }
    let pipeline = shipped_dependencies(&meta, "mcp-pipeline");
    assert!(pipeline.contains("mcp-policy") && pipeline.contains("mcp-sandbox"));
    let reached: Vec<&str> = FRONT_DOOR_CRATES
        .into_iter()
        .filter(|name| pipeline.contains(*name))
        .collect();
    assert!(
        reached.is_empty(),
        "mcp-pipeline must not depend on front-door crates, but reaches {reached:?}"
    );
}

/// The crates whose modules the cycle check reads: the pipeline and its
/// front doors, where the request path runs.
const ACYCLIC_CRATES: [&str; 2] = ["mcp-pipeline", "mcp-gateway"];

#[test]
fn the_modules_of_the_pipeline_and_the_gateway_import_no_cycle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ACYCLIC_CRATES {
        let graph = imports::graph(&crates.join(name).join("src"));
        assert!(graph.len() > 5, "too few modules read in {name}: {graph:?}");
        if let Some(cycle) = imports::cycle(&graph) {
            panic!(
                "modules of {name} import each other in a cycle: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    // A grouped import, and a name that is no module of the crate.
    std::fs::write(
        src.join("b.rs"),
        "use crate::{c::C, x::Y};\npub struct B;\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "pub struct C(crate::a::A);\n").unwrap();
    let graph = imports::graph(src);
    let cycle = imports::cycle(&graph).expect("a -> b -> c -> a is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"a".to_owned()) && cycle.contains(&"c".to_owned()));
    std::fs::write(src.join("c.rs"), "pub struct C;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::c::C;\npub struct B;\n").unwrap();
    assert_eq!(imports::cycle(&imports::graph(src)), None);
}
