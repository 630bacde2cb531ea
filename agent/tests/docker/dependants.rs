//! Containers that refer to an updated container, one test per kind, on a real engine: after
//! the parent's update, and again after a forced rollback of the parent, each dependant runs
//! (if it ran), refers to the parent's current container, keeps its tag reference and its
//! settings, and holds the new image when its own tag moved. Then the crash matrix with
//! dependants present: a crash after every step, recovery, every container back as it was
//! (or finished), nothing left over.
//!
//! (Over 600 lines: one scenario per kind of dependant and the crash matrix, on one setup.)

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use ouroboros_agent::recreate::executor::{RecreateError, Request};
use ouroboros_agent::recreate::faults::{CrashMode, CrashPoint};
use ouroboros_agent::recreate::journal::Outcome;
use ouroboros_tests::{ImageSpec, TestImage, eventually, publish, require_engine, unique_name};

use crate::recreate::{Setup, request};

/// The namespace `kind` (`net`, `pid`, `ipc`) of a running container, as the host sees it.
fn ns(s: &Setup, container: &str, kind: &str) -> anyhow::Result<std::path::PathBuf> {
    let pid = s.inspect(container, "{{.State.Pid}}")?;
    ensure!(pid != "0", "{container} is not running");
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?)
}

/// No `-ouroboros-old-` container of these names is left.
fn no_leftovers(s: &Setup, names: &[&str]) -> anyhow::Result<()> {
    let left: Vec<String> = s
        .named_like("-ouroboros-old-")?
        .into_iter()
        .filter(|n| names.iter().any(|name| n.starts_with(name)))
        .collect();
    ensure!(left.is_empty(), "left over: {left:?}");
    Ok(())
}

/// A parent (`web`, on the setup's repo) and one dependant on its own repo, with settings of
/// its own to keep.
struct Pair {
    s: Setup,
    web: String,
    dep: String,
    dep_v1: TestImage,
    dep_repo: String,
}

impl Pair {
    /// Runs `web` with `web_args` and the dependant with the arguments `dep_args` makes from
    /// web's name and id.
    async fn start(
        prefix: &str,
        web_args: &[&str],
        dep_args: impl Fn(&str, &str) -> Vec<String>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(engine) = require_engine() else {
            return Ok(None);
        };
        let s = Setup::new(engine).await?;
        let dep_repo = unique_name(&format!("{prefix}-dep"));
        let dep_v1 = publish(&s.cleanup, &s.registry, &dep_repo, "stable", 1)?;
        let web = s
            .cleanup
            .run_container(prefix, web_args, &s.v1.reference, &[])?;
        let web_id = s.inspect(&web, "{{.Id}}")?;
        let mut args = dep_args(&web, &web_id);
        args.extend(
            ["-e", "DEP_SETTING=kept", "--label", "dep.label=kept"]
                .iter()
                .map(|a| (*a).to_owned()),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dep = s
            .cleanup
            .run_container(&format!("{prefix}-d"), &args, &dep_v1.reference, &[])?;
        Ok(Some(Self {
            s,
            web,
            dep,
            dep_v1,
            dep_repo,
        }))
    }

    /// Updates web to a new healthy image: it must be updated.
    async fn update(
        &self,
        op: &str,
        dependant_images: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        self.s.publish_next(ImageSpec::new(2))?;
        let outcome = self
            .s
            .recreator
            .recreate(&Request {
                dependant_images,
                ..request(op, &self.web)
            })
            .await?;
        ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
        Ok(())
    }

    /// Updates web to an image that exits: it must be rolled back.
    async fn forced_rollback(&self, op: &str) -> anyhow::Result<()> {
        self.s.publish_next(ImageSpec::new(3).exiting())?;
        let before = self.s.inspect(&self.web, "{{.Id}}")?;
        let outcome = self.s.recreator.recreate(&request(op, &self.web)).await?;
        ensure!(
            matches!(outcome, Outcome::RolledBack { .. }),
            "not rolled back: {outcome:?}"
        );
        ensure!(self.s.inspect(&self.web, "{{.Id}}")? == before);
        Ok(())
    }

    fn id(&self, name: &str) -> anyhow::Result<String> {
        self.s.inspect(name, "{{.Id}}")
    }

    /// The dependant runs, keeps its tag and settings, and runs `image` (an image id).
    fn dependant_sound(&self, image: &str) -> anyhow::Result<()> {
        let s = &self.s;
        ensure!(
            s.inspect(&self.dep, "{{.State.Running}}")? == "true",
            "{} does not run: {}",
            self.dep,
            s.inspect(&self.dep, "{{.State.Status}} {{.State.ExitCode}}")?
        );
        ensure!(
            s.inspect(&self.dep, "{{.Config.Image}}")? == self.dep_v1.reference,
            "the dependant lost its tag reference"
        );
        ensure!(
            s.inspect(&self.dep, "{{.Image}}")? == image,
            "not on {image}"
        );
        ensure!(s.inspect(&self.web, "{{.State.Running}}")? == "true");
        let env = s.inspect(&self.dep, "{{json .Config.Env}}")?;
        ensure!(env.contains("DEP_SETTING=kept"), "setting lost: {env}");
        let labels = s.inspect(&self.dep, "{{json .Config.Labels}}")?;
        ensure!(
            labels.contains(r#""dep.label":"kept""#),
            "label lost: {labels}"
        );
        no_leftovers(s, &[&self.web, &self.dep])
    }

    fn dep_v1_id(&self) -> anyhow::Result<String> {
        self.s.engine.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &self.dep_v1.pinned(),
        ])
    }
}

/// `--network/--pid/--ipc container:web`: recreated into the new web, and back in the restored
/// one after a rollback.
async fn namespace_case(
    prefix: &str,
    flag: &'static str,
    ns_kind: &str,
    web_args: &[&str],
) -> anyhow::Result<()> {
    let Some(p) = Pair::start(prefix, web_args, |_, web_id| {
        let mut args = vec![format!("--{flag}"), format!("container:{web_id}")];
        if flag != "network" {
            args.extend(["--network".to_owned(), "none".to_owned()]);
        }
        args
    })
    .await?
    else {
        return Ok(());
    };
    let mode = format!(
        "{{{{.HostConfig.{}Mode}}}}",
        match flag {
            "network" => "Network",
            "pid" => "Pid",
            _ => "Ipc",
        }
    );
    let dep_v1 = p.dep_v1_id()?;
    let old_dep = p.id(&p.dep)?;
    p.update("op-ns-up", BTreeMap::new()).await?;
    let web_id = p.id(&p.web)?;
    ensure!(p.id(&p.dep)? != old_dep, "the dependant was not recreated");
    ensure!(p.s.inspect(&p.dep, &mode)? == format!("container:{web_id}"));
    ensure!(
        ns(&p.s, &p.dep, ns_kind)? == ns(&p.s, &p.web, ns_kind)?,
        "not in the new {ns_kind} namespace"
    );
    p.dependant_sound(&dep_v1)?;

    p.forced_rollback("op-ns-rb").await?;
    ensure!(p.s.inspect(&p.dep, &mode)? == format!("container:{web_id}"));
    ensure!(
        ns(&p.s, &p.dep, ns_kind)? == ns(&p.s, &p.web, ns_kind)?,
        "not in the restored {ns_kind} namespace"
    );
    p.dependant_sound(&dep_v1)
}

#[tokio::test]
async fn network_dependant_joins_the_new_container() -> anyhow::Result<()> {
    namespace_case("dp-net", "network", "net", &["--network", "none"]).await
}

#[tokio::test]
async fn pid_dependant_joins_the_new_container() -> anyhow::Result<()> {
    namespace_case("dp-pid", "pid", "pid", &["--network", "none"]).await
}

#[tokio::test]
async fn ipc_dependant_joins_the_new_container() -> anyhow::Result<()> {
    namespace_case(
        "dp-ipc",
        "ipc",
        "ipc",
        &["--network", "none", "--ipc", "shareable"],
    )
    .await
}

#[tokio::test]
async fn network_dependant_whose_tag_moved_moves_in_the_same_operation() -> anyhow::Result<()> {
    let Some(p) = Pair::start("dp-netmv", &["--network", "none"], |_, web_id| {
        vec!["--network".into(), format!("container:{web_id}")]
    })
    .await?
    else {
        return Ok(());
    };
    let dep_v2 = publish(&p.s.cleanup, &p.s.registry, &p.dep_repo, "stable", 2)?;
    let dep_v2_id = {
        p.s.engine.docker(&["pull", &dep_v2.pinned()])?;
        p.s.engine
            .docker(&["image", "inspect", "--format", "{{.Id}}", &dep_v2.pinned()])?
    };
    let images = BTreeMap::from([(
        p.dep.clone(),
        format!("{}@{}", p.dep_v1.reference, dep_v2.digest),
    )]);
    p.update("op-mv-up", images).await?;
    let web_id = p.id(&p.web)?;
    ensure!(p.s.inspect(&p.dep, "{{.HostConfig.NetworkMode}}")? == format!("container:{web_id}"));
    ensure!(ns(&p.s, &p.dep, "net")? == ns(&p.s, &p.web, "net")?);
    ensure!(p.s.engine.docker(&["exec", &p.dep, "cat", "/version"])? == "2");
    p.dependant_sound(&dep_v2_id)?;
    // Asked again for its own update, the dependant is already there: no second recreate.
    let before = p.id(&p.dep)?;
    let again =
        p.s.recreator
            .recreate(&Request {
                image: Some(format!("{}@{}", p.dep_v1.reference, dep_v2.digest)),
                ..request("op-mv-own", &p.dep)
            })
            .await?;
    ensure!(again == Outcome::AlreadyCurrent, "{again:?}");
    ensure!(p.id(&p.dep)? == before);

    p.forced_rollback("op-mv-rb").await?;
    ensure!(ns(&p.s, &p.dep, "net")? == ns(&p.s, &p.web, "net")?);
    p.dependant_sound(&dep_v2_id)
}

#[tokio::test]
async fn a_dependant_whose_new_image_fails_follows_on_its_own_image() -> anyhow::Result<()> {
    let Some(p) = Pair::start("dp-netbad", &["--network", "none"], |_, web_id| {
        vec!["--network".into(), format!("container:{web_id}")]
    })
    .await?
    else {
        return Ok(());
    };
    let bad = publish(
        &p.s.cleanup,
        &p.s.registry,
        &p.dep_repo,
        "stable",
        ImageSpec::new(2).exiting(),
    )?;
    let images = BTreeMap::from([(
        p.dep.clone(),
        format!("{}@{}", p.dep_v1.reference, bad.digest),
    )]);
    p.s.publish_next(ImageSpec::new(2))?;
    let report =
        p.s.recreator
            .run(
                &Request {
                    dependant_images: images,
                    ..request("op-bad-up", &p.web)
                },
                &|_| {},
            )
            .await?;
    ensure!(
        matches!(report.outcome, Outcome::Updated { .. }),
        "{report:?}"
    );
    let d = report
        .dependants
        .iter()
        .find(|d| d.container == p.dep)
        .context("no report")?;
    ensure!(
        d.action == "recreated" && d.reason.contains("new image failed"),
        "{d:?}"
    );
    ensure!(ns(&p.s, &p.dep, "net")? == ns(&p.s, &p.web, "net")?);
    // Its tag names the failed image locally; it still runs its own.
    p.dependant_sound(&p.dep_v1_id()?)
}

#[tokio::test]
async fn a_dependant_on_the_parents_own_tag_keeps_its_image() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let web = s
        .cleanup
        .run_container("dp-same", &["--network", "none"], &s.v1.reference, &[])?;
    let web_id = s.inspect(&web, "{{.Id}}")?;
    let side = s.cleanup.run_container(
        "dp-same-side",
        &["--network", &format!("container:{web_id}")],
        &s.v1.reference,
        &[],
    )?;
    let v1_id = s.inspect(&side, "{{.Image}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let outcome = s.recreator.recreate(&request("op-same", &web)).await?;
    ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    // The parent's pull moved the tag; the sidecar was not asked to move: it follows on its
    // own image and still names its tag (never an image id).
    ensure!(s.inspect(&side, "{{.Config.Image}}")? == s.v1.reference);
    ensure!(s.inspect(&side, "{{.Image}}")? == v1_id);
    ensure!(s.inspect(&side, "{{.State.Running}}")? == "true");
    ensure!(ns(&s, &side, "net")? == ns(&s, &web, "net")?);
    // And the tag still names the new image.
    let tagged = s
        .engine
        .docker(&["image", "inspect", "--format", "{{.Id}}", &s.v1.reference])?;
    ensure!(
        tagged == s.inspect(&web, "{{.Image}}")?,
        "the tag was not given back"
    );
    no_leftovers(&s, &[&web, &side])
}

#[tokio::test]
async fn legacy_link_survives_under_its_alias() -> anyhow::Result<()> {
    let Some(p) = Pair::start("dp-link", &[], |web, _| {
        vec!["--link".into(), format!("{web}:db")]
    })
    .await?
    else {
        return Ok(());
    };
    let linked =
        |p: &Pair| -> anyhow::Result<()> {
            let links = p.s.inspect(&p.dep, "{{json .HostConfig.Links}}")?;
            ensure!(
                links.contains(&format!("/{}:/{}/db", p.web, p.dep)),
                "links: {links}"
            );
            let ip = p.s.inspect(&p.web, "{{.NetworkSettings.IPAddress}}")?;
            let hosts = p.s.engine.docker(&["exec", &p.dep, "cat", "/etc/hosts"])?;
            ensure!(
                hosts.lines().any(|l| l.starts_with(&format!("{ip}\t"))
                    && l.split_whitespace().any(|w| w == "db")),
                "db is not {ip} in /etc/hosts:\n{hosts}"
            );
            Ok(())
        };
    let dep_v1 = p.dep_v1_id()?;
    p.update("op-link-up", BTreeMap::new()).await?;
    linked(&p)?;
    p.dependant_sound(&dep_v1)?;
    p.forced_rollback("op-link-rb").await?;
    linked(&p)?;
    p.dependant_sound(&dep_v1)?;
    // It can be restarted by hand: nothing names a container that is gone.
    p.s.engine.docker(&["restart", "-t", "1", &p.dep])?;
    linked(&p)
}

#[tokio::test]
async fn volumes_from_dependant_is_left_running_on_the_same_volume() -> anyhow::Result<()> {
    let Some(p) = Pair::start(
        "dp-vf",
        &["--network", "none", "-v", "/shared"],
        |web, _| {
            vec![
                "--network".into(),
                "none".into(),
                "--volumes-from".into(),
                web.to_owned(),
            ]
        },
    )
    .await?
    else {
        return Ok(());
    };
    let volume = |c: &str| {
        p.s.inspect(
            c,
            "{{range .Mounts}}{{if eq .Destination \"/shared\"}}{{.Name}}{{end}}{{end}}",
        )
    };
    let shared = volume(&p.web)?;
    let dep_id = p.id(&p.dep)?;
    p.update("op-vf-up", BTreeMap::new()).await?;
    ensure!(
        p.id(&p.dep)? == dep_id,
        "a volumes-from dependant needs nothing"
    );
    ensure!(
        volume(&p.web)? == shared && volume(&p.dep)? == shared,
        "not the same volume"
    );
    p.dependant_sound(&p.dep_v1_id()?)?;
    p.forced_rollback("op-vf-rb").await?;
    ensure!(p.id(&p.dep)? == dep_id);
    p.dependant_sound(&p.dep_v1_id()?)?;
    // Its reference still resolves: it can be recreated on its own.
    let outcome =
        p.s.recreator
            .recreate(&Request {
                image: Some(format!(
                    "{}@{}",
                    p.dep_v1.reference,
                    publish(&p.s.cleanup, &p.s.registry, &p.dep_repo, "stable", 2)?.digest
                )),
                ..request("op-vf-own", &p.dep)
            })
            .await?;
    ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    ensure!(volume(&p.dep)? == shared);
    Ok(())
}

/// A dependant by label (`label=value` naming web): stopped before web's update and started
/// after it (same container), or, with `recreated`, a new container after web's.
async fn label_case(prefix: &str, labels: &[String], recreated: bool) -> anyhow::Result<()> {
    let labels = labels.to_vec();
    let Some(p) = Pair::start(prefix, &["--network", "none"], move |web, _| {
        labels
            .iter()
            .flat_map(|l| ["--label".to_owned(), l.replace("{web}", web)])
            .chain(["--network".to_owned(), "none".to_owned()])
            .collect()
    })
    .await?
    else {
        return Ok(());
    };
    let dep_v1 = p.dep_v1_id()?;
    let dep_id = p.id(&p.dep)?;
    let started = p.s.inspect(&p.dep, "{{.State.StartedAt}}")?;
    p.update(&format!("op-{prefix}-up"), BTreeMap::new())
        .await?;
    if recreated {
        ensure!(
            p.id(&p.dep)? != dep_id,
            "the hard dependant was not recreated"
        );
    } else {
        ensure!(
            p.id(&p.dep)? == dep_id,
            "a soft dependant keeps its container"
        );
        ensure!(
            p.s.inspect(&p.dep, "{{.State.StartedAt}}")? != started,
            "not stopped and started"
        );
    }
    p.dependant_sound(&dep_v1)?;
    let dep_id = p.id(&p.dep)?;
    p.forced_rollback(&format!("op-{prefix}-rb")).await?;
    ensure!(
        p.id(&p.dep)? == dep_id,
        "touched although the parent's update failed early"
    );
    p.dependant_sound(&dep_v1)
}

#[tokio::test]
async fn soft_dependant_is_stopped_and_started_again() -> anyhow::Result<()> {
    label_case("dp-soft", &["com.ouroboros.depends_on={web}".into()], false).await
}

/// Compose's `depends_on` names a service of the same project: web is service `db`, the
/// dependant `app` depends on it.
#[tokio::test]
async fn compose_dependant_is_stopped_and_started_again() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let project = unique_name("proj");
    let s = Setup::new(engine).await?;
    let project_label = format!("com.docker.compose.project={project}");
    let web = s.cleanup.run_container(
        "dp-compose",
        &[
            "--network",
            "none",
            "--label",
            &project_label,
            "--label",
            "com.docker.compose.service=db",
        ],
        &s.v1.reference,
        &[],
    )?;
    let app = s.cleanup.run_container(
        "dp-compose-app",
        &[
            "--network",
            "none",
            "--label",
            &project_label,
            "--label",
            "com.docker.compose.service=app",
            "--label",
            "com.docker.compose.depends_on=db:service_healthy:false",
        ],
        &s.v1.reference,
        &[],
    )?;
    let app_id = s.inspect(&app, "{{.Id}}")?;
    let app_image = s.inspect(&app, "{{.Image}}")?;
    let started = s.inspect(&app, "{{.State.StartedAt}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let report = s
        .recreator
        .run(&request("op-compose", &web), &|_| {})
        .await?;
    ensure!(
        matches!(report.outcome, Outcome::Updated { .. }),
        "{report:?}"
    );
    let d = report
        .dependants
        .iter()
        .find(|d| d.container == app)
        .context("no report")?;
    ensure!(d.kind == "compose" && d.action == "restarted", "{d:?}");
    ensure!(s.inspect(&app, "{{.Id}}")? == app_id);
    ensure!(
        s.inspect(&app, "{{.Image}}")? == app_image,
        "a soft dependant keeps its image"
    );
    ensure!(s.inspect(&app, "{{.State.Running}}")? == "true");
    ensure!(
        s.inspect(&app, "{{.State.StartedAt}}")? != started,
        "not stopped and started"
    );
    s.publish_next(ImageSpec::new(3).exiting())?;
    let outcome = s
        .recreator
        .recreate(&request("op-compose-rb", &web))
        .await?;
    ensure!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    ensure!(s.inspect(&app, "{{.State.Running}}")? == "true");
    no_leftovers(&s, &[&web, &app])
}

#[tokio::test]
async fn hard_dependant_is_recreated_after_its_parent() -> anyhow::Result<()> {
    label_case(
        "dp-hard",
        &["com.ouroboros.hard_depends_on={web}".into()],
        true,
    )
    .await
}

#[tokio::test]
async fn a_failing_hard_dependant_is_rolled_back_alone() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::new(engine).await?;
    let web =
        s.cleanup
            .run_container("dp-hardbad", &["--network", "none"], &s.v1.reference, &[])?;
    // The hard dependant runs only as the container it first ran in (its hostname, the
    // container's short id, is kept in its anonymous volume): its replacement exits at once,
    // its old container starts again fine.
    let dep_repo = unique_name("dp-hardbad-dep");
    let dep_v1 = publish(&s.cleanup, &s.registry, &dep_repo, "stable", 1)?;
    let label = format!("com.ouroboros.hard_depends_on={web}");
    let dep = s.cleanup.run_container(
        "dp-hardbad-d",
        &["--network", "none", "--label", &label, "-v", "/state"],
        &dep_v1.reference,
        &[
            "sh",
            "-c",
            "test -f /state/first || hostname > /state/first; \
             test \"$(cat /state/first)\" = \"$(hostname)\" || exit 3; \
             trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done",
        ],
    )?;
    let dep_id = s.inspect(&dep, "{{.Id}}")?;
    s.publish_next(ImageSpec::new(2))?;
    let report = s
        .recreator
        .run(&request("op-hardbad", &web), &|_| {})
        .await?;
    ensure!(
        matches!(report.outcome, Outcome::Updated { .. }),
        "the parent's update stands: {report:?}"
    );
    let d = report
        .dependants
        .iter()
        .find(|d| d.container == dep)
        .context("no report")?;
    ensure!(d.kind == "hard" && d.action == "restored", "{d:?}");
    ensure!(d.reason.contains("health gate"), "{d:?}");
    ensure!(
        s.inspect(&dep, "{{.Id}}")? == dep_id,
        "not the old dependant"
    );
    ensure!(
        s.inspect(&dep, "{{.State.Running}}")? == "true",
        "the old dependant does not run"
    );
    ensure!(s.inspect(&web, "{{.Image}}")? != s.inspect(&dep, "{{.Image}}")?);
    no_leftovers(&s, &[&web, &dep])
}

/// Web with a soft, a hard and a network dependant; v2 published (`next`). Returns the names.
struct Stack {
    s: Setup,
    web: String,
    soft: String,
    hard: String,
    side: String,
}

impl Stack {
    async fn start(prefix: &str, next: ImageSpec) -> anyhow::Result<Option<Self>> {
        let Some(engine) = require_engine() else {
            return Ok(None);
        };
        let s = Setup::new(engine).await?;
        let web = s
            .cleanup
            .run_container(prefix, &["--network", "none"], &s.v1.reference, &[])?;
        let web_id = s.inspect(&web, "{{.Id}}")?;
        let dep_repo = unique_name(&format!("{prefix}-deps"));
        let dep_v1 = publish(&s.cleanup, &s.registry, &dep_repo, "stable", 1)?;
        let soft_label = format!("com.ouroboros.depends_on={web}");
        let soft = s.cleanup.run_container(
            &format!("{prefix}-s"),
            &["--network", "none", "--label", &soft_label],
            &dep_v1.reference,
            &[],
        )?;
        let hard_label = format!("com.ouroboros.hard_depends_on={web}");
        let hard = s.cleanup.run_container(
            &format!("{prefix}-h"),
            &["--network", "none", "--label", &hard_label],
            &dep_v1.reference,
            &[],
        )?;
        let side = s.cleanup.run_container(
            &format!("{prefix}-n"),
            &["--network", &format!("container:{web_id}")],
            &dep_v1.reference,
            &[],
        )?;
        s.publish_next(next)?;
        Ok(Some(Self {
            s,
            web,
            soft,
            hard,
            side,
        }))
    }

    fn all(&self) -> [&str; 4] {
        [&self.web, &self.soft, &self.hard, &self.side]
    }

    fn ids(&self) -> anyhow::Result<Vec<String>> {
        self.all()
            .iter()
            .map(|n| self.s.inspect(n, "{{.Id}}"))
            .collect()
    }

    /// Each runs, under its name, with no twin; the sidecar in web's namespace.
    fn sound(&self) -> anyhow::Result<()> {
        for name in self.all() {
            ensure!(
                self.s.inspect(name, "{{.State.Running}}")? == "true",
                "{name} does not run: {}",
                self.s
                    .inspect(name, "{{.State.Status}} {{.State.ExitCode}}")?
            );
        }
        let web_id = self.s.inspect(&self.web, "{{.Id}}")?;
        ensure!(
            self.s.inspect(&self.side, "{{.HostConfig.NetworkMode}}")?
                == format!("container:{web_id}")
        );
        ensure!(
            ns(&self.s, &self.side, "net")? == ns(&self.s, &self.web, "net")?,
            "the sidecar is not in web's namespace"
        );
        no_leftovers(&self.s, &self.all())
    }
}

/// A crash right after `point` with dependants present, then a restart: recovery reverts
/// (before the gate) or finishes (after it), and every container runs as it should.
async fn crash_with_dependants(point: CrashPoint, prefix: &str) -> anyhow::Result<()> {
    let failing = point == CrashPoint::BeforeRollback;
    let next = if failing {
        ImageSpec::new(2).exiting()
    } else {
        ImageSpec::new(2)
    };
    let Some(stack) = Stack::start(prefix, next).await? else {
        return Ok(());
    };
    let before = stack.ids()?;
    let op = format!("op-{prefix}");
    let crashing = stack.s.restarted()?.with_crash(point, CrashMode::Return);
    match crashing.recreate(&request(&op, &stack.web)).await {
        Err(RecreateError::Crashed(p)) => ensure!(p == point),
        other => anyhow::bail!("expected the injected crash at {point:?}, got {other:?}"),
    }
    let recovered = stack.s.restarted()?.recover().await?;
    ensure!(recovered.alerts.is_empty(), "{:?}", recovered.alerts);
    let outcome = &recovered.operations.first().context("nothing recovered")?.1;
    let finished = matches!(
        point,
        CrashPoint::AfterHealthGate
            | CrashPoint::AfterDependantRename
            | CrashPoint::AfterDependantCreate
            | CrashPoint::BeforeRemoveOld
    );
    stack.sound()?;
    let after = stack.ids()?;
    if finished {
        ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
        ensure!(after[0] != before[0], "web not updated");
        ensure!(after[1] == before[1], "the soft dependant was replaced");
        ensure!(
            after[2] != before[2] && after[3] != before[3],
            "hard dependants not recreated"
        );
        ensure!(
            stack
                .s
                .engine
                .docker(&["exec", &stack.web, "cat", "/version"])?
                == "2"
        );
    } else {
        ensure!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
        ensure!(after == before, "not every container is the old one again");
    }
    // The operation answers its outcome; a second recovery finds nothing.
    ensure!(
        stack
            .s
            .restarted()?
            .recreate(&request(&op, &stack.web))
            .await?
            == *outcome
    );
    ensure!(stack.s.restarted()?.recover().await?.operations.is_empty());
    Ok(())
}

#[tokio::test]
async fn crash_after_a_dependant_stop_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterDependantStop, "cd-dstop").await
}

#[tokio::test]
async fn crash_after_stop_with_dependants_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterStop, "cd-stop").await
}

#[tokio::test]
async fn crash_after_rename_with_dependants_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterRename, "cd-rename").await
}

#[tokio::test]
async fn crash_after_create_with_dependants_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterCreate, "cd-create").await
}

#[tokio::test]
async fn crash_after_start_with_dependants_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterStart, "cd-start").await
}

#[tokio::test]
async fn crash_in_the_health_gate_with_dependants_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::DuringHealthWait, "cd-health").await
}

#[tokio::test]
async fn crash_after_the_health_gate_is_finished() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterHealthGate, "cd-passed").await
}

#[tokio::test]
async fn crash_after_a_dependant_rename_is_finished() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterDependantRename, "cd-drename").await
}

#[tokio::test]
async fn crash_after_a_dependant_create_is_finished() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::AfterDependantCreate, "cd-dcreate").await
}

#[tokio::test]
async fn crash_before_removing_the_old_containers_is_finished() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::BeforeRemoveOld, "cd-remove").await
}

#[tokio::test]
async fn crash_before_a_rollback_with_dependants_is_recovered() -> anyhow::Result<()> {
    crash_with_dependants(CrashPoint::BeforeRollback, "cd-rollback").await
}

#[tokio::test]
async fn the_soft_stack_updates_without_a_crash() -> anyhow::Result<()> {
    let Some(stack) = Stack::start("cd-plain", ImageSpec::new(2)).await? else {
        return Ok(());
    };
    let report = stack
        .s
        .recreator
        .run(&request("op-cd-plain", &stack.web), &|_| {})
        .await?;
    ensure!(
        matches!(report.outcome, Outcome::Updated { .. }),
        "{report:?}"
    );
    let actions: BTreeMap<&str, &str> = report
        .dependants
        .iter()
        .map(|d| (d.container.as_str(), d.action))
        .collect();
    ensure!(
        actions
            == BTreeMap::from([
                (stack.soft.as_str(), "restarted"),
                (stack.hard.as_str(), "recreated"),
                (stack.side.as_str(), "recreated")
            ]),
        "{actions:?}"
    );
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        stack.sound()
    })
}

#[tokio::test]
async fn when_the_old_container_vanishes_the_new_one_is_kept_and_followed() -> anyhow::Result<()> {
    use std::sync::Arc;
    let Some(stack) = Stack::start("cd-gone", ImageSpec::new(2).unhealthy()).await? else {
        return Ok(());
    };
    let old_web = stack.s.inspect(&stack.web, "{{.Id}}")?;
    let remove_old = {
        let (engine, old) = (stack.s.engine.clone(), old_web.clone());
        Arc::new(move || {
            let _ = engine.docker(&["rm", "-f", &old]);
        })
    };
    let recreator = stack
        .s
        .restarted()?
        .with_hook(CrashPoint::AfterStart, remove_old);
    let outcome = recreator
        .recreate(&request("op-cd-gone", &stack.web))
        .await?;
    match &outcome {
        Outcome::RollbackFailed { reason, .. } => ensure!(reason.contains("kept"), "{reason}"),
        other => anyhow::bail!("expected a failed rollback, got {other:?}"),
    }
    ensure!(stack.s.inspect(&stack.web, "{{.Id}}")? != old_web);
    // Everything runs: the sidecar in the kept container's namespace, the soft one again.
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        stack.sound()
    })
}
