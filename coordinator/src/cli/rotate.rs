//! `pki rotate-server` and `pki rotate-cli`: a new coordinator (or CLI) certificate and key
//! from the same CA, the previous pair kept as `.bak`. Run where `ca-key.pem` is; nothing else
//! in the PKI dir changes, so agents and enrolled hosts are unaffected (they trust the CA).

use std::path::{Path, PathBuf};

use ouroboros_shared::pki::{
    CertificateAuthority, LeafKind, PkiDir, Validity, first_cert_der, subject_alt_names,
};

use crate::admin::args::Failure;

/// Which certificate to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotated {
    /// `coordinator.pem`: its subject alternative names kept, `extra_sans` added.
    Server,
    /// `cli.pem`.
    Cli,
}

/// `path` with `.bak` appended.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".bak");
    PathBuf::from(name)
}

/// Issues the new pair, moves the old one to `.bak` and puts the new one in its place.
/// Returns the files written. Nothing is changed when the CA or the old certificate cannot be
/// read.
pub fn rotate(
    pki: &PkiDir,
    which: Rotated,
    extra_sans: &[String],
    days: u32,
) -> Result<Vec<PathBuf>, Failure> {
    let (cert, key) = match which {
        Rotated::Server => (pki.coordinator_cert(), pki.coordinator_key()),
        Rotated::Cli => (pki.cli_cert(), pki.cli_key()),
    };
    let ca = CertificateAuthority::load(pki).map_err(|e| {
        Failure::usage(format!(
            "{e} (rotation signs with the CA key: run it where ca-key.pem is kept)"
        ))
    })?;
    let old = std::fs::read_to_string(&cert)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", cert.display())))?;
    let kind = match which {
        Rotated::Server => {
            let mut sans = first_cert_der(&old)
                .map(|d| subject_alt_names(&d))
                .unwrap_or_default();
            for san in extra_sans {
                if !sans.contains(san) {
                    sans.push(san.clone());
                }
            }
            LeafKind::Coordinator { sans }
        }
        Rotated::Cli => LeafKind::Admin,
    };
    let issued = ca
        .issue(&kind, Validity::days_from_now(days))
        .map_err(Failure::usage)?;
    // Both new files complete first; then the old pair aside and the new one in place.
    let new_key = staged(&key, &issued.key_pem, 0o600)?;
    let new_cert = staged(&cert, &issued.cert_pem, 0o644)?;
    for (path, staged) in [(&key, new_key), (&cert, new_cert)] {
        if path.exists() {
            std::fs::rename(path, backup_path(path)).map_err(write_failed(path))?;
        }
        std::fs::rename(&staged, path).map_err(write_failed(path))?;
    }
    Ok(vec![cert, key])
}

fn write_failed(path: &Path) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| Failure::runtime(format!("cannot write {}: {e}", path.display()))
}

/// Writes `contents` next to `path` (`path.new`, mode `mode`) and returns that file.
fn staged(path: &Path, contents: &str, mode: u32) -> Result<PathBuf, Failure> {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    let tmp = PathBuf::from(name);
    ouroboros_shared::files::write_fresh(&tmp, contents, mode).map_err(write_failed(&tmp))?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use ouroboros_shared::pki::{self, PeerIdentity, identify, serial_hex};

    use super::*;

    #[test]
    fn rotation_replaces_the_pair_keeps_the_old_one_and_the_server_names() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        pki::init(&pki, &["coord.example".to_owned()]).unwrap();
        let old_server = std::fs::read_to_string(pki.coordinator_cert()).unwrap();
        let old_cli = std::fs::read_to_string(pki.cli_cert()).unwrap();
        let ca_before = std::fs::read_to_string(pki.ca_cert()).unwrap();

        rotate(&pki, Rotated::Server, &["10.9.8.7".to_owned()], 30).unwrap();
        let new_server = std::fs::read_to_string(pki.coordinator_cert()).unwrap();
        let der = first_cert_der(&new_server).unwrap();
        assert_ne!(
            serial_hex(&der),
            serial_hex(&first_cert_der(&old_server).unwrap())
        );
        let names = subject_alt_names(&der);
        for want in ["localhost", "127.0.0.1", "coord.example", "10.9.8.7"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert_eq!(
            std::fs::read_to_string(backup_path(&pki.coordinator_cert())).unwrap(),
            old_server
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.coordinator_key()), 0o600);
        assert_eq!(mode(&backup_path(&pki.coordinator_key())), 0o600);
        // The new pair works together: a server TLS configuration accepts it.
        pki::server_config(
            &pki.ca_cert(),
            &pki.coordinator_cert(),
            &pki.coordinator_key(),
        )
        .unwrap();

        rotate(&pki, Rotated::Cli, &[], 30).unwrap();
        let new_cli = std::fs::read_to_string(pki.cli_cert()).unwrap();
        assert_ne!(new_cli, old_cli);
        assert!(matches!(
            identify(&first_cert_der(&new_cli).unwrap()).unwrap(),
            PeerIdentity::Admin(_)
        ));
        assert_eq!(std::fs::read_to_string(pki.ca_cert()).unwrap(), ca_before);
        // No staged file is left.
        assert!(
            std::fs::read_dir(pki.dir()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".new"))
        );
    }

    #[test]
    fn without_the_ca_key_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        pki::init(&pki, &[]).unwrap();
        std::fs::remove_file(pki.ca_key()).unwrap();
        let before = std::fs::read_to_string(pki.cli_cert()).unwrap();
        let err = rotate(&pki, Rotated::Cli, &[], 30).unwrap_err();
        assert!(
            err.message.contains("run it where ca-key.pem is kept"),
            "{}",
            err.message
        );
        assert_eq!(std::fs::read_to_string(pki.cli_cert()).unwrap(), before);
        assert!(!backup_path(&pki.cli_cert()).exists());
    }
}
