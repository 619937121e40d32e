//! The configured sources, each with its secrets resolved into keys of its
//! scheme and its allowlist read, and the errors that name the key at fault.

use super::*;

/// One configured source, with its secrets resolved.
pub struct SourceEndpoint {
    pub name: String,
    pub kind: SourceKind,
    /// One per configured secret, newest first.
    pub keys: Vec<SigningKey>,
    pub tolerance: Duration,
    /// `None`: every address may post.
    pub allowlist: Option<Allowlist>,
    pub limits: Arc<Limits>,
}

/// A source that cannot be set up; `at` names its key
/// (`sources.<name>.secrets[0]`, `sources.<name>.allow_ips_file`).
#[derive(Debug, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct SourceError {
    pub at: String,
    pub problem: SourceProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceProblem {
    #[error(transparent)]
    Secret(#[from] crate::config::SecretError),
    #[error(transparent)]
    Key(#[from] scheme::KeyError),
    #[error(transparent)]
    Allowlist(#[from] edge::AllowlistError),
}

impl SourceEndpoint {
    /// Resolves every secret into a key of the source's scheme and reads
    /// the allowlist file; every error is reported, not just the first.
    pub fn from_config(name: &str, source: &SourceConfig) -> Result<Self, Vec<SourceError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (index, secret) in source.secrets.iter().enumerate() {
            let key = secret
                .resolve()
                .map_err(SourceProblem::from)
                .and_then(|value| Ok(SigningKey::new(source.kind, &value)?));
            match key {
                Ok(key) => keys.push(key),
                Err(problem) => errors.push(SourceError {
                    at: format!("sources.{name}.secrets[{index}]"),
                    problem,
                }),
            }
        }
        let allowlist = Allowlist::load(&source.allow_ips, source.allow_ips_file.as_deref())
            .unwrap_or_else(|err| {
                errors.push(SourceError {
                    at: format!("sources.{name}.allow_ips_file"),
                    problem: err.into(),
                });
                None
            });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SourceEndpoint {
            name: name.to_owned(),
            kind: source.kind,
            keys,
            tolerance: source.tolerance,
            allowlist,
            limits: Arc::new(Limits::new(LimitSettings {
                max_concurrency: source.max_concurrency,
                rate_limit: source.rate_limit,
            })),
        })
    }
}

/// Every source of `config`, by URL path; the errors of all of them.
pub fn endpoints(config: &Config) -> Result<HashMap<String, SourceEndpoint>, Vec<SourceError>> {
    let mut endpoints = HashMap::new();
    let mut errors = Vec::new();
    for (name, source) in &config.sources {
        match SourceEndpoint::from_config(name, source) {
            Ok(endpoint) => {
                endpoints.insert(source.path.clone(), endpoint);
            }
            Err(more) => errors.extend(more),
        }
    }
    if errors.is_empty() {
        Ok(endpoints)
    } else {
        Err(errors)
    }
}
