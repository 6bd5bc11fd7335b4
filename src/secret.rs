//! The DOKU Secret Key: read from a file, held as a [`SecretString`] whose `Debug` prints
//! nothing, and re-read while the sidecar runs so that a rotated key takes effect without a
//! restart.
//!
//! Rotation: when the file's content changes, every outbound DOKU call signs with the new key
//! from then on, and the key it replaced is kept, for verifying notifications only, during the
//! previous-key grace window (`--previous-key-grace`): DOKU may deliver or retry a
//! notification signed with the old key hours later. A few retired keys are kept (a file
//! rewritten in place can be read half-written once), each dropped when its window ends.
//!
//! [`watch_key_file`] and [`watch_token_file`] are the two watchers the server runs.
//!
//! Trouble: a file that becomes unreadable or empty keeps the last good key in use, and
//! [`SecretSource::problem`] says why until the file is good again (readiness turns false
//! and the key watcher logs it loudly). Write the file atomically (write elsewhere, rename),
//! as a Kubernetes Secret volume does, to avoid a moment where it reads empty.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many retired keys are kept for verification at most (the newest ones).
const MAX_RETIRED: usize = 3;

/// Why a key could not be loaded. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read secret key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no key.
    #[error("secret key file {0} is empty")]
    Empty(PathBuf),
}

/// Which key verified a notification (the label of `o2o_notifications_verified_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// The key in the file now.
    Current,
    /// A key the file held before, still inside its grace window.
    Previous,
}

impl KeyRole {
    /// Metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Previous => "previous",
        }
    }
}

#[derive(Debug)]
struct Retired {
    key: Arc<SecretString>,
    /// When it stopped being the current key.
    at: Instant,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<SecretString>,
    /// Newest first.
    retired: Vec<Retired>,
    /// How long a retired key still verifies notifications.
    grace: Duration,
    /// Why the last read of the file failed, while it keeps failing.
    problem: Option<String>,
}

impl Loaded {
    fn new(key: SecretString) -> Self {
        Self {
            key: Arc::new(key),
            retired: Vec::new(),
            grace: Duration::ZERO,
            problem: None,
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        let grace = self.grace;
        self.retired.retain(|r| now.duration_since(r.at) < grace);
    }
}

/// A secret read from a file and re-read when it changes: DOKU's Secret Key (shared by the
/// DOKU client and the notification ingress) or the API token callers present.
///
/// Cloning shares the same key. [`SecretSource::refresh`] re-reads the file; a file that
/// became unreadable or empty keeps the last good key.
#[derive(Clone, Debug)]
pub struct SecretSource {
    path: Option<PathBuf>,
    loaded: Arc<RwLock<Loaded>>,
}

fn read_key(path: &Path) -> Result<SecretString, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    // A trailing newline from `echo` or a Kubernetes Secret is not part of the key.
    let key = text.trim_end_matches(['\r', '\n']).to_owned();
    if key.is_empty() {
        return Err(KeyError::Empty(path.to_owned()));
    }
    Ok(SecretString::from(key))
}

impl SecretSource {
    /// Reads the key from `path`.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let path = path.into();
        let key = read_key(&path)?;
        Ok(Self {
            path: Some(path),
            loaded: Arc::new(RwLock::new(Loaded::new(key))),
        })
    }

    /// A fixed key (tests, `dev`).
    pub fn fixed(key: impl Into<String>) -> Self {
        Self {
            path: None,
            loaded: Arc::new(RwLock::new(Loaded::new(SecretString::from(key.into())))),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        self.loaded.write().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a replaced key keeps verifying notifications (zero: not at all).
    pub fn set_previous_key_grace(&self, grace: Duration) {
        self.write().grace = grace;
    }

    /// The current key: every outbound call signs with it.
    pub fn current(&self) -> Arc<SecretString> {
        self.read().key.clone()
    }

    /// The keys a notification may be signed with: the current one first, then the retired
    /// ones still inside the grace window, newest first.
    pub fn verification_keys(&self) -> Vec<(KeyRole, Arc<SecretString>)> {
        self.verification_keys_at(Instant::now())
    }

    fn verification_keys_at(&self, now: Instant) -> Vec<(KeyRole, Arc<SecretString>)> {
        let loaded = self.read();
        let mut keys = vec![(KeyRole::Current, loaded.key.clone())];
        keys.extend(
            loaded
                .retired
                .iter()
                .filter(|r| now.duration_since(r.at) < loaded.grace)
                .map(|r| (KeyRole::Previous, r.key.clone())),
        );
        keys
    }

    /// Why the key file could not be read on the last attempt, while that lasts. Never
    /// holds the key.
    pub fn problem(&self) -> Option<String> {
        self.read().problem.clone()
    }

    /// Makes `key` the current key, retiring the one in use (tests and `refresh`). Returns
    /// whether the key changed.
    pub fn install(&self, key: SecretString) -> bool {
        self.install_at(key, Instant::now())
    }

    fn install_at(&self, key: SecretString, now: Instant) -> bool {
        let mut loaded = self.write();
        loaded.problem = None;
        if loaded.key.expose_secret() == key.expose_secret() {
            return false;
        }
        let old = std::mem::replace(&mut loaded.key, Arc::new(key));
        // A key that comes back (rotated away and back again) is current, not retired.
        let current = loaded.key.clone();
        loaded
            .retired
            .retain(|r| r.key.expose_secret() != current.expose_secret());
        loaded.retired.insert(0, Retired { key: old, at: now });
        loaded.retired.truncate(MAX_RETIRED);
        loaded.forget_expired(now);
        true
    }

    /// Re-reads the key file. Returns `Ok(true)` when a new key was loaded; on error the last
    /// good key stays in use and [`SecretSource::problem`] reports the error.
    pub fn refresh(&self) -> Result<bool, KeyError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        // The file is tiny: reading it is as cheap as comparing its modification time, and
        // it cannot miss a rewrite within the same timestamp tick.
        match read_key(path) {
            Ok(key) => {
                let changed = self.install(key);
                self.write().forget_expired(Instant::now());
                Ok(changed)
            }
            Err(e) => {
                self.write().problem = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// How often the key file is re-read.
const KEY_POLL: Duration = Duration::from_secs(1);
/// How often a key file that stays unreadable is logged again.
const KEY_PROBLEM_REPEAT: Duration = Duration::from_secs(60);
/// How often the API token file is re-read.
const TOKEN_POLL: Duration = Duration::from_secs(5);

/// Re-reads the secret key file every second (`KEY_POLL`) until `stop` is cancelled: a new key is
/// used by outbound calls at once; an unreadable or empty file keeps the last good key, turns
/// readiness off and is logged loudly (again every minute while it lasts).
pub async fn watch_key_file(key: SecretSource, stop: CancellationToken) {
    let mut tick = tokio::time::interval(KEY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since_log: Option<Instant> = None;
    metrics::gauge!("o2o_secret_key_file_ok").set(1.0);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match key.refresh() {
            Ok(changed) => {
                if failing_since_log.take().is_some() {
                    tracing::info!("DOKU secret key file readable again; ready");
                    metrics::gauge!("o2o_secret_key_file_ok").set(1.0);
                }
                if changed {
                    metrics::counter!("o2o_secret_key_rotations_total").increment(1);
                    tracing::info!(
                        "DOKU secret key file changed: outbound calls use the new key now; the \
                         previous key still verifies notifications during the grace window"
                    );
                }
            }
            Err(e) => {
                metrics::gauge!("o2o_secret_key_file_ok").set(0.0);
                let now = Instant::now();
                let due = failing_since_log.is_none_or(|at| now - at >= KEY_PROBLEM_REPEAT);
                if due {
                    failing_since_log = Some(now);
                    tracing::error!(
                        error = %e,
                        "DOKU SECRET KEY FILE UNREADABLE: keeping the last good key; NOT READY \
                         until the file is fixed"
                    );
                }
            }
        }
    }
}

/// Re-reads the API token file every 5 s (`TOKEN_POLL`) until `stop` is cancelled; an unreadable
/// file keeps the last good token and is logged.
pub async fn watch_token_file(token: SecretSource, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TOKEN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => if let Err(e) = token.refresh() {
                tracing::error!(error = %e, "cannot re-read --api-token-file; keeping the last good token");
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(src: &SecretSource) -> Vec<(KeyRole, String)> {
        names_at(src, Instant::now())
    }

    fn names_at(src: &SecretSource, at: Instant) -> Vec<(KeyRole, String)> {
        src.verification_keys_at(at)
            .into_iter()
            .map(|(role, k)| (role, k.expose_secret().to_owned()))
            .collect()
    }

    #[test]
    fn reads_trims_and_hides_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "SK-abc\n").unwrap();
        let src = SecretSource::from_file(&path).unwrap();
        assert_eq!(src.current().expose_secret(), "SK-abc");
        assert!(!format!("{src:?}").contains("SK-abc"));
    }

    #[test]
    fn empty_or_missing_file_is_an_error_and_keeps_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(matches!(
            SecretSource::from_file(&path),
            Err(KeyError::Read { .. })
        ));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            SecretSource::from_file(&path),
            Err(KeyError::Empty(_))
        ));
        std::fs::write(&path, "SK-1").unwrap();
        let src = SecretSource::from_file(&path).unwrap();
        assert_eq!(src.problem(), None);
        std::fs::remove_file(&path).unwrap();
        assert!(src.refresh().is_err());
        assert_eq!(src.current().expose_secret(), "SK-1");
        let problem = src.problem().expect("a problem is reported");
        assert!(problem.contains("cannot read"), "{problem}");
        assert!(!problem.contains("SK-1"));

        std::fs::write(&path, "").unwrap();
        assert!(matches!(src.refresh(), Err(KeyError::Empty(_))));
        assert_eq!(src.current().expose_secret(), "SK-1");
        assert!(src.problem().unwrap().contains("empty"));

        // The file is good again: the problem clears, the key is the same.
        std::fs::write(&path, "SK-1\n").unwrap();
        assert!(!src.refresh().unwrap());
        assert_eq!(src.problem(), None);
    }

    #[test]
    fn a_rewrite_is_seen_even_with_the_same_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "SK-1").unwrap();
        let src = SecretSource::from_file(&path).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "SK-2").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(src.refresh().unwrap());
        assert_eq!(src.current().expose_secret(), "SK-2");
        assert!(!src.refresh().unwrap(), "unchanged content is no change");
    }

    #[test]
    fn a_rotated_key_verifies_until_its_grace_ends() {
        let t0 = Instant::now();
        let half_hours = |n: u64| t0 + Duration::from_secs(n * 1800);
        let src = SecretSource::fixed("SK-A");
        src.set_previous_key_grace(Duration::from_secs(3600));
        assert_eq!(names(&src), [(KeyRole::Current, "SK-A".into())]);

        assert!(src.install_at(SecretString::from("SK-B"), t0));
        assert_eq!(src.current().expose_secret(), "SK-B");
        assert_eq!(
            names_at(&src, t0),
            [
                (KeyRole::Current, "SK-B".into()),
                (KeyRole::Previous, "SK-A".into())
            ]
        );

        assert!(src.install_at(SecretString::from("SK-C"), half_hours(1)));
        assert_eq!(
            names_at(&src, half_hours(1)),
            [
                (KeyRole::Current, "SK-C".into()),
                (KeyRole::Previous, "SK-B".into()),
                (KeyRole::Previous, "SK-A".into())
            ]
        );

        // A's window (from its retirement) ends first, then B's.
        assert_eq!(
            names_at(&src, half_hours(2)),
            [
                (KeyRole::Current, "SK-C".into()),
                (KeyRole::Previous, "SK-B".into())
            ]
        );
        assert_eq!(
            names_at(&src, half_hours(3)),
            [(KeyRole::Current, "SK-C".into())]
        );
    }

    #[test]
    fn without_grace_only_the_current_key_verifies() {
        let src = SecretSource::fixed("SK-A");
        assert!(src.install(SecretString::from("SK-B")));
        assert_eq!(names(&src), [(KeyRole::Current, "SK-B".into())]);
    }

    #[test]
    fn a_key_rotated_back_is_current_once_and_few_keys_are_kept() {
        let src = SecretSource::fixed("SK-A");
        src.set_previous_key_grace(Duration::from_secs(3600));
        src.install(SecretString::from("SK-B"));
        src.install(SecretString::from("SK-A"));
        assert_eq!(
            names(&src),
            [
                (KeyRole::Current, "SK-A".into()),
                (KeyRole::Previous, "SK-B".into())
            ]
        );
        for k in ["SK-1", "SK-2", "SK-3", "SK-4"] {
            src.install(SecretString::from(k));
        }
        assert_eq!(src.verification_keys().len(), 1 + MAX_RETIRED);
    }
}
