//! The enrolment side of `serve`: join tokens, the agents' certificate serials (with the
//! deny-list the TLS handshake checks) and the CA that signs.

use std::sync::Arc;

use ouroboros_shared::pki::{CertificateAuthority, PkiDir, PkiError};

use super::ServeError;
use crate::fleet::Fleet;
use crate::fleet::certs::{CertBook, DenyList};
use crate::fleet::store::RedbStore;
use crate::fleet::tokens::TokenBook;
use crate::server::enrol::Enrolment;

/// The join tokens and the CA that signs for them; without `ca-key.pem` (the key kept
/// offline) tokens are refused.
pub(super) fn open(
    pki: &PkiDir,
    store: Arc<RedbStore>,
    denied: DenyList,
    fleet: Arc<Fleet>,
) -> Result<Enrolment, ServeError> {
    let pki_err = |source| ServeError::Pki {
        dir: pki.dir().display().to_string(),
        source,
    };
    let ca = if pki.ca_key().exists() {
        Some(CertificateAuthority::load(pki).map_err(pki_err)?)
    } else {
        tracing::info!(key = %pki.ca_key().display(), "No CA key: enrolment by join token is off.");
        None
    };
    let ca_pem = std::fs::read_to_string(pki.ca_cert()).map_err(|e| {
        pki_err(PkiError::Read {
            path: pki.ca_cert(),
            reason: e.to_string(),
        })
    })?;
    let certs = Arc::new(CertBook::open(store.clone(), denied)?);
    Ok(Enrolment::new(TokenBook::open(store)?, certs, fleet, ca, ca_pem).with_pki_dir(pki.clone()))
}
