//! Registry credentials, looked up per registry the way the docker CLI does: from a docker
//! `config.json` (`credHelpers` for that registry, else `credsStore`, else `auths` with `auth`,
//! `username`/`password`, `identitytoken` or `registrytoken`), and then `REPO_USER`/`REPO_PASS`,
//! which go to every registry as they did in Ouroboros. Helpers are the `docker-credential-*`
//! programs on `PATH`, run with a deadline; their answers are kept for a minute. The file is
//! read again when it changes (`docker login` rewrites it). No secret reaches a log or an
//! error message: `Debug` redacts, and errors name registries and programs only.
//!
//! (Over 600 lines: the docker CLI's lookup order, each source with its tests.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ouroboros_proto::v1 as pb;
use ouroboros_shared::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a helper's answer is reused.
const HELPER_CACHE: Duration = Duration::from_secs(60);

/// What a registry is given.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Username and password: HTTP Basic, or the Basic login of a token request.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user), exchanged at
    /// the registry's token server.
    IdentityToken(String),
    /// A bearer token sent to the registry as it is (`registrytoken`).
    RegistryToken(String),
}

impl std::fmt::Debug for Secret {
    /// The kind and the user name only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Self::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// A secret and where it came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub secret: Secret,
    /// `REPO_USER`, `docker config auths`, `docker-credential-NAME`.
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret", &self.secret)
            .field("source", &self.source)
            .finish()
    }
}

impl Credential {
    /// The credentials an agent hands to its engine for a pull.
    pub fn pull_auth(&self) -> pb::RegistryAuth {
        let mut auth = pb::RegistryAuth::default();
        match &self.secret {
            Secret::Basic { username, password } => {
                auth.username.clone_from(username);
                auth.password.clone_from(password);
            }
            Secret::IdentityToken(t) => auth.identity_token.clone_from(t),
            Secret::RegistryToken(t) => auth.registry_token.clone_from(t),
        }
        auth
    }
}

/// One `auths` entry, decoded.
#[derive(Clone, Default)]
struct AuthEntry {
    username: String,
    password: String,
    identity_token: String,
    registry_token: String,
}

/// What a docker `config.json` says about credentials.
#[derive(Clone, Default)]
struct DockerConfig {
    /// By registry host (`docker.io` for Docker Hub's aliases).
    auths: HashMap<String, AuthEntry>,
    helpers: HashMap<String, String>,
    store: Option<String>,
}

struct Loaded {
    modified: Option<SystemTime>,
    config: DockerConfig,
}

/// The credentials of every registry. Cheap to share behind an `Arc`.
pub struct Credentials {
    repo: Option<(String, String)>,
    docker: Option<(PathBuf, Mutex<Loaded>)>,
    helper_cache: Mutex<HashMap<String, (Instant, Option<Credential>)>>,
    /// `PATH` for helpers when not the process's own (unit tests).
    helper_path: Option<std::ffi::OsString>,
    helper_timeout: Duration,
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            repo: None,
            docker: None,
            helper_cache: Mutex::new(HashMap::new()),
            helper_path: None,
            helper_timeout: HELPER_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("repo_user", &self.repo.as_ref().map(|r| &r.0))
            .field("docker_config", &self.docker.as_ref().map(|d| &d.0))
            .finish_non_exhaustive()
    }
}

/// The registry host a `config.json` key or a reference's registry stands for, the way the
/// docker CLI compares them (scheme and path dropped, Docker Hub's names folded into one).
pub fn registry_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

/// The server name a credential helper is asked about.
fn helper_server(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY
    } else {
        registry
    }
}

fn valid_helper(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `config.json` inside `path` when it is a directory (as `DOCKER_CONFIG` is), else `path`.
pub fn config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_owned()
    }
}

fn parse_docker_config(text: &str) -> Result<DockerConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    let mut config = DockerConfig::default();
    if let Some(auths) = object.get("auths") {
        let auths = auths
            .as_object()
            .ok_or_else(|| "\"auths\" is not an object".to_owned())?;
        for (key, entry) in auths {
            let field = |name: &str| -> Result<String, String> {
                match entry.get(name) {
                    None | Some(serde_json::Value::Null) => Ok(String::new()),
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(format!("auths {key:?}: \"{name}\" is not a string")),
                }
            };
            let mut decoded = AuthEntry {
                username: field("username")?,
                password: field("password")?,
                identity_token: field("identitytoken")?,
                registry_token: field("registrytoken")?,
            };
            let auth = field("auth")?;
            if !auth.is_empty() {
                let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &auth)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| format!("auths {key:?}: \"auth\" is not base64 of text"))?;
                let (user, pass) = raw
                    .split_once(':')
                    .ok_or_else(|| format!("auths {key:?}: \"auth\" is not USER:PASSWORD"))?;
                decoded.username = user.to_owned();
                decoded.password = pass.to_owned();
            }
            config.auths.insert(registry_host(key), decoded);
        }
    }
    if let Some(helpers) = object.get("credHelpers") {
        let helpers = helpers
            .as_object()
            .ok_or_else(|| "\"credHelpers\" is not an object".to_owned())?;
        for (key, name) in helpers {
            let name = name
                .as_str()
                .filter(|n| valid_helper(n))
                .ok_or_else(|| format!("credHelpers {key:?}: not a helper name"))?;
            config.helpers.insert(registry_host(key), name.to_owned());
        }
    }
    match object.get("credsStore") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) if s.is_empty() => {}
        Some(serde_json::Value::String(s)) if valid_helper(s) => config.store = Some(s.clone()),
        Some(_) => return Err("\"credsStore\" is not a helper name".into()),
    }
    Ok(config)
}

fn read_docker_config(path: &Path) -> Result<Loaded, String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    Ok(Loaded {
        modified,
        config: parse_docker_config(&text)?,
    })
}

impl Credentials {
    /// `repo`: `REPO_USER`/`REPO_PASS`. `docker_config`: a `config.json` or a directory holding
    /// one; it must exist and parse.
    pub fn new(
        repo: Option<(String, String)>,
        docker_config: Option<&Path>,
    ) -> Result<Self, String> {
        let docker = match docker_config {
            // A config directory without a config.json holds no credentials (as for the
            // docker CLI); a file named outright must exist.
            Some(path) if path.is_dir() && !path.join("config.json").exists() => {
                tracing::warn!(dir = %path.display(), "Docker config directory has no config.json; no credentials from it.");
                None
            }
            Some(path) => {
                let file = config_file(path);
                let loaded = read_docker_config(&file)
                    .map_err(|e| format!("docker config {}: {e}", file.display()))?;
                Some((file, Mutex::new(loaded)))
            }
            None => None,
        };
        Ok(Self {
            repo,
            docker,
            ..Self::default()
        })
    }

    /// Only `REPO_USER`/`REPO_PASS` (or nothing).
    pub fn from_repo(repo: Option<(String, String)>) -> Self {
        Self {
            repo,
            ..Self::default()
        }
    }

    /// The docker config as it is now: read again when the file changed; a file that stopped
    /// parsing keeps the last good reading (and says so).
    fn docker_config(&self) -> Option<DockerConfig> {
        let (path, loaded) = self.docker.as_ref()?;
        let mut loaded = loaded.lock().unwrap_or_else(|p| p.into_inner());
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified != loaded.modified {
            match read_docker_config(path) {
                Ok(fresh) => *loaded = fresh,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Docker config unreadable; using its last good reading.");
                    loaded.modified = modified;
                }
            }
        }
        Some(loaded.config.clone())
    }

    /// The credential for `registry` (a reference's registry, e.g. `docker.io`,
    /// `ghcr.io`, `localhost:5000`), or `None` for anonymous access.
    pub async fn get(&self, registry: &str) -> Result<Option<Credential>, String> {
        let registry = registry_host(registry);
        if let Some(config) = self.docker_config() {
            let helper = config.helpers.get(&registry).or(config.store.as_ref());
            if let Some(helper) = helper
                && let Some(found) = self.helper(helper, &registry).await
            {
                return Ok(Some(found));
            }
            if let Some(entry) = config.auths.get(&registry) {
                let source = "docker config auths".to_owned();
                let secret = if !entry.identity_token.is_empty() {
                    Some(Secret::IdentityToken(entry.identity_token.clone()))
                } else if !entry.registry_token.is_empty() {
                    Some(Secret::RegistryToken(entry.registry_token.clone()))
                } else if !entry.username.is_empty() {
                    Some(Secret::Basic {
                        username: entry.username.clone(),
                        password: entry.password.clone(),
                    })
                } else {
                    None
                };
                if let Some(secret) = secret {
                    return Ok(Some(Credential { secret, source }));
                }
            }
        }
        Ok(self.repo.as_ref().map(|(username, password)| Credential {
            secret: Secret::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            source: "REPO_USER".to_owned(),
        }))
    }

    /// Asks `docker-credential-NAME get` about `registry`; `None` when it has nothing or
    /// failed. A failure is logged (once a minute per helper and registry: it is kept like an
    /// answer) and the lookup goes on to `auths` and `REPO_USER`, so that a helper missing on
    /// this machine (a config copied from a workstation) does not stop public images.
    async fn helper(&self, name: &str, registry: &str) -> Option<Credential> {
        match self.ask_helper(name, registry).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "Credential helper failed; trying the config's auths and REPO_USER.");
                self.helper_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(format!("{name} {registry}"), (Instant::now(), None));
                None
            }
        }
    }

    async fn ask_helper(&self, name: &str, registry: &str) -> Result<Option<Credential>, String> {
        let key = format!("{name} {registry}");
        if let Some((at, cached)) = self
            .helper_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < HELPER_CACHE
        {
            return Ok(cached.clone());
        }
        let answer = run_helper(
            name,
            helper_server(registry),
            self.helper_path.as_ref(),
            self.helper_timeout,
        )
        .await?;
        self.helper_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), answer.clone()));
        Ok(answer)
    }
}

/// Runs one credential helper's `get`, per the docker-credential-helpers protocol: the server
/// on stdin, `{"Username","Secret"}` on stdout, "credentials not found" when it has none.
async fn run_helper(
    name: &str,
    server: &str,
    path: Option<&std::ffi::OsString>,
    timeout: Duration,
) -> Result<Option<Credential>, String> {
    let program = format!("docker-credential-{name}");
    let failed = |what: String| format!("{program} get {server}: {what}");
    let mut command = tokio::process::Command::new(&program);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = command
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input (and exits) is judged by its answer.
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("credentials not found") || stderr.contains("credentials not found") {
            return Ok(None);
        }
        // The first line of stderr only: stdout is where a secret would be.
        let said = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(failed(format!("{}: {said}", output.status)));
    }
    let answer: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|_| failed("answered something that is not JSON".into()))?;
    let username = answer["Username"].as_str().unwrap_or_default();
    let secret = answer["Secret"].as_str().unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    let secret = if username == "<token>" {
        Secret::IdentityToken(secret.to_owned())
    } else {
        Secret::Basic {
            username: username.to_owned(),
            password: secret.to_owned(),
        }
    };
    Ok(Some(Credential {
        secret,
        source: program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn basic(user: &str, pass: &str) -> Secret {
        Secret::Basic {
            username: user.into(),
            password: pass.into(),
        }
    }

    #[test]
    fn config_keys_fold_like_the_docker_cli() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("registry-1.docker.io"), "docker.io");
        assert_eq!(registry_host("docker.io"), "docker.io");
        assert_eq!(registry_host("http://LOCALHOST:5000/v2/"), "localhost:5000");
        assert_eq!(registry_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn malformed_configs_are_refused_with_the_place_named() {
        for (text, says) in [
            ("[]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"auths": 1}"#, "\"auths\" is not an object"),
            (
                r#"{"auths": {"r.io": {"auth": "%%%"}}}"#,
                "\"r.io\": \"auth\" is not base64",
            ),
            (
                r#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#,
                "not USER:PASSWORD",
            ),
            (
                r#"{"credHelpers": {"r.io": "../evil"}}"#,
                "not a helper name",
            ),
            (r#"{"credsStore": 3}"#, "\"credsStore\""),
        ] {
            let Err(e) = parse_docker_config(text) else {
                panic!("{text} parsed");
            };
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[tokio::test]
    async fn auths_entries_repo_user_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1Yi1wYXNz"},
                "reg.example:5000": {"username": "u", "password": "p:with:colons"},
                "id.example": {"identitytoken": "refresh-me"},
                "tok.example": {"registrytoken": "bearer-me"},
                "empty.example": {}
            }}"#,
        )
        .unwrap();
        let creds = Credentials::new(
            Some(("repo-user".into(), "repo-pass".into())),
            Some(dir.path()),
        )
        .unwrap();
        let get = |r: &'static str| {
            let creds = &creds;
            async move { creds.get(r).await.unwrap().map(|c| (c.secret, c.source)) }
        };
        assert_eq!(
            get("docker.io").await,
            Some((basic("hub", "hub-pass"), "docker config auths".into()))
        );
        assert_eq!(
            get("reg.example:5000").await.unwrap().0,
            basic("u", "p:with:colons")
        );
        assert_eq!(
            get("id.example").await.unwrap().0,
            Secret::IdentityToken("refresh-me".into())
        );
        assert_eq!(
            get("tok.example").await.unwrap().0,
            Secret::RegistryToken("bearer-me".into())
        );
        // Nothing in the file: REPO_USER/REPO_PASS, for every registry.
        assert_eq!(
            get("empty.example").await,
            Some((basic("repo-user", "repo-pass"), "REPO_USER".into()))
        );
        assert_eq!(
            get("other.example").await.unwrap().1,
            "REPO_USER".to_owned()
        );
        assert!(
            Credentials::from_repo(None)
                .get("x.io")
                .await
                .unwrap()
                .is_none()
        );
        let shown = format!("{:?} {:?}", creds, creds.get("docker.io").await.unwrap());
        assert!(
            !shown.contains("hub-pass") && !shown.contains("repo-pass"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_rewritten_config_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"auths": {"r.io": {"username": "a", "password": "1"}}}"#,
        )
        .unwrap();
        let creds = Credentials::new(None, Some(&file)).unwrap();
        assert_eq!(
            creds.get("r.io").await.unwrap().unwrap().secret,
            basic("a", "1")
        );
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            &file,
            r#"{"auths": {"r.io": {"username": "b", "password": "2"}}}"#,
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            creds.get("r.io").await.unwrap().unwrap().secret,
            basic("b", "2")
        );
        // Broken now: the last good reading stays.
        std::fs::write(&file, "{").unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            creds.get("r.io").await.unwrap().unwrap().secret,
            basic("b", "2")
        );
        assert!(Credentials::new(None, Some(&dir.path().join("missing.json"))).is_err());
        let empty = tempfile::tempdir().unwrap();
        let none = Credentials::new(None, Some(empty.path())).unwrap();
        assert!(none.get("r.io").await.unwrap().is_none());
    }

    /// Writes `docker-credential-NAME` scripts into a directory put first on `PATH`.
    fn helper_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(format!("docker-credential-{name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // Echoes the server it was asked about, so the test sees the protocol was followed.
        write(
            "echoer",
            r#"[ "$1" = get ] || exit 9
read -r server || true
case "$server" in
  https://index.docker.io/v1/) echo '{"ServerURL":"hub","Username":"<token>","Secret":"hub-refresh"}' ;;
  reg.example) echo "{\"ServerURL\":\"$server\",\"Username\":\"helped\",\"Secret\":\"s3cret\"}" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#,
        );
        write(
            "broken",
            "echo 'error getting credentials - err: exit status 1, out: `dbus unavailable`' >&2; exit 1",
        );
        write("slow", "exec sleep 30");
        dir
    }

    #[tokio::test]
    async fn credential_helpers_follow_the_protocol() {
        let dir = helper_dir();
        let creds_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            creds_dir.path().join("config.json"),
            r#"{"credsStore": "echoer",
                "credHelpers": {"broken.example": "broken", "missing.example": "nonexistent-helper",
                                "slow.example": "slow"},
                "auths": {"fallback.example": {"username": "file", "password": "f"}}}"#,
        )
        .unwrap();
        let mut creds =
            Credentials::new(Some(("repo".into(), "r".into())), Some(creds_dir.path())).unwrap();
        // The helpers are found through PATH, as in production; only this PATH is the test's.
        creds.helper_path = Some(
            format!(
                "{}:{}",
                dir.path().display(),
                std::env::var("PATH").unwrap_or_default()
            )
            .into(),
        );
        let got = creds.get("docker.io").await.unwrap().unwrap();
        assert_eq!(got.secret, Secret::IdentityToken("hub-refresh".into()));
        assert_eq!(got.source, "docker-credential-echoer");
        let got = creds.get("reg.example").await.unwrap().unwrap();
        assert_eq!(got.secret, basic("helped", "s3cret"));
        // The store has nothing: the file's entry, then REPO_USER.
        let got = creds.get("fallback.example").await.unwrap().unwrap();
        assert_eq!(got.secret, basic("file", "f"));
        let got = creds.get("none.example").await.unwrap().unwrap();
        assert_eq!(got.source, "REPO_USER");
        // A failing helper is reported (the error the log shows) and the lookup goes on.
        let e = creds
            .ask_helper("broken", "broken.example")
            .await
            .unwrap_err();
        assert!(
            e.starts_with(
                "docker-credential-broken get broken.example: exit status: 1: error getting credentials"
            ),
            "{e}"
        );
        let e = creds
            .ask_helper("nonexistent-helper", "missing.example")
            .await
            .unwrap_err();
        assert!(
            e.contains("docker-credential-nonexistent-helper get missing.example: cannot run it"),
            "{e}"
        );
        for registry in ["broken.example", "missing.example"] {
            let got = creds.get(registry).await.unwrap().unwrap();
            assert_eq!(got.source, "REPO_USER", "{registry}");
        }
        creds.helper_timeout = Duration::from_millis(300);
        let e = creds.ask_helper("slow", "slow.example").await.unwrap_err();
        assert!(e.ends_with("no answer within 300ms"), "{e}");
        // A failure is kept like an answer: the slow helper is not waited for again.
        assert_eq!(
            creds.get("slow.example").await.unwrap().unwrap().source,
            "REPO_USER"
        );
        let started = std::time::Instant::now();
        assert_eq!(
            creds.get("slow.example").await.unwrap().unwrap().source,
            "REPO_USER"
        );
        assert!(started.elapsed() < Duration::from_millis(250));
        // Answers are reused: a helper removed now is not asked again within the minute.
        std::fs::remove_file(dir.path().join("docker-credential-echoer")).unwrap();
        assert!(creds.get("reg.example").await.unwrap().is_some());
    }
}
