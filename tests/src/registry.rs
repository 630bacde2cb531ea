//! A real registry (distribution 2.8, Debian's `docker-registry`) on a free loopback port.
//!
//! Each [`Registry`] has its own config, storage and log in a temporary directory, listens on
//! `127.0.0.1:<free port>` over plain HTTP (engines treat registries on 127.0.0.0/8 as insecure
//! automatically, so no daemon config is needed) and optionally requires htpasswd Basic auth.
//! Dropping it kills the process and deletes the directory.
//!
//! Which requests it served is read back from its access log ([`Registry::access_log`]).
//! Access lines are written right after the response, so poll with [`crate::eventually`]
//! rather than reading once just after a request.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::access_log::{AccessEntry, parse_access_log};
use crate::process::Process;
use crate::raw_http::{HttpResponse, http_request, http_request_with_body};

/// Environment variable naming the registry binary, if not `/usr/bin/docker-registry`.
pub const REGISTRY_ENV: &str = "OUROBOROS_TEST_REGISTRY";

/// All four manifest media types: with them, `HEAD` answers the digest `docker pull` records.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

/// A running registry.
pub struct Registry {
    process: Process,
    dir: tempfile::TempDir,
    addr: String,
    credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry (anyone may push and pull).
    pub fn start() -> anyhow::Result<Registry> {
        Registry::launch(None)
    }

    /// Starts a registry that requires Basic auth as `user`/`password` for everything.
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Registry> {
        Registry::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("ouroboros-test-registry-")
            .tempdir()
            .context("creating the registry directory")?;
        if let Some((user, password)) = &credentials {
            write_htpasswd(&dir.path().join("htpasswd"), user, password)?;
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                config_yaml(dir.path(), &addr, credentials.is_some()),
            )
            .context("writing config.yml")?;
            let mut command = Command::new(registry_binary());
            command.arg("serve").arg(&config);
            let process = Process::spawn_command(command)?;
            match wait_until_up(&process, &addr) {
                Ok(()) => {
                    return Ok(Registry {
                        process,
                        dir,
                        addr,
                        credentials,
                    });
                }
                // Another process took the port between our probe and the registry's bind.
                Err(error) if process.log().contains("address already in use") => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context("starting docker-registry: no free port")
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// The user and password required, for an auth registry.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's whole output (logrus lines and access lines).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Every request served so far, oldest first.
    pub fn access_log(&self) -> Vec<AccessEntry> {
        parse_access_log(&self.process.log())
    }

    /// How many `method` requests on exactly `path` were served, e.g.
    /// `count("HEAD", "/v2/app/manifests/1")`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|e| e.is(method, path))
            .count()
    }

    /// Sends one request to the registry with its credentials (if any) as Basic auth.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        self.request_with_body(method, path, headers, &[])
    }

    /// [`Registry::request`] with a body, e.g. `PUT /v2/<repo>/manifests/<tag>` of a manifest
    /// (with its media type as `Content-Type`).
    pub fn request_with_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<HttpResponse> {
        let authorization = self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{u}:{p}")
                )
            )
        });
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(value) = &authorization {
            all.push(("Authorization", value));
        }
        http_request_with_body(&self.addr, method, path, &all, body)
    }

    /// The digest the registry holds for `repo:tag` (what `docker pull` records), or `None`
    /// when the tag does not exist. Shows up in the access log as a `HEAD`.
    pub fn manifest_digest(&self, repo: &str, tag: &str) -> anyhow::Result<Option<String>> {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let response = self.request("HEAD", &path, &[("Accept", MANIFEST_ACCEPT)])?;
        match response.status {
            200 => response
                .header("Docker-Content-Digest")
                .map(|d| Some(d.to_owned()))
                .context("no Docker-Content-Digest header"),
            404 => Ok(None),
            status => bail!("HEAD {path} answered {status}"),
        }
    }

    /// The registry's own directory (config, htpasswd, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's process id (e.g. to read its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn registry_binary() -> PathBuf {
    std::env::var_os(REGISTRY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn config_yaml(dir: &Path, addr: &str, auth: bool) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: {secret:016x}\n",
        root = dir.join("storage").display(),
        secret = fastrand::u64(..),
    );
    if auth {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: ouroboros-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    yaml
}

/// Writes a bcrypt htpasswd line made by `htpasswd -Bbn` (the registry accepts only bcrypt).
fn write_htpasswd(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let output = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .context("running htpasswd (apache2-utils)")?;
    if !output.status.success() {
        bail!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    fs::write(path, format!("{line}\n")).context("writing htpasswd")
}

fn wait_until_up(process: &Process, addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = process.try_status()? {
            bail!(
                "docker-registry exited with {status}; log tail:\n{}",
                process.log_tail(20)
            );
        }
        let answered = http_request(addr, "GET", "/v2/", &[])
            .is_ok_and(|response| response.status == 200 || response.status == 401);
        if answered {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "docker-registry did not answer on {addr} within {START_TIMEOUT:?}; log tail:\n{}",
                process.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_auth_only_when_asked() {
        let plain = config_yaml(Path::new("/r"), "127.0.0.1:5000", false);
        assert!(plain.contains("addr: 127.0.0.1:5000"));
        assert!(plain.contains("rootdirectory: /r/storage"));
        assert!(!plain.contains("htpasswd"));
        let auth = config_yaml(Path::new("/r"), "127.0.0.1:5000", true);
        assert!(auth.contains("path: /r/htpasswd"));
    }
}
