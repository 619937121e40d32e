//! Secrets: a reference in routes.toml (`env:NAME`, `file:PATH`, never a
//! value), resolved at start into a [`Secret`] whose `Debug` hides it.

use super::ValueError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a secret lives. The value itself is read at start, never written
/// into routes.toml.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ValueError> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ValueError::EnvName(name.to_owned()));
            }
            return Ok(SecretRef::Env(name.to_owned()));
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(ValueError::NoPath);
            }
            return Ok(SecretRef::File(base_dir.join(path)));
        }
        // Never echo the value: it may be a pasted secret.
        Err(ValueError::LiteralSecret)
    }

    /// Reads the secret. Leading and trailing whitespace is trimmed, from
    /// files and variables alike (an editor's newline or a pasted space is
    /// never part of a signing secret or a token).
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvUnset(name.clone()))?
            }
            SecretRef::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
                    path: path.clone(),
                    source: Arc::new(source),
                })?
            }
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty(self.clone()));
        }
        Ok(Secret(value))
    }
}

/// A secret reference that does not resolve. Never contains a secret value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    EnvUnset(String),
    #[error("cannot read secret file `{}`: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("secret {0} is empty")]
    Empty(SecretRef),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "`env:{name}`"),
            SecretRef::File(path) => write!(f, "`file:{}`", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A resolved secret. Its `Debug` never shows the value, so it cannot leak
/// through a log line or an error by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_lose_surrounding_whitespace_from_files_and_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), " admin-token-0123456789 \r\n").unwrap();
        let file = SecretRef::parse("file:token", dir.path()).unwrap();
        assert_eq!(file.resolve().unwrap().expose(), "admin-token-0123456789");
        std::fs::write(dir.path().join("blank"), " \n").unwrap();
        let blank = SecretRef::parse("file:blank", dir.path()).unwrap();
        assert!(
            blank
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
    }

    #[test]
    fn secret_refs_never_accept_literals() {
        let base = Path::new("/etc/switchyard");
        assert_eq!(
            SecretRef::parse("env:STRIPE_KEY", base).unwrap(),
            SecretRef::Env("STRIPE_KEY".into())
        );
        assert_eq!(
            SecretRef::parse("file:secrets/stripe", base).unwrap(),
            SecretRef::File("/etc/switchyard/secrets/stripe".into())
        );
        let err = SecretRef::parse("whsec_supersecret", base).unwrap_err();
        assert!(!err.to_string().contains("supersecret"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret("whsec_abc".into());
        assert!(!format!("{secret:?}").contains("abc"));
    }
}
