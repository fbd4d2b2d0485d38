//! OPA-style policy bundles: one `.tar.gz` holding a `.manifest`
//! (`{"revision": ..., "roots": [...]}`), the `*.rego` files and `data.json`
//! documents (a `data.json` at `a/b/data.json` becomes `data.a.b`), and,
//! when signed, a `.signatures.json` in OPA's format: `{"signatures":
//! [JWT]}` whose payload lists every other file of the bundle with its
//! SHA-256. The JWT is signed with Ed25519 (`"alg": "EdDSA"`).
//!
//! Reading a bundle is bounded before anything is parsed: entries must be
//! regular files (or directories) under relative paths without `..`, at
//! most [`MAX_BUNDLE_FILES`] of them and [`MAX_BUNDLE_BYTES`] in all. With a
//! verification key configured, a bundle without a valid signature over
//! exactly its files is refused: fail closed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::PolicyError;

/// The most bytes all files of a bundle may hold once decompressed.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
/// The most entries a bundle may hold.
pub const MAX_BUNDLE_FILES: usize = 10_000;

pub(crate) const MANIFEST: &str = ".manifest";
pub(crate) const SIGNATURES: &str = ".signatures.json";
const DATA_JSON: &str = "data.json";

/// `.manifest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub revision: String,
    /// The data paths the bundle owns (`""`: all of `data`).
    #[serde(default)]
    pub roots: Vec<String>,
}

/// A bundle read into memory, bounded and (when a key was given) verified.
#[derive(Debug)]
pub(crate) struct Bundle {
    pub manifest: Manifest,
    /// Every file but `.signatures.json`, by its path in the bundle.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// What `policy build` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltBundle {
    pub files: Vec<String>,
    pub signed: bool,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Signatures {
    signatures: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignedFile {
    name: String,
    hash: String,
    algorithm: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    files: Vec<SignedFile>,
}

fn bad(path: &Path, reason: impl Into<String>) -> PolicyError {
    PolicyError::Bundle {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads an Ed25519 public key (PEM, `-----BEGIN PUBLIC KEY-----`, as
/// `openssl pkey -pubout` writes it).
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, PolicyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| bad(path, format!("not an Ed25519 public key in PEM: {e}")))
}

/// Reads an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm
/// ed25519` writes it).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, PolicyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        bad(
            path,
            format!("not an Ed25519 PKCS#8 private key in PEM: {e}"),
        )
    })
}

/// Whether `path` names a bundle rather than a policy directory.
pub(crate) fn is_bundle(path: &Path) -> bool {
    path.is_file()
}

/// The bundle-relative path of a tar entry, or why it is refused.
fn entry_name(path: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| format!("entry {} is not UTF-8", path.display()))?
                    .to_owned(),
            ),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("entry {} climbs out with ..", path.display()));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {} is an absolute path", path.display()));
            }
        }
    }
    if parts.is_empty() {
        return Err("entry with an empty path".to_owned());
    }
    Ok(parts.join("/"))
}

/// Reads and bounds `path`; verifies it when `key` is given.
pub(crate) fn read(path: &Path, key: Option<&VerifyingKey>) -> Result<Bundle, PolicyError> {
    let file = std::fs::File::open(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| bad(path, format!("not a .tar.gz: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(path, format!("not a .tar.gz: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(path, format!("unreadable entry path: {e}")))?
            .into_owned();
        let name = entry_name(&raw).map_err(|r| bad(path, r))?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(bad(
                    path,
                    format!("entry {name} is not a regular file ({other:?})"),
                ));
            }
        }
        if files.len() >= MAX_BUNDLE_FILES {
            return Err(bad(path, format!("more than {MAX_BUNDLE_FILES} files")));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        total = total.saturating_add(size);
        if total > MAX_BUNDLE_BYTES {
            return Err(bad(
                path,
                format!("more than {MAX_BUNDLE_BYTES} bytes once decompressed"),
            ));
        }
        let mut bytes = Vec::new();
        // Reads at most the declared size, whatever the stream holds.
        (&mut entry)
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(path, format!("entry {name} cannot be read: {e}")))?;
        if files.insert(name.clone(), bytes).is_some() {
            return Err(bad(path, format!("entry {name} appears twice")));
        }
    }
    let signatures = files.remove(SIGNATURES);
    if let Some(key) = key {
        let Some(signatures) = signatures else {
            return Err(bad(
                path,
                format!(
                    "bundle is not signed ({SIGNATURES} is missing) but a verification key is configured"
                ),
            ));
        };
        verify(&signatures, &files, key)
            .map_err(|r| bad(path, format!("signature check failed: {r}")))?;
    }
    let manifest = match files.get(MANIFEST) {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| bad(path, format!("{MANIFEST} is not a manifest: {e}")))?,
        None => Manifest::default(),
    };
    Ok(Bundle { manifest, files })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn verify(
    signatures: &[u8],
    files: &BTreeMap<String, Vec<u8>>,
    key: &VerifyingKey,
) -> Result<(), String> {
    let sigs: Signatures =
        serde_json::from_slice(signatures).map_err(|e| format!("{SIGNATURES}: {e}"))?;
    let [jwt] = sigs.signatures.as_slice() else {
        return Err(format!(
            "{SIGNATURES} must hold exactly one signature, not {}",
            sigs.signatures.len()
        ));
    };
    let Some((signed, signature)) = jwt.rsplit_once('.') else {
        return Err("the signature is not a JWT".to_owned());
    };
    let Some((header, payload)) = signed.split_once('.').filter(|(_, p)| !p.contains('.')) else {
        return Err("the signature is not a JWT".to_owned());
    };
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| format!("bad base64url: {e}"))
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| format!("JWT header: {e}"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
        return Err("JWT alg must be EdDSA".to_owned());
    }
    let signature = Signature::from_slice(&decode(signature)?).map_err(|e| e.to_string())?;
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| "the signature does not match the configured key".to_owned())?;
    // Only now is the payload trusted.
    let payload: Payload =
        serde_json::from_slice(&decode(payload)?).map_err(|e| format!("JWT payload: {e}"))?;
    let mut listed = BTreeMap::new();
    for f in payload.files {
        if f.algorithm != "SHA-256" {
            return Err(format!(
                "file {} is hashed with {}, not SHA-256",
                f.name, f.algorithm
            ));
        }
        listed.insert(f.name, f.hash);
    }
    for (name, bytes) in files {
        match listed.remove(name) {
            Some(hash) if hash == sha256_hex(bytes) => {}
            Some(_) => return Err(format!("file {name} was changed after signing")),
            None => return Err(format!("file {name} is not covered by the signature")),
        }
    }
    if let Some(name) = listed.keys().next() {
        return Err(format!("signed file {name} is missing from the bundle"));
    }
    Ok(())
}

/// The files of `dir` that go into a bundle: every `*.rego` (tests
/// included, so the bundle can be tested) and every `data.json`, at any
/// depth, by their relative paths, sorted. Hidden entries are skipped.
fn collect(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, PolicyError> {
    let mut out = BTreeMap::new();
    let mut pending: Vec<(PathBuf, String)> = vec![(dir.to_owned(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        let read_err = |source| PolicyError::Read {
            path: at.clone(),
            source,
        };
        for entry in std::fs::read_dir(&at).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel = format!("{prefix}{name}");
            let meta = std::fs::metadata(&path).map_err(|source| PolicyError::Read {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                pending.push((path, format!("{rel}/")));
            } else if meta.is_file() && (name.ends_with(".rego") || name == DATA_JSON) {
                let bytes = std::fs::read(&path).map_err(|source| PolicyError::Read {
                    path: path.clone(),
                    source,
                })?;
                out.insert(rel, bytes);
            }
        }
    }
    Ok(out)
}

/// Packs the policy set of `dir` into the bundle `out` with `revision` in
/// its manifest, signed with `key` when given. The set must compile and
/// its `*_test.rego` tests must pass: a bundle that would not load, or
/// that its own tests reject, is refused here rather than in production.
pub fn build(
    dir: &Path,
    out: &Path,
    revision: &str,
    key: Option<&SigningKey>,
) -> Result<BuiltBundle, PolicyError> {
    crate::PolicyEngine::load(dir)?;
    crate::PolicyEngine::require_passing_tests(dir)?;
    let mut files = collect(dir)?;
    let manifest = Manifest {
        revision: revision.to_owned(),
        roots: vec![String::new()],
    };
    files.insert(
        MANIFEST.to_owned(),
        serde_json::to_vec(&manifest).map_err(|e| bad(out, e.to_string()))?,
    );
    let mut entries: Vec<(String, Vec<u8>)> = files.into_iter().collect();
    if let Some(key) = key {
        let payload = Payload {
            files: entries
                .iter()
                .map(|(name, bytes)| SignedFile {
                    name: name.clone(),
                    hash: sha256_hex(bytes),
                    algorithm: "SHA-256".to_owned(),
                })
                .collect(),
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&payload).map_err(|e| bad(out, e.to_string()))?);
        let signed = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes());
        let sigs = Signatures {
            signatures: vec![format!("{signed}.{signature}")],
        };
        entries.push((
            SIGNATURES.to_owned(),
            serde_json::to_vec(&sigs).map_err(|e| bad(out, e.to_string()))?,
        ));
    }
    write(out, &entries)?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(BuiltBundle {
        files: entries.into_iter().map(|(n, _)| n).collect(),
        signed: key.is_some(),
        bytes,
    })
}

/// Writes `entries` as a reproducible `.tar.gz` (fixed mode and times),
/// through a temporary file renamed into place, so a watcher never reads
/// half a bundle.
pub(crate) fn write(out: &Path, entries: &[(String, Vec<u8>)]) -> Result<(), PolicyError> {
    let write_err = |source| PolicyError::Read {
        path: out.to_owned(),
        source,
    };
    let tmp = out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(write_err)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, bytes.as_slice())
            .map_err(write_err)?;
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(write_err)?;
    std::fs::rename(&tmp, out).map_err(write_err)
}

/// The `data` path a bundle's `data.json` is mounted at: `a/b/data.json`
/// is `["a", "b"]`; `None` when the file is no data document.
pub(crate) fn data_path(name: &str) -> Option<Vec<String>> {
    let dir = name.strip_suffix(DATA_JSON)?;
    if !(dir.is_empty() || dir.ends_with('/')) {
        return None;
    }
    Some(
        dir.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}
