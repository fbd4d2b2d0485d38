//! Live operation: the active policy set behind an atomic pointer, hot
//! reload (on demand, on SIGHUP via the caller, or from a file watcher) and
//! an optional shadow set evaluated beside it without being enforced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use notify::{RecursiveMode, Watcher};

use crate::engine::{EngineOptions, Evaluated, PolicyEngine};
use crate::error::{FailureKind, PolicyError};
use crate::input::PolicyInput;

/// How long the directory must stay quiet after a change before the
/// watcher reloads: editors and `kubectl cp` write in several steps.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// How the service loads and swaps policy sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    pub engine: EngineOptions,
    /// Run the new set's `*_test.rego` before swapping it in (and at
    /// start); a failing test rejects the set like a compile error.
    pub reload_requires_passing_tests: bool,
    /// A candidate policy directory evaluated on live traffic beside the
    /// active one; its decisions are reported, never enforced.
    pub shadow_dir: Option<PathBuf>,
}

/// Counters of a [`PolicyService`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Successful reloads that changed the revision or kept it.
    pub reloads: u64,
    /// Reloads rejected (compile error or failing tests); the previous
    /// revision kept serving.
    pub reload_failures: u64,
    /// Requests on which the shadow set's outcome (allow, or profile)
    /// differed from the active one's.
    pub shadow_disagreements: u64,
    /// Decisions of the active set that failed closed, by kind, in the
    /// order of [`FailureKind::ALL`].
    pub eval_failures: [u64; FailureKind::ALL.len()],
}

impl ServiceStats {
    /// The failures of one kind.
    pub fn eval_failures_of(&self, kind: FailureKind) -> u64 {
        FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.eval_failures.get(i))
            .copied()
            .unwrap_or(0)
    }
}

/// The policy set the gateway decides with, replaceable while requests run.
///
/// `decide` never blocks on a reload: it loads the current engine with one
/// atomic read, and a reload compiles the new set completely before one
/// atomic store publishes it. Requests that started on the old set finish on
/// it.
#[derive(Debug)]
pub struct PolicyService {
    dir: PathBuf,
    options: ServiceOptions,
    active: ArcSwap<PolicyEngine>,
    shadow: ArcSwapOption<PolicyEngine>,
    /// Serialises reloads, so two watchers or a watcher and a SIGHUP never
    /// interleave their compile-and-swap.
    reloading: Mutex<()>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    disagreements: AtomicU64,
    eval_failures: [AtomicU64; FailureKind::ALL.len()],
}

impl PolicyService {
    /// Loads `dir` (and the shadow directory, if any) or fails: at start a
    /// broken set stops the gateway, it never serves without policy.
    pub fn start(dir: &Path, options: ServiceOptions) -> Result<PolicyService, PolicyError> {
        let active = load_checked(dir, &options)?;
        let shadow = match &options.shadow_dir {
            Some(d) => Some(Arc::new(PolicyEngine::load_with(
                d,
                options.engine.clone(),
            )?)),
            None => None,
        };
        tracing::info!(revision = %active.revision(), shadow = ?shadow.as_ref().map(|s| s.revision().to_owned()), "policy service started");
        Ok(PolicyService {
            dir: dir.to_owned(),
            options,
            active: ArcSwap::from_pointee(active),
            shadow: ArcSwapOption::new(shadow),
            reloading: Mutex::new(()),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            disagreements: AtomicU64::new(0),
            eval_failures: Default::default(),
        })
    }

    /// Decides `input` with the active set and, when a shadow set is
    /// configured, evaluates it too and counts and logs a disagreement.
    pub fn decide(&self, input: &PolicyInput) -> Evaluated {
        let mut evaluated = self.active.load().evaluate(input);
        if let Some(failure) = &evaluated.failure
            && let Some(i) = FailureKind::ALL.iter().position(|k| *k == failure.kind)
            && let Some(counter) = self.eval_failures.get(i)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(shadow) = &*self.shadow.load() {
            let candidate = shadow.evaluate(input);
            let active = &evaluated.decision;
            let shadowed = &candidate.decision;
            if active.allow != shadowed.allow
                || active.obligations.profile != shadowed.obligations.profile
            {
                self.disagreements.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    request_id = %input.context.request_id,
                    active_revision = %active.policy_revision,
                    active_allow = active.allow,
                    active_profile = ?active.obligations.profile,
                    shadow_revision = %shadowed.policy_revision,
                    shadow_allow = shadowed.allow,
                    shadow_profile = ?shadowed.obligations.profile,
                    "shadow policy disagrees"
                );
                // Reasons may quote argv: debug only.
                tracing::debug!(
                    request_id = %input.context.request_id,
                    active_reasons = ?active.deny_reasons,
                    shadow_reasons = ?shadowed.deny_reasons,
                    "shadow policy disagreement detail"
                );
            }
            evaluated.shadow = Some(candidate.decision);
        }
        evaluated
    }

    /// The engine serving now; keep it only for the duration of one task.
    pub fn engine(&self) -> Arc<PolicyEngine> {
        self.active.load_full()
    }

    /// The active revision.
    pub fn revision(&self) -> String {
        self.active.load().revision().to_owned()
    }

    /// The shadow set's revision, when one is configured.
    pub fn shadow_revision(&self) -> Option<String> {
        self.shadow.load().as_ref().map(|s| s.revision().to_owned())
    }

    /// The directory the active set is loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            shadow_disagreements: self.disagreements.load(Ordering::Relaxed),
            eval_failures: std::array::from_fn(|i| {
                self.eval_failures
                    .get(i)
                    .map_or(0, |c| c.load(Ordering::Relaxed))
            }),
        }
    }

    /// Recompiles the policy directory (and the shadow directory) and swaps
    /// the new set in; returns the new active revision. On an error the
    /// previous set keeps serving, the error (with `file:line:col`) is
    /// logged and counted, and returned. Blocking: it compiles, and runs the
    /// tests when asked to; call it from a blocking thread.
    pub fn reload(&self) -> Result<String, PolicyError> {
        let _guard = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.revision();
        let engine = match load_checked(&self.dir, &self.options) {
            Ok(e) => e,
            Err(err) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, dir = %self.dir.display(), revision = %old, "policy reload rejected; keeping the previous revision");
                return Err(err);
            }
        };
        if let Some(dir) = &self.options.shadow_dir {
            match PolicyEngine::load_with(dir, self.options.engine.clone()) {
                Ok(shadow) => self.shadow.store(Some(Arc::new(shadow))),
                // A broken candidate must not stop the active set from
                // updating; the previous candidate keeps running.
                Err(err) => {
                    tracing::warn!(error = %err, dir = %dir.display(), "shadow policy reload rejected; keeping the previous shadow revision");
                }
            }
        }
        let new = engine.revision().to_owned();
        self.active.store(Arc::new(engine));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        if new == old {
            tracing::info!(revision = %new, "policies reloaded, revision unchanged");
        } else {
            tracing::info!(revision = %new, previous = %old, "policies reloaded");
        }
        Ok(new)
    }

    /// Loads the bundle `candidate` and, when it loads (and its tests pass
    /// where asked), renames it over the service's own bundle path and swaps
    /// it in; returns the new active revision. This is how a bundle fetched
    /// from elsewhere (the gateway downloads it into a file beside the
    /// active one, on the same file system) replaces the active one: the
    /// file at the service's path only ever holds a set that loaded. On an
    /// error the previous set keeps serving, the error is logged and
    /// counted, and `candidate` is left where it is. Blocking.
    pub fn reload_from(&self, candidate: &Path) -> Result<String, PolicyError> {
        let _guard = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.revision();
        let engine = load_checked(candidate, &self.options).and_then(|engine| {
            std::fs::rename(candidate, &self.dir)
                .map(|()| engine)
                .map_err(|source| PolicyError::Read {
                    path: self.dir.clone(),
                    source,
                })
        });
        let engine = match engine {
            Ok(e) => e,
            Err(err) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, candidate = %candidate.display(), revision = %old, "policy bundle rejected; keeping the previous revision");
                return Err(err);
            }
        };
        let new = engine.revision().to_owned();
        self.active.store(Arc::new(engine));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        if new == old {
            tracing::info!(revision = %new, "policy bundle reloaded, revision unchanged");
        } else {
            tracing::info!(revision = %new, previous = %old, "policy bundle reloaded");
        }
        Ok(new)
    }

    /// Counts a reload that failed before it reached the service (the
    /// caller could not obtain the new set, e.g. a bundle download failed
    /// with a network error or an HTTP status), so that
    /// [`ServiceStats::reload_failures`] covers every kind of rejected
    /// update. The caller logs the reason.
    pub fn count_reload_failure(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Watches the policy directory (and the shadow directory) and reloads
    /// once it has been quiet for [`WATCH_DEBOUNCE`] after a change. Stops
    /// when the returned [`PolicyWatcher`] is dropped. Runs on its own
    /// thread: reloads compile, which must not block an async runtime.
    pub fn watch(self: &Arc<Self>) -> Result<PolicyWatcher, PolicyError> {
        self.watch_with(WATCH_DEBOUNCE)
    }

    /// [`PolicyService::watch`] with another debounce delay.
    pub fn watch_with(self: &Arc<Self>, debounce: Duration) -> Result<PolicyWatcher, PolicyError> {
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    // Reads (access events) change nothing.
                    Ok(e) if e.kind.is_access() => {}
                    _ => {
                        let _ = tx.send(());
                    }
                }
            })
            .map_err(|source| PolicyError::Watch {
                dir: self.dir.clone(),
                source,
            })?;
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(self.options.shadow_dir.clone());
        // A bundle is replaced by renaming a new file over it, which ends a
        // watch on the file itself: watch the directory that holds it.
        for dir in &mut dirs {
            if crate::bundle::is_bundle(dir)
                && let Some(parent) = dir.parent()
            {
                *dir = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_owned()
                };
            }
        }
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| PolicyError::Watch {
                    dir: dir.clone(),
                    source,
                })?;
        }
        let service = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("policy-watch".to_owned())
            .spawn(move || watch_loop(&rx, &service, debounce))
            .map_err(|source| PolicyError::Read {
                path: self.dir.clone(),
                source,
            })?;
        Ok(PolicyWatcher {
            _watcher: watcher,
            thread: Some(thread),
        })
    }
}

/// Waits for a change, then for `debounce` of quiet, then reloads. Ends
/// when the watcher (the sender) is dropped or the service is gone.
fn watch_loop(rx: &mpsc::Receiver<()>, service: &Weak<PolicyService>, debounce: Duration) {
    while rx.recv().is_ok() {
        loop {
            match rx.recv_timeout(debounce) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        // Errors are logged and counted by reload itself.
        let _ = service.reload();
    }
}

/// A running directory watcher; dropping it stops watching.
pub struct PolicyWatcher {
    _watcher: notify::RecommendedWatcher,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher").finish_non_exhaustive()
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        // Dropping the notify watcher (after this body) closes the channel
        // and ends the thread; it is not joined, since it may be in the
        // middle of a reload that would only delay shutdown.
        drop(self.thread.take());
    }
}

/// Loads `dir`, then runs its tests when the options ask for it.
fn load_checked(dir: &Path, options: &ServiceOptions) -> Result<PolicyEngine, PolicyError> {
    let engine = PolicyEngine::load_with(dir, options.engine.clone())?;
    if options.reload_requires_passing_tests && crate::bundle::is_bundle(dir) {
        // Tests run on a directory; a bundle's are run by `policy build`.
        return Err(PolicyError::Bundle {
            path: dir.to_owned(),
            reason: "reload_requires_passing_tests needs a policy directory; bundles are tested when `policy build` makes them".to_owned(),
        });
    }
    if options.reload_requires_passing_tests {
        PolicyEngine::require_passing_tests(dir)?;
    }
    Ok(engine)
}
