//! Files written whole: a fresh file with its mode set at creation, synced before it is
//! renamed into place by the caller (keys must never exist with looser permissions).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes `contents` to `path` as a new file (an older one there is removed first) created
/// with `mode`, and syncs it.
pub fn write_fresh(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_fresh_file_replaces_a_leftover_with_its_own_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem.tmp");
        std::fs::write(&path, "old, world-readable").unwrap();
        super::write_fresh(&path, "new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
