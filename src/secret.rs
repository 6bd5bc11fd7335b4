//! The DOKU Secret Key: read from a file, held as a [`SecretString`] whose `Debug` prints
//! nothing, and re-read when the file changes so that a rotated key takes effect without a
//! restart.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use secrecy::{ExposeSecret, SecretString};

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

#[derive(Debug)]
struct Loaded {
    key: Arc<SecretString>,
    modified: Option<SystemTime>,
}

/// The current Secret Key, shared by the DOKU client and the notification ingress.
///
/// Cloning shares the same key. [`SecretKeySource::refresh`] re-reads the file when its
/// modification time changed; a file that became unreadable or empty keeps the last good key.
#[derive(Clone, Debug)]
pub struct SecretKeySource {
    path: Option<PathBuf>,
    loaded: Arc<RwLock<Loaded>>,
}

fn read_key(path: &Path) -> Result<(SecretString, Option<SystemTime>), KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    // A trailing newline from `echo` or a Kubernetes Secret is not part of the key.
    let key = text.trim_end_matches(['\r', '\n']).to_owned();
    if key.is_empty() {
        return Err(KeyError::Empty(path.to_owned()));
    }
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((SecretString::from(key), modified))
}

impl SecretKeySource {
    /// Reads the key from `path`.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let path = path.into();
        let (key, modified) = read_key(&path)?;
        Ok(Self {
            path: Some(path),
            loaded: Arc::new(RwLock::new(Loaded {
                key: Arc::new(key),
                modified,
            })),
        })
    }

    /// A fixed key (tests, `dev`).
    pub fn fixed(key: impl Into<String>) -> Self {
        Self {
            path: None,
            loaded: Arc::new(RwLock::new(Loaded {
                key: Arc::new(SecretString::from(key.into())),
                modified: None,
            })),
        }
    }

    /// The current key.
    pub fn current(&self) -> Arc<SecretString> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key
            .clone()
    }

    /// Re-reads the key file if it changed. Returns `Ok(true)` when a new key was loaded;
    /// on error the last good key stays in use.
    pub fn refresh(&self) -> Result<bool, KeyError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if modified.is_some() && modified == loaded.modified {
                return Ok(false);
            }
        }
        let (key, modified) = read_key(path)?;
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        let changed = loaded.key.expose_secret() != key.expose_secret();
        *loaded = Loaded {
            key: Arc::new(key),
            modified,
        };
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trims_and_hides_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "SK-abc\n").unwrap();
        let src = SecretKeySource::from_file(&path).unwrap();
        assert_eq!(src.current().expose_secret(), "SK-abc");
        assert!(!format!("{src:?}").contains("SK-abc"));
    }

    #[test]
    fn empty_or_missing_file_is_an_error_and_keeps_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(matches!(
            SecretKeySource::from_file(&path),
            Err(KeyError::Read { .. })
        ));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            SecretKeySource::from_file(&path),
            Err(KeyError::Empty(_))
        ));
        std::fs::write(&path, "SK-1").unwrap();
        let src = SecretKeySource::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(src.refresh().is_err());
        assert_eq!(src.current().expose_secret(), "SK-1");
    }
}
