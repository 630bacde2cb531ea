//! `ouroboros-coordinator up --run-once`: the all-in-one mode creates its PKI, runs one full
//! cycle with its embedded agent on the local engine, updates a container and exits 0.

use ouroboros_tests::{Binaries, Cleanup, Registry, publish, require_engine, unique_name};

#[test]
fn up_run_once_updates_a_container_on_the_local_engine_and_exits_0() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("up");
    let v1 = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let name = cleanup.run_container("up", &["--network", "none"], &v1.reference, &[])?;
    let v2 = publish(&cleanup, &registry, &repo, "stable", 2)?;
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-up-")
        .tempdir()?;
    let data = dir.path().join("data");

    let run_once = || {
        std::process::Command::new(&bins.coordinator)
            .args([
                "up",
                "--run-once",
                "--listen",
                "127.0.0.1:0",
                "--monitor",
                &name,
            ])
            .args(["--docker-host", engine.host(), "--data-dir"])
            .arg(&data)
            .output()
    };
    let out = run_once()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("updated"), "{stdout}");
    assert!(
        data.join("pki/ca.pem").exists(),
        "no PKI under the data dir"
    );
    let v2_id = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &v2.pinned()])?;
    assert_eq!(engine.inspect(&name, "{{.Image}}")?, v2_id);

    // A second run finds nothing to do, with the same PKI and store.
    let out = run_once()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("current"), "{stdout}");
    Ok(())
}
