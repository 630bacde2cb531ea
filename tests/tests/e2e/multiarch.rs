//! Multi-arch tags end to end: a manifest list (`docker manifest create/push`) of an amd64 and
//! an arm64 image in the real registry, pulled by the engine, which records the list digest in
//! RepoDigests. The coordinator must compare that list digest with the tag's: no false update
//! while the list stays, an update to the new list when it moves, and no false update for an
//! image that also carries its platform manifest's digest.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use ouroboros_tests::registry::MANIFEST_ACCEPT;
use ouroboros_tests::{
    Binaries, Cleanup, Engine, Registry, TestImage, eventually, publish, push_image,
    push_manifest_list, require_engine, set_architecture, unique_name,
};
use serde_json::Value;

use crate::fleet::Coordinator;

const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

const LIST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The decision for `container` on host-a in a `check`/`updates` answer.
fn decision<'a>(checked: &'a Value, container: &str) -> &'a Value {
    checked
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["host"] == "host-a" && c["container"] == container)
        .unwrap_or(&Value::Null)
}

/// Runs an admin command with `--output json`; it must exit 0 and print JSON.
fn admin(coordinator: &Coordinator, args: &[&str]) -> anyhow::Result<Value> {
    let (code, json) = coordinator.admin(args)?;
    ensure!(
        code == 0 && !json.is_null(),
        "{args:?} exited {code}: {json}"
    );
    Ok(json)
}

/// Builds an image of `version`, marks it arm64, pushes it as `<repo>:arm64-v<version>` and
/// removes the local tag again; returns the pushed reference.
fn publish_arm64(
    cleanup: &Cleanup,
    registry: &Registry,
    repo: &str,
    version: u32,
) -> anyhow::Result<String> {
    let engine = cleanup.engine();
    let reference = registry.reference(repo, &format!("arm64-v{version}"));
    cleanup.build_image(&reference, version)?;
    let id = set_architecture(engine, &reference, "arm64")?;
    cleanup.track_image_id(&id)?;
    let digest = push_image(engine, &reference)?;
    cleanup.track_image(&format!("{}/{repo}@{digest}", registry.addr()))?;
    engine.docker(&["rmi", &reference])?;
    Ok(reference)
}

/// The list under `repo:tag` as the registry serves it: a Docker manifest list whose entries
/// are `expected` (platform digest, architecture), in order.
fn assert_list(
    registry: &Registry,
    repo: &str,
    tag: &str,
    expected: &[(&str, &str)],
) -> anyhow::Result<()> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let response = registry.request("GET", &path, &[("Accept", MANIFEST_ACCEPT)])?;
    ensure!(response.status == 200, "GET {path}: {}", response.status);
    let list: Value = serde_json::from_slice(&response.body).context("list is not JSON")?;
    assert_eq!(list["mediaType"], LIST_MEDIA_TYPE, "{list}");
    let entries: Vec<(&str, &str)> = list["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["digest"].as_str().unwrap_or_default(),
                m["platform"]["architecture"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(entries, expected, "{list}");
    Ok(())
}

/// The image's RepoDigests, as the engine lists them.
fn repo_digests(engine: &Engine, image: &str) -> anyhow::Result<Vec<String>> {
    let json = engine.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        image,
    ])?;
    serde_json::from_str(&json).with_context(|| format!("RepoDigests of {image}: {json}"))
}

/// Waits until the coordinator's view of `name` shows exactly `expected` as RepoDigests.
fn wait_for_view(coordinator: &Coordinator, name: &str, expected: &[String]) -> anyhow::Result<()> {
    eventually(CONVERGE, POLL, || {
        let info = coordinator.container("host-a", name)?;
        let seen: Vec<&str> = info["repo_digests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(seen == expected, "view has RepoDigests {seen:?}");
        Ok(())
    })
}

/// Publishes `<repo>:amd64` (version `version`) and the list `<repo>:multi` of it and `arm64`.
fn publish_list(
    cleanup: &Cleanup,
    registry: &Registry,
    repo: &str,
    version: u32,
    arm64: &str,
) -> anyhow::Result<(TestImage, String)> {
    let amd64 = publish(cleanup, registry, repo, "amd64", version)?;
    let list = push_manifest_list(
        cleanup.engine(),
        &registry.reference(repo, "multi"),
        &[&amd64.reference, arm64],
    )?;
    // A later pull of the list pins it: tracked so the cleanup removes the reference.
    cleanup.track_image(&format!("{}@{list}", amd64.repository))?;
    Ok((amd64, list))
}

#[test]
fn a_multi_arch_tag_is_compared_by_its_list_digest() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("multi");
    let tag = registry.reference(&repo, "multi");
    cleanup.track_image(&tag)?;
    let arm64 = publish_arm64(&cleanup, &registry, &repo, 1)?;
    let arm64_digest = registry
        .manifest_digest(&repo, "arm64-v1")?
        .context("arm64 image not in the registry")?;
    let (amd64, list_v1) = publish_list(&cleanup, &registry, &repo, 1, &arm64)?;
    let repository = amd64.repository.clone();
    assert_list(
        &registry,
        &repo,
        "multi",
        &[(&amd64.digest, "amd64"), (&arm64_digest, "arm64")],
    )?;
    assert_eq!(
        registry.manifest_digest(&repo, "multi")?,
        Some(list_v1.clone())
    );
    assert_ne!(list_v1, amd64.digest);

    // The engine pulls the amd64 entry and records the list digest, and only that.
    engine.docker(&["pull", &tag])?;
    assert_eq!(engine.inspect(&tag, "{{.Architecture}}")?, "amd64");
    let pulled = [format!("{repository}@{list_v1}")];
    assert_eq!(repo_digests(&engine, &tag)?, pulled);
    let name = cleanup.run_container("multi", &["--network", "none"], &tag, &[])?;
    let id = engine.inspect(&name, "{{.Id}}")?;
    assert_eq!(engine.docker(&["exec", &name, "cat", "/version"])?, "1");

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-multi-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let _server = coordinator.serve_with_env("127.0.0.1:0", &[("MONITOR", &name)])?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    wait_for_view(&coordinator, &name, &pulled)?;

    // The list has not moved: current, in `updates` and in `check`, and nothing recreated.
    let manifest_path = format!("/v2/{repo}/manifests/multi");
    let heads = registry.count("HEAD", &manifest_path);
    let planned = admin(&coordinator, &["updates"])?;
    assert_eq!(
        decision(&planned, &name)["decision"],
        "current",
        "{planned}"
    );
    let checked = admin(&coordinator, &["check"])?;
    assert_eq!(
        decision(&checked, &name)["decision"],
        "current",
        "{checked}"
    );
    assert!(decision(&checked, &name)["status"].is_null(), "{checked}");
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, id, "recreated");
    // Both came from the registry's answer for the tag.
    eventually(CONVERGE, POLL, || {
        let probed = registry.count("HEAD", &manifest_path) - heads;
        ensure!(probed >= 2, "{probed} HEADs of {manifest_path}");
        Ok(())
    })?;

    // A new amd64 image in a new list under the same tag: an update to the new list.
    let (amd64_v2, list_v2) = publish_list(&cleanup, &registry, &repo, 2, &arm64)?;
    assert_list(
        &registry,
        &repo,
        "multi",
        &[(&amd64_v2.digest, "amd64"), (&arm64_digest, "arm64")],
    )?;
    assert_ne!(list_v2, list_v1);
    let planned = admin(&coordinator, &["updates"])?;
    let planned_one = decision(&planned, &name);
    assert_eq!(planned_one["decision"], "update", "{planned}");
    assert_eq!(
        planned_one["target"],
        format!("{tag}@{list_v2}"),
        "{planned}"
    );
    assert_eq!(
        engine.inspect(&name, "{{.Id}}")?,
        id,
        "`updates` changed it"
    );

    let checked = admin(&coordinator, &["check"])?;
    assert_eq!(decision(&checked, &name)["status"], "updated", "{checked}");
    assert_ne!(engine.inspect(&name, "{{.Id}}")?, id, "not recreated");
    let image = engine.inspect(&name, "{{.Image}}")?;
    let updated = [format!("{repository}@{list_v2}")];
    assert_eq!(repo_digests(&engine, &image)?, updated);
    assert_eq!(
        engine.inspect(&name, "{{.Config.Image}}")?,
        tag,
        "tag not kept"
    );
    assert_eq!(engine.docker(&["exec", &name, "cat", "/version"])?, "2");

    // And on the new list it is current again.
    wait_for_view(&coordinator, &name, &updated)?;
    let new_id = engine.inspect(&name, "{{.Id}}")?;
    let checked = admin(&coordinator, &["check"])?;
    assert_eq!(
        decision(&checked, &name)["decision"],
        "current",
        "{checked}"
    );
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, new_id);
    Ok(())
}

/// Attempts at an amd64 digest that sorts before its list's digest (each succeeds with
/// probability 1/2).
const ORDER_ATTEMPTS: usize = 16;

#[test]
fn an_image_holding_its_platform_and_its_list_digest_is_current() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("multi2");
    let tag = registry.reference(&repo, "multi");
    cleanup.track_image(&tag)?;
    let arm64 = publish_arm64(&cleanup, &registry, &repo, 1)?;

    // The engine lists RepoDigests sorted. Make the platform digest sort first, so a
    // comparison with only the first RepoDigest of the repository gives a false update.
    let mut attempt = 0;
    let (amd64, list_v1) = loop {
        attempt += 1;
        let (amd64, list) = publish_list(&cleanup, &registry, &repo, 1, &arm64)?;
        if amd64.digest < list || attempt == ORDER_ATTEMPTS {
            break (amd64, list);
        }
    };
    ensure!(amd64.digest < list_v1, "no amd64 digest sorted first");
    let repository = amd64.repository.clone();

    // What a host that pushed the platform image and pulled the list has (e.g. a build host):
    // one image with both digests.
    engine.docker(&["pull", &tag])?;
    engine.docker(&["pull", &amd64.pinned()])?;
    let both = [amd64.pinned(), format!("{repository}@{list_v1}")];
    assert_eq!(repo_digests(&engine, &tag)?, both);
    assert_eq!(
        engine.inspect(&tag, "{{.Id}}")?,
        engine.inspect(&amd64.pinned(), "{{.Id}}")?
    );
    let name = cleanup.run_container("multi2", &["--network", "none"], &tag, &[])?;
    let id = engine.inspect(&name, "{{.Id}}")?;

    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-multi2-")
        .tempdir()?;
    let mut coordinator = Coordinator::init(&bins.coordinator, dir.path(), &["host-a"])?;
    let _server = coordinator.serve_with_env("127.0.0.1:0", &[("MONITOR", &name)])?;
    let _agent = coordinator.agent(&bins.agent, "host-a", &engine)?;
    wait_for_view(&coordinator, &name, &both)?;

    let planned = admin(&coordinator, &["updates"])?;
    assert_eq!(
        decision(&planned, &name)["decision"],
        "current",
        "the list digest is among the image's RepoDigests (after the platform digest): {planned}"
    );
    let checked = admin(&coordinator, &["check"])?;
    assert_eq!(
        decision(&checked, &name)["decision"],
        "current",
        "{checked}"
    );
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, id, "recreated");

    // Only the arm64 entry changes: the list digest moves, so the coordinator asks, and the
    // agent finds the amd64 image unchanged and recreates nothing.
    let arm64_v2 = publish_arm64(&cleanup, &registry, &repo, 2)?;
    let list_v2 = push_manifest_list(&engine, &tag, &[&amd64.reference, &arm64_v2])?;
    cleanup.track_image(&format!("{repository}@{list_v2}"))?;
    let checked = admin(&coordinator, &["check"])?;
    let one = decision(&checked, &name);
    assert_eq!(one["decision"], "update", "{checked}");
    assert_eq!(one["status"], "already-current", "{checked}");
    assert_eq!(engine.inspect(&name, "{{.Id}}")?, id, "recreated");
    let mut all = vec![
        amd64.pinned(),
        format!("{repository}@{list_v1}"),
        format!("{repository}@{list_v2}"),
    ];
    all.sort();
    assert_eq!(repo_digests(&engine, &tag)?, all);
    wait_for_view(&coordinator, &name, &all)?;
    let checked = admin(&coordinator, &["check"])?;
    assert_eq!(
        decision(&checked, &name)["decision"],
        "current",
        "still an update after the agent pulled the new list: {checked}"
    );
    Ok(())
}
