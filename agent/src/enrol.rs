//! `--join TOKEN`: enrolment of a host that has no certificate yet. The agent makes its key
//! here, the coordinator signs a request for it ([`ouroboros_shared::join::enrol`]), and the
//! certificate, key (mode 0600) and CA go where the agent's startup reads them. Nothing is
//! written unless the coordinator signed; the certificate is written last, so its presence
//! means the host is enrolled.

use std::path::{Path, PathBuf};

use ouroboros_shared::host::HostName;
use ouroboros_shared::join::{EnrolError, JoinToken, enrol};
use tracing::info;

/// What `--join` does, decided from the command line.
#[derive(Debug)]
pub struct JoinPlan {
    pub coordinator: String,
    pub token: JoinToken,
    pub host: HostName,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Enrol(#[from] EnrolError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl JoinError {
    /// Exit code: 1 when the coordinator could not be reached (a restart may succeed), 64 for
    /// a refusal or a coordinator other than the token's (trying again does not help).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Enrol(e) if e.is_transient() => 1,
            Self::Write { .. } => 1,
            Self::Enrol(_) => 64,
        }
    }
}

/// The machine's name, for `--host-name`'s default.
pub fn machine_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

/// Enrols this host and stores its certificate, key and CA.
pub async fn join(plan: &JoinPlan) -> Result<(), JoinError> {
    info!(host = %plan.host, coordinator = %plan.coordinator, token = plan.token.id(), "Enrolling this host with a join token.");
    let enrolled = enrol(&plan.coordinator, &plan.token, &plan.host).await?;
    for path in [&plan.ca, &plan.key, &plan.cert] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JoinError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    replace(&plan.ca, &enrolled.ca_pem, 0o644)?;
    replace(&plan.key, &enrolled.key_pem, 0o600)?;
    replace(&plan.cert, &enrolled.cert_pem, 0o644)?;
    info!(host = %plan.host, cert = %plan.cert.display(), "Host enrolled; certificate stored.");
    Ok(())
}

/// Writes `contents` to a temporary file with `mode` and renames it over `path`.
pub(crate) fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), JoinError> {
    let err = |source| JoinError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    ouroboros_shared::files::write_fresh(&tmp, contents, mode).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
