//! The escape suite (`escape.rs`) once more, against pooled sandboxes: the
//! same file, compiled with `POOLED = true`, so every escape is tried in a
//! sandbox that waited in the warm pool before its command was handed over.

use super::{Harness, host_is_root, processes_matching, profiles_dir, text};

const POOLED: bool = true;

// Loading the suite twice, with a different `POOLED`, is the point.
#[allow(clippy::duplicate_mod)]
#[path = "escape.rs"]
mod escape;
