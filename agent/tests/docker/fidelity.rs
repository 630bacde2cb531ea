//! Fidelity: `docker inspect` before and after an update to a new version of the same tag.
//! What came from the old image follows the new image; everything the user set stays.

use std::collections::BTreeSet;

use anyhow::ensure;
use ouroboros_agent::recreate::journal::Outcome;
use ouroboros_tests::{ImageSpec, require_engine, unique_name};
use serde_json::Value;

use crate::recreate::{Setup, request};

const V1: &[&str] = &[
    r#"ENTRYPOINT ["/bin/sh","-c"]"#,
    r#"CMD ["trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done # v1"]"#,
    "WORKDIR /srv/v1",
    "USER 1000:1000",
    "ENV SHARED=v1",
    "EXPOSE 7001",
    "VOLUME /imgvol",
];
const V2: &[&str] = &[
    "WORKDIR /srv/v2",
    "USER 1001:1001",
    "EXPOSE 7002",
    "HEALTHCHECK --interval=2s --timeout=3s --retries=2 CMD test -f /version",
    r#"ENTRYPOINT ["sh","-c"]"#,
    r#"CMD ["trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done # v2"]"#,
];

fn inspect_json(s: &Setup, container: &str) -> anyhow::Result<Value> {
    let out = s.engine.docker(&["inspect", container])?;
    let mut v: Value = serde_json::from_str(&out)?;
    Ok(v[0].take())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

/// Removes what the test made besides containers (networks, volumes, the bind dir).
struct Extras<'a> {
    s: &'a Setup,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Extras<'_> {
    fn drop(&mut self) {
        // Containers first: networks and volumes in use cannot be removed.
        let _ = self.s.cleanup.remove_all();
        for n in &self.networks {
            let _ = self.s.engine.docker(&["network", "rm", n]);
        }
        for v in &self.volumes {
            let _ = self.s.engine.docker(&["volume", "rm", v]);
        }
    }
}

#[tokio::test]
async fn image_settings_follow_the_new_image_and_user_settings_stay() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let s = Setup::with_v1(engine, ImageSpec::new(1).with_config(V1)).await?;
    let mut extras = Extras {
        s: &s,
        networks: Vec::new(),
        volumes: Vec::new(),
    };

    // A: every image setting left to the image.
    let a = s
        .cleanup
        .run_container("fid-a", &["--network", "none"], &s.v1.reference, &[])?;

    // B: every setting the user can make.
    let net1 = unique_name("fid-net1");
    let net2 = unique_name("fid-net2");
    let octet = 100 + fastrand_octet();
    let subnet = format!("172.29.{octet}.0/24");
    let ip = format!("172.29.{octet}.10");
    s.engine.docker(&[
        "network",
        "create",
        "--subnet",
        &subnet,
        "--label",
        "com.ouroboros.test=1",
        &net1,
    ])?;
    extras.networks.push(net1.clone());
    s.engine.docker(&[
        "network",
        "create",
        "--label",
        "com.ouroboros.test=1",
        &net2,
    ])?;
    extras.networks.push(net2.clone());
    let named = unique_name("fid-vol");
    s.engine.docker(&[
        "volume",
        "create",
        "--label",
        "com.ouroboros.test=1",
        &named,
    ])?;
    extras.volumes.push(named.clone());
    let bind_dir = tempfile::Builder::new()
        .prefix("ouroboros-test-bind-")
        .tempdir()?;
    let bind = format!("{}:/mnt/bind", bind_dir.path().display());
    let (p1, p2) = (free_port()?, free_port()?);
    let udp = format!("127.0.0.1:{p1}:8080/udp");
    let tcp = format!("127.0.0.1:{p2}:8081");
    let named_mount = format!("{named}:/named");
    let b = s.cleanup.run_container(
        "fid-b",
        &[
            "--network",
            &net1,
            "--ip",
            &ip,
            "--network-alias",
            "b-alias",
            "--hostname",
            "fid-host",
            "--domainname",
            "example.org",
            "-t",
            "-i",
            "--restart",
            "on-failure:3",
            "-p",
            &udp,
            "-p",
            &tcp,
            "-v",
            &bind,
            "-v",
            &named_mount,
            "-v",
            "/anon",
            "--tmpfs",
            "/run/t:size=1m",
            "--memory",
            "64m",
            "--pids-limit",
            "100",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "MKNOD",
            "--security-opt",
            "no-new-privileges",
            "--log-opt",
            "max-size=1m",
            "--add-host",
            "foo.internal:10.1.2.3",
            "--dns",
            "10.0.0.53",
            "--ulimit",
            "nofile=1024:2048",
            "--init",
            "--read-only",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--shm-size",
            "32m",
            "--group-add",
            "1234",
            "-e",
            "OUROBOROS_TEST_VERSION=user",
            "-e",
            "USER_VAR=1",
            "--label",
            "org.ouroboros.test.version=user",
            "--label",
            "com.docker.compose.project=fid",
            "--label",
            "com.docker.compose.service=b",
            "-w",
            "/",
            "--user",
            "0:0",
            "--health-cmd",
            "test -f /version",
            "--health-interval",
            "3s",
            "--entrypoint",
            "sh",
        ],
        &s.v1.reference,
        &[
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done # user",
        ],
    )?;
    s.engine
        .docker(&["network", "connect", "--alias", "b-second", &net2, &b])?;
    s.engine.docker(&[
        "exec",
        &b,
        "sh",
        "-c",
        "echo n > /named/f && echo a > /anon/f && echo b > /mnt/bind/f",
    ])?;

    // C: a legacy link on the default bridge.
    let target = s
        .cleanup
        .run_container("fid-target", &[], &s.v1.reference, &[])?;
    let link = format!("{target}:db");
    let c = s
        .cleanup
        .run_container("fid-c", &["--link", &link], &s.v1.reference, &[])?;

    let before_a = inspect_json(&s, &a)?;
    let before_b = inspect_json(&s, &b)?;
    let before_c = inspect_json(&s, &c)?;
    // Anonymous volumes carried into a replacement are mounted by name there, so removing
    // the container does not remove them: the test does.
    for v in s
        .volumes_of(&b)?
        .into_iter()
        .chain(s.volumes_of(&a)?)
        .chain(s.volumes_of(&c)?)
    {
        if v != named {
            extras.volumes.push(v);
        }
    }
    s.publish_next(ImageSpec::new(2).with_config(V2))?;
    for (op, name) in [("fid-a", &a), ("fid-b", &b), ("fid-c", &c)] {
        let outcome = s.recreator.recreate(&request(op, name)).await?;
        ensure!(
            matches!(outcome, Outcome::Updated { .. }),
            "{name}: {outcome:?}"
        );
    }
    let after_a = inspect_json(&s, &a)?;
    let after_b = inspect_json(&s, &b)?;
    let after_c = inspect_json(&s, &c)?;

    // A follows the new image in everything.
    let ca = &after_a["Config"];
    assert_eq!(ca["WorkingDir"], "/srv/v2");
    assert_eq!(ca["User"], "1001:1001");
    assert_eq!(ca["Healthcheck"]["Interval"], 2_000_000_000u64);
    assert!(ca["Cmd"].to_string().contains("# v2"), "{}", ca["Cmd"]);
    assert_eq!(ca["Entrypoint"], serde_json::json!(["sh", "-c"]));
    let env_a = strings(&ca["Env"]);
    assert!(env_a.contains("OUROBOROS_TEST_VERSION=2"), "{env_a:?}");
    assert!(
        !env_a.contains("SHARED=v1"),
        "old image ENV frozen in: {env_a:?}"
    );
    assert_eq!(ca["Labels"]["org.ouroboros.test.version"], "2");
    let exposed: Vec<&String> = ca["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert!(exposed.iter().any(|p| p.starts_with("7002")), "{exposed:?}");
    assert!(
        !exposed.iter().any(|p| p.starts_with("7001")),
        "{exposed:?}"
    );
    assert_ne!(
        ca["Hostname"], before_a["Config"]["Hostname"],
        "old short-id hostname copied"
    );

    // B keeps everything the user set.
    let (cb0, cb1) = (&before_b["Config"], &after_b["Config"]);
    for key in [
        "Hostname",
        "Domainname",
        "Tty",
        "OpenStdin",
        "WorkingDir",
        "User",
        "Entrypoint",
        "Cmd",
    ] {
        assert_eq!(cb1[key], cb0[key], "Config.{key}");
    }
    assert_eq!(cb1["Healthcheck"]["Test"], cb0["Healthcheck"]["Test"]);
    assert_eq!(
        cb1["Healthcheck"]["Interval"],
        cb0["Healthcheck"]["Interval"]
    );
    let env_b = strings(&cb1["Env"]);
    for e in ["OUROBOROS_TEST_VERSION=user", "USER_VAR=1"] {
        assert!(env_b.contains(e), "{e} lost: {env_b:?}");
    }
    assert!(!env_b.contains("SHARED=v1"), "{env_b:?}");
    for (k, v) in [
        ("org.ouroboros.test.version", "user"),
        ("com.docker.compose.project", "fid"),
        ("com.docker.compose.service", "b"),
    ] {
        assert_eq!(cb1["Labels"][k], v, "label {k}");
    }
    // HostConfig is carried over whole; Binds gain the anonymous volumes by name.
    let mut hc0 = before_b["HostConfig"].clone();
    let mut hc1 = after_b["HostConfig"].clone();
    let binds0 = strings(&hc0["Binds"]);
    let binds1 = strings(&hc1["Binds"]);
    assert!(
        binds0.is_subset(&binds1),
        "{binds0:?} not kept in {binds1:?}"
    );
    for extra in binds1.difference(&binds0) {
        assert!(
            extra.ends_with(":/anon") || extra.ends_with(":/imgvol"),
            "unexpected bind {extra}"
        );
    }
    hc0["Binds"] = Value::Null;
    hc1["Binds"] = Value::Null;
    assert_eq!(hc1, hc0, "HostConfig changed");
    // Data in the named and the anonymous volume and the bind survived.
    for (path, want) in [("/named/f", "n"), ("/anon/f", "a"), ("/mnt/bind/f", "b")] {
        assert_eq!(s.engine.docker(&["exec", &b, "cat", path])?, want, "{path}");
    }
    // Networks: static address and aliases on the first, its own alias on the second.
    let nets = &after_b["NetworkSettings"]["Networks"];
    assert_eq!(nets[&net1]["IPAMConfig"]["IPv4Address"], ip.as_str());
    assert_eq!(nets[&net1]["IPAddress"], ip.as_str());
    assert!(strings(&nets[&net1]["Aliases"]).contains("b-alias"));
    assert!(strings(&nets[&net2]["Aliases"]).contains("b-second"));
    let short = after_b["Id"].as_str().unwrap_or_default()[..12].to_owned();
    let old_short = before_b["Id"].as_str().unwrap_or_default()[..12].to_owned();
    assert!(
        !strings(&nets[&net1]["Aliases"]).contains(&old_short),
        "old short-id alias kept"
    );
    let _ = short;
    assert_eq!(after_b["State"]["Status"], "running");

    // C keeps its legacy link.
    assert_eq!(
        after_c["HostConfig"]["Links"],
        before_c["HostConfig"]["Links"]
    );
    assert_eq!(after_c["State"]["Status"], "running");
    Ok(())
}

fn fastrand_octet() -> u8 {
    // Distinct per process and run, without another dependency.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u8::try_from((nanos ^ std::process::id()) % 150).unwrap_or(0)
}
