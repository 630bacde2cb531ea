//! The agent's own container, when it runs in one: its id, and the image it runs (shown by
//! `hosts`, so that a fleet half-way through a self-update is visible).

use bollard::Docker;
use ouroboros_shared::reference::ImageRef;

/// The agent's own container id, when it runs in a container. Docker bind-mounts the
/// container's `hostname`, `hosts` and `resolv.conf` from `DATA_ROOT/containers/ID/`, so
/// `/proc/self/mountinfo` names the full id whatever the network mode (with `--network host`
/// the host name is the machine's, not the short id). Else `HOSTNAME` when it is a short id
/// (the engine's default host name).
pub fn container_id() -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| from_mountinfo(&text))
        .or_else(|| {
            let host = std::env::var("HOSTNAME").ok()?;
            (host.len() == 12 && host.bytes().all(|b| b.is_ascii_hexdigit())).then_some(host)
        })
}

/// The first `…/containers/<64 hex>/…` path of a mount of `/etc/hostname` or `/etc/hosts`.
fn from_mountinfo(text: &str) -> Option<String> {
    text.lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            matches!(fields.nth(4), Some("/etc/hostname" | "/etc/hosts"))
        })
        .find_map(|line| {
            let root = line.split_whitespace().nth(3)?;
            let (_, rest) = root.rsplit_once("/containers/")?;
            let id = rest.split('/').next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
        })
}

/// Whether `id` (full or short) names the container `own` (full or short).
pub fn same(id: &str, own: &str) -> bool {
    !id.is_empty() && !own.is_empty() && (id.starts_with(own) || own.starts_with(id))
}

/// The image container `id` runs, as `repo:tag@sha256:…` when the engine knows the digest of
/// its reference's repository, else the reference as configured.
pub async fn image(docker: &Docker, id: &str) -> Option<String> {
    let container = docker.inspect_container(id, None).await.ok()?;
    let reference = container.config.and_then(|c| c.image)?;
    let image = docker.inspect_image(container.image.as_deref()?).await.ok();
    let digests = image.and_then(|i| i.repo_digests).unwrap_or_default();
    let digest = ImageRef::parse(&reference)
        .ok()
        .and_then(|r| r.digest_in(&digests).map(str::to_owned));
    Some(match digest {
        Some(d) => format!("{}@{d}", reference.split('@').next().unwrap_or(&reference)),
        None => reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_id_comes_from_the_hostname_mount() {
        let id = "0123456789abcdef".repeat(4);
        let text = format!(
            "1201 1195 0:52 / / rw,relatime - overlay overlay rw\n\
             1210 1201 254:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda1 rw\n\
             1211 1201 254:1 /tmp/engine-3/root/containers/{id}/hostname /etc/hostname rw - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(from_mountinfo(&text), Some(id));
        assert_eq!(
            from_mountinfo("22 1 0:21 / /proc rw - proc proc rw\n"),
            None,
            "outside a container"
        );
        // A volume that happens to hold a `containers/<id>` path is not the hostname mount.
        let volume = format!(
            "30 1 254:1 /data/containers/{} /data rw - ext4 /dev/vda1 rw\n",
            "a".repeat(64)
        );
        assert_eq!(from_mountinfo(&volume), None);
    }

    #[test]
    fn short_and_full_ids_match() {
        let full = "0123456789abcdef".repeat(4);
        assert!(same(&full, &full[..12]));
        assert!(same(&full[..12], &full));
        assert!(!same("", &full));
        assert!(!same(&"f".repeat(64), &full));
    }
}
