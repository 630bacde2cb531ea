//! Swarm services on a real single-node swarm (an extra engine) with a real registry: a
//! manager reports its services; an update moves a replicated and a global service to the new
//! digest changing nothing else in their specs, with the registry auth it carries; a stale
//! version is retried; refusals change nothing. Failed and cut-short updates are in
//! `swarm_failures`.
//!
//! Swarms share the machine's `docker_gwbridge`: the tests here take turns ([`TURN`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ouroboros_agent::commands::CommandRunner;
use ouroboros_agent::engine::{DockerEndpoint, Engine as AgentEngine};
use ouroboros_agent::recreate::executor::{Deadlines, Recreator};
use ouroboros_agent::recreate::faults::CrashPoint;
use ouroboros_agent::recreate::journal::{Journal, Outcome};
use ouroboros_agent::recreate::pull::{RegistryAuth, registry_auth_header};
use ouroboros_agent::swarm::{self, ServiceUpdate};
use ouroboros_proto::v1 as pb;
use ouroboros_shared::inventory::HostMode;
use ouroboros_tests::{
    Cleanup, Engine, ImageSpec, Registry, SwarmGuard, TestImage, eventually, publish,
    require_engine, unique_name,
};
use pb::agent_message::Kind;
use pb::recreate_result::Status;
use serde_json::Value;

/// One swarm at a time on this machine.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) const CONVERGE: Duration = Duration::from_secs(60);
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// Update and rollback settings that keep each scenario to seconds: all tasks at once, one
/// second of monitoring, a one-second healthcheck that fails after one miss.
const FAST: &[&str] = &[
    "--update-parallelism",
    "0",
    "--update-monitor",
    "1s",
    "--rollback-parallelism",
    "0",
    "--rollback-monitor",
    "1s",
    "--health-interval",
    "1s",
    "--health-timeout",
    "1s",
    "--health-retries",
    "1",
    "--stop-grace-period",
    "2s",
];

/// A swarm on an extra engine, the registry with v1 and v2 of one repository, and a recreator
/// (journal) on that engine.
pub(crate) struct Swarm {
    // Declared before the engine: the swarm is left before the daemon stops.
    _swarm: SwarmGuard,
    pub(crate) engine: Engine,
    // Released last, once this swarm and its engine are gone.
    _turn: tokio::sync::MutexGuard<'static, ()>,
    _cleanup: Cleanup,
    registry: Registry,
    pub(crate) v1: TestImage,
    pub(crate) v2: TestImage,
    pub(crate) agent: AgentEngine,
    pub(crate) recreator: Recreator,
    _journal: tempfile::TempDir,
}

impl Swarm {
    /// `None` without an engine (outside CI). `v2` is built from `v2_spec`.
    pub(crate) async fn start(v2_spec: ImageSpec) -> anyhow::Result<Option<Swarm>> {
        Self::start_with(v2_spec, None).await
    }

    /// Like [`Swarm::start`], with a registry that wants `credentials` (user, password).
    async fn start_with(
        v2_spec: ImageSpec,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<Option<Swarm>> {
        let Some(system) = require_engine() else {
            return Ok(None);
        };
        let turn = TURN.lock().await;
        let registry = match credentials {
            Some((user, password)) => {
                let registry = Registry::start_with_auth(user, password)?;
                // This handle's own CLI config: the login reaches no other test.
                system.login(registry.addr(), user, password)?;
                registry
            }
            None => Registry::start()?,
        };
        let cleanup = Cleanup::new(&system);
        let repo = unique_name("swarm");
        let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
        let v2 = publish(&cleanup, &registry, &repo, "stable", v2_spec)?;
        let engine = Engine::start_extra()?;
        let guard = SwarmGuard::init(&engine)?;
        let (agent, recreator, journal) = agent_on(&engine).await?;
        Ok(Some(Swarm {
            _turn: turn,
            _swarm: guard,
            engine,
            _cleanup: cleanup,
            registry,
            v1,
            v2,
            agent,
            recreator,
            _journal: journal,
        }))
    }

    /// `repo:tag@sha256:…` of `image`, as a service spec holds it.
    pub(crate) fn pinned(image: &TestImage) -> String {
        format!("{}@{}", image.reference, image.digest)
    }

    /// Creates service `name` on v1 (host network: the extra engine's bridge has room for one
    /// container) and waits until its tasks run.
    pub(crate) fn create(&self, name: &str, args: &[&str], running: usize) -> anyhow::Result<()> {
        let v1 = Self::pinned(&self.v1);
        let mut all = vec![
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            name,
            "--network",
            "host",
        ];
        all.extend_from_slice(FAST);
        all.extend_from_slice(args);
        all.push(&v1);
        self.engine.docker(&all)?;
        eventually(CONVERGE, POLL, || {
            let images = self.running_images(name)?;
            ensure!(
                images.len() == running && images.iter().all(|i| *i == v1),
                "{name}: running {images:?}"
            );
            Ok(())
        })
    }

    /// The images of the running task containers of `service`.
    pub(crate) fn running_images(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let ids = self.engine.docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ])?;
        ids.split_whitespace()
            .map(|id| self.engine.inspect(id, "{{.Config.Image}}"))
            .collect()
    }

    /// The service's `Spec` as the engine holds it.
    fn spec(&self, service: &str) -> anyhow::Result<Value> {
        let json =
            self.engine
                .docker(&["service", "inspect", "--format", "{{json .Spec}}", service])?;
        serde_json::from_str(&json).context("parsing a service spec")
    }

    pub(crate) fn spec_image(&self, service: &str) -> anyhow::Result<String> {
        let spec = self.spec(service)?;
        Ok(spec["TaskTemplate"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    fn version(&self, service: &str) -> anyhow::Result<String> {
        self.engine
            .docker(&[
                "service",
                "inspect",
                "--format",
                "{{.Version.Index}}",
                service,
            ])
            .map(|v| v.trim().to_owned())
    }

    pub(crate) fn remove(&self, services: &[&str]) {
        for s in services {
            let _ = self.engine.docker(&["service", "rm", s]);
        }
    }
}

/// The agent's engine, and a recreator with a fresh journal, on `engine`.
pub(crate) async fn agent_on(
    engine: &Engine,
) -> anyhow::Result<(AgentEngine, Recreator, tempfile::TempDir)> {
    let endpoint = DockerEndpoint::new(engine.host(), false, None).map_err(anyhow::Error::msg)?;
    let agent = AgentEngine::connect(&endpoint).await?;
    let journal = tempfile::Builder::new()
        .prefix("ouroboros-test-journal-")
        .tempdir()?;
    let recreator = Recreator::new(
        &agent,
        Journal::open(journal.path())?,
        Deadlines::default(),
        None,
    );
    Ok((agent, recreator, journal))
}

pub(crate) fn request(op_id: &str, service: &str, image: &str) -> ServiceUpdate {
    ServiceUpdate {
        op_id: op_id.to_owned(),
        service: service.to_owned(),
        image: image.to_owned(),
        auth: None,
        deadline: Duration::from_secs(60),
    }
}

/// Everything but the image, of a spec.
fn without_image(mut spec: Value) -> Value {
    spec["TaskTemplate"]["ContainerSpec"]["Image"] = Value::Null;
    spec
}

/// Options that fill the spec fields the fidelity check compares.
const RICH: &[&str] = &[
    "--env",
    "APP_MODE=blue",
    "--label",
    "com.ouroboros.enable=true",
    "--container-label",
    "tier=web",
    "--mount",
    "type=tmpfs,target=/scratch",
    "--mount",
    "type=volume,source=swarm-data,target=/data",
    "--limit-memory",
    "64M",
    "--reserve-cpu",
    "0.01",
    "--update-order",
    "stop-first",
    "--update-delay",
    "100ms",
];

#[tokio::test]
async fn swarm_manager_reports_services_and_updates_them_by_digest() -> anyhow::Result<()> {
    let Some(s) = Swarm::start(ImageSpec::new(2)).await? else {
        return Ok(());
    };
    let web = unique_name("svc-web");
    let agentsvc = unique_name("svc-global");
    let mut replicated = vec!["--replicas", "2"];
    replicated.extend_from_slice(RICH);
    s.create(&web, &replicated, 2)?;
    let mut global = vec!["--mode", "global"];
    global.extend_from_slice(RICH);
    s.create(&agentsvc, &global, 1)?;
    let result = updates(&s, &web, &agentsvc).await;
    s.remove(&[&web, &agentsvc]);
    result
}

async fn updates(s: &Swarm, web: &str, global: &str) -> anyhow::Result<()> {
    // (a) The inventory of a manager.
    let inventory = s
        .agent
        .inventory(|| s.recreator.journal().set_aside())
        .await?;
    assert_eq!(inventory.mode, HostMode::SwarmManager);
    let cluster = s
        .engine
        .docker(&["info", "--format", "{{.Swarm.Cluster.ID}}"])?;
    assert_eq!(inventory.cluster_id, cluster.trim());
    let listed = |name: &str| {
        inventory
            .services
            .iter()
            .find(|svc| svc.name == name)
            .cloned()
            .with_context(|| format!("{name} not in {:?}", inventory.services))
    };
    let v1 = Swarm::pinned(&s.v1);
    let w = listed(web)?;
    assert_eq!(w.image, v1);
    assert_eq!((w.mode.as_str(), w.replicas), ("replicated", 2));
    assert_eq!(w.labels["com.ouroboros.enable"], "true");
    assert_eq!(w.version.to_string(), s.version(web)?);
    assert_eq!(w.failure_action, "pause");
    // The update and rollback settings the service was made with (`FAST`).
    let update = w.update_config.clone().context("no update config")?;
    assert_eq!(
        (update.parallelism, update.monitor_ms),
        (0, 1000),
        "{update:?}"
    );
    assert_eq!(update.failure_action, "pause");
    let rollback = w.rollback_config.clone().context("no rollback config")?;
    assert_eq!(
        (rollback.parallelism, rollback.monitor_ms),
        (0, 1000),
        "{rollback:?}"
    );
    // The services' task containers run here, but are theirs to replace: not reported.
    ensure!(
        !s.running_images(web)?.is_empty(),
        "no task of {web} runs on the manager"
    );
    let tasks: Vec<&str> = inventory
        .containers
        .iter()
        .filter(|c| c.labels.contains_key("com.docker.swarm.task.id"))
        .map(|c| c.name.as_str())
        .collect();
    assert!(tasks.is_empty(), "task containers reported: {tasks:?}");
    let g = listed(global)?;
    assert_eq!(g.image, v1);
    assert_eq!(g.mode, "global");
    assert!(!g.id.is_empty() && g.version > 0, "{g:?}");

    // (b) Both to v2: only the image changes, every task runs v2.
    let v2 = Swarm::pinned(&s.v2);
    for (op, service, tasks) in [("op-web", web, 2), ("op-global", global, 1)] {
        let before = s.spec(service)?;
        let started = Instant::now();
        let outcome = swarm::update(&s.recreator, &request(op, service, &v2), &|_| {}).await?;
        eprintln!("{service}: updated in {:.1?}", started.elapsed());
        let id = s
            .engine
            .docker(&["service", "inspect", "--format", "{{.ID}}", service])?;
        assert_eq!(
            outcome,
            Outcome::Updated {
                new_id: id.trim().to_owned(),
                image_id: s.v2.digest.clone()
            }
        );
        let after = s.spec(service)?;
        assert_eq!(after["TaskTemplate"]["ContainerSpec"]["Image"], v2.as_str());
        assert_eq!(without_image(after), without_image(before));
        let images = s.running_images(service)?;
        assert_eq!(images, vec![v2.clone(); tasks], "{service}");
    }
    // The same target with a new op id: already current; the same op id: from the journal.
    let again = swarm::update(&s.recreator, &request("op-web-2", web, &v2), &|_| {}).await?;
    assert_eq!(again, Outcome::AlreadyCurrent);
    let version = s.version(web)?;
    let repeated = swarm::update(&s.recreator, &request("op-web", web, &v2), &|_| {}).await?;
    assert!(matches!(repeated, Outcome::Updated { .. }), "{repeated:?}");
    assert_eq!(
        s.version(web)?,
        version,
        "a repeated op id changed the service"
    );
    // Back to v1: the service's status still says `completed` (of the update to v2); only
    // a status of this update may end the watch, so the tasks are on v1 when it answers.
    let back = swarm::update(&s.recreator, &request("op-web-back", web, &v1), &|_| {}).await?;
    assert!(matches!(back, Outcome::Updated { .. }), "{back:?}");
    assert_eq!(s.running_images(web)?, vec![v1.clone(); 2]);
    Ok(())
}

#[tokio::test]
async fn swarm_stale_version_is_read_again_and_refusals_change_nothing() -> anyhow::Result<()> {
    let Some(s) = Swarm::start(ImageSpec::new(2)).await? else {
        return Ok(());
    };
    let web = unique_name("svc-stale");
    s.create(&web, &["--replicas", "1"], 1)?;
    let result = stale_and_refusals(&s, &web).await;
    s.remove(&[&web]);
    result
}

async fn stale_and_refusals(s: &Swarm, web: &str) -> anyhow::Result<()> {
    let v2 = Swarm::pinned(&s.v2);
    // (e) Refusals: an unknown service, an image without a digest.
    let before = s.spec(web)?;
    let version = s.version(web)?;
    let unknown = swarm::update(
        &s.recreator,
        &request("op-unknown", "no-such-service", &v2),
        &|_| {},
    )
    .await?;
    assert!(
        matches!(&unknown, Outcome::Refused { reason } if reason.contains("no service")),
        "{unknown:?}"
    );
    let unpinned = swarm::update(
        &s.recreator,
        &request("op-unpinned", web, &s.v2.reference),
        &|_| {},
    )
    .await?;
    assert!(
        matches!(&unpinned, Outcome::Refused { reason } if reason.contains("not pinned")),
        "{unpinned:?}"
    );
    assert_eq!(s.spec(web)?, before);
    assert_eq!(s.version(web)?, version);

    // (d) The service changes between the agent's read and its update: the update is sent
    // again on the new version, and keeps what the other change did.
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    let engine = s.engine.clone();
    let service = web.to_owned();
    let hook = Arc::new(move || {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            engine
                .docker(&[
                    "service",
                    "update",
                    "--detach",
                    "--no-resolve-image",
                    "--label-add",
                    "changed.meanwhile=yes",
                    &service,
                ])
                .expect("changing the service meanwhile");
        }
    });
    let (_, recreator, _journal) = agent_on(&s.engine).await?;
    let recreator = recreator.with_hook(CrashPoint::AfterServiceRead, hook);
    let outcome = swarm::update(&recreator, &request("op-stale", web, &v2), &|_| {}).await?;
    assert!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        2,
        "the update was not read again"
    );
    let spec = s.spec(web)?;
    assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Image"], v2.as_str());
    assert_eq!(spec["Labels"]["changed.meanwhile"], "yes");
    Ok(())
}

#[tokio::test]
async fn swarm_update_carries_the_registry_auth_in_url_safe_base64() -> anyhow::Result<()> {
    // A password whose auth header differs between standard and URL-safe base64.
    let (user, password) = ("swarmci", "s3cr?t>>~~??");
    let Some(s) = Swarm::start_with(ImageSpec::new(2), Some((user, password))).await? else {
        return Ok(());
    };
    let auth = RegistryAuth {
        username: user.to_owned(),
        password: password.to_owned(),
        ..RegistryAuth::default()
    };
    let header = registry_auth_header(&auth, s.registry.addr());
    ensure!(
        header.contains('-') || header.contains('_'),
        "the password does not tell the alphabets apart: {header}"
    );
    // v1 is on the engine already; the service itself has no auth, so only the update's
    // header can let the engine pull v2.
    s.engine.login(s.registry.addr(), user, password)?;
    s.engine.docker(&["pull", &Swarm::pinned(&s.v1)])?;
    s.engine.logout(s.registry.addr())?;
    let web = unique_name("svc-auth");
    s.create(&web, &["--replicas", "1"], 1)?;
    let result = async {
        let v2 = Swarm::pinned(&s.v2);
        let update = ServiceUpdate {
            auth: Some(auth),
            ..request("op-auth", &web, &v2)
        };
        let outcome = swarm::update(&s.recreator, &update, &|_| {}).await?;
        assert!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
        assert_eq!(s.running_images(&web)?, vec![v2]);
        anyhow::Ok(())
    }
    .await;
    s.remove(&[&web]);
    result
}

#[tokio::test]
async fn swarm_update_is_refused_on_a_standalone_engine() -> anyhow::Result<()> {
    let Some(system) = require_engine() else {
        return Ok(());
    };
    let mode = system.docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    if mode.trim() != "inactive" {
        eprintln!("The system engine is a Swarm node; nothing to check here.");
        return Ok(());
    }
    let (agent, recreator, _journal) = agent_on(&system).await?;
    let image = format!("127.0.0.1:5000/app:1@sha256:{}", "a".repeat(64));
    let outcome = swarm::update(
        &recreator,
        &request("op-standalone", "web", &image),
        &|_| {},
    )
    .await?;
    assert!(
        matches!(&outcome, Outcome::Refused { reason } if reason.contains("not a Swarm manager")),
        "{outcome:?}"
    );
    let inventory = agent.inventory(|| recreator.journal().set_aside()).await?;
    assert!(inventory.cluster_id.is_empty() && inventory.services.is_empty());

    // Through the command runner, as the link hands the command over: progress, the host's
    // inventory, then the answer REFUSED with its one-line reason.
    let commands = CommandRunner::new(recreator, agent, None, None);
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let command = pb::UpdateService {
        op_id: "op-standalone-cmd".into(),
        service: "web".into(),
        image,
        auth: None,
        deadline_ms: 0,
    };
    commands.update_service(command, tx).await;
    let mut kinds = Vec::new();
    while let Ok(message) = rx.try_recv() {
        kinds.push(message.kind.context("a message without kind")?);
    }
    assert!(
        matches!(kinds.first(), Some(Kind::Progress(p)) if p.step == "update"),
        "{kinds:?}"
    );
    assert!(
        matches!(kinds.get(1), Some(Kind::Inventory(_))),
        "{kinds:?}"
    );
    let Some(Kind::Result(result)) = kinds.get(2) else {
        panic!("no result: {kinds:?}");
    };
    let answer = result.recreate.clone().context("no recreate result")?;
    assert_eq!(answer.status(), Status::Refused);
    assert!(
        answer.reason.contains("not a Swarm manager") && !answer.reason.contains('\n'),
        "{}",
        answer.reason
    );
    Ok(())
}
