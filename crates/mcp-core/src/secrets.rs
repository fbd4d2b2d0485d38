//! Secrets by reference: an environment value `secret://NAME` asks the
//! gateway to put the secret `NAME` (a file under its secrets directory)
//! in the sandbox's environment, if policy allows it for the principal.
//! Policy sees the names, never the values.

/// The scheme of a secret reference.
pub const SCHEME: &str = "secret://";

/// The longest secret name.
pub const MAX_NAME_BYTES: usize = 256;

/// The secret name an environment value refers to, or `None` when the
/// value is a plain value.
pub fn reference(value: &str) -> Option<&str> {
    value.strip_prefix(SCHEME)
}

/// Checks a secret name: relative path segments of `[A-Za-z0-9._-]`, no
/// empty, `.` or `..` segment, at most [`MAX_NAME_BYTES`].
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "secret name must be 1 to {MAX_NAME_BYTES} bytes long"
        ));
    }
    for seg in name.split('/') {
        let ok_chars = seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if seg.is_empty() || seg == "." || seg == ".." || !ok_chars {
            return Err(format!(
                "secret name {name:?} is not made of path segments of letters, digits, '.', '_' and '-'"
            ));
        }
    }
    Ok(())
}

/// The secret names an environment refers to, sorted and unique.
pub fn names<'a>(env: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = env
        .into_iter()
        .filter_map(|v| reference(v))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}
