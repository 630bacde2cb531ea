//! Bad configuration fails closed: exit code 64, one line naming the option, nothing changed.
//! Flag beats environment beats default.

use std::path::Path;
use std::process::{Command, Output};

use ouroboros_tests::Binaries;

const EXIT_USAGE: i32 = 64;

fn output(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin)
        .args(args)
        // Only what the test sets, not the caller's environment.
        .env_remove("OUROBOROS_LISTEN")
        .env_remove("OUROBOROS_PKI_DIR")
        .env_remove("LOG_LEVEL")
        .env_remove("CRON")
        .env_remove("INTERVAL")
        .env_remove("DRY_RUN")
        .env_remove("DOCKER_CONFIG")
        .env_remove("RUN_ONCE")
        .env_remove("NOTIFIERS")
        .env_remove("MONITOR")
        .env_remove("IGNORE")
        .env_remove("OUROBOROS_SERVER")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Asserts exit 64 and exactly one stderr line that contains `needle`.
fn assert_usage_error(out: &Output, needle: &str) {
    assert_exit_one_line(out, EXIT_USAGE, needle);
}

/// Admin commands: a usage error exits 2.
fn assert_admin_usage_error(out: &Output, needle: &str) {
    assert_exit_one_line(out, 2, needle);
}

/// Asserts exit `code` and exactly one stderr line that contains `needle`.
fn assert_exit_one_line(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{:?} does not name {needle}",
        lines[0]
    );
}

#[test]
fn invalid_values_exit_64_with_one_line_naming_the_option() {
    let bins = Binaries::get().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-config-")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap();
    let c = &bins.coordinator;

    assert_usage_error(
        &output(c, &["serve", "--listen", "nowhere"], &[]),
        "--listen",
    );
    // The environment fallback is validated the same way.
    assert_usage_error(
        &output(c, &["serve"], &[("OUROBOROS_LISTEN", "1.2.3.4")]),
        "--listen",
    );
    assert_admin_usage_error(
        &output(c, &["hosts"], &[("LOG_LEVEL", "verbose")]),
        "--log-level",
    );
    assert_usage_error(
        &output(c, &["serve", "--cron", "61 * * * *"], &[]),
        "--cron",
    );
    assert_usage_error(&output(c, &["serve"], &[("CRON", "* * *")]), "--cron");
    assert_usage_error(&output(c, &["serve"], &[("INTERVAL", "0")]), "--interval");
    // Past the 30-day maximum: refused, no longer quietly the 5-minute default.
    assert_usage_error(
        &output(c, &["serve", "--interval", "99999999999999999"], &[]),
        "'99999999999999999' for '--interval",
    );
    assert_usage_error(
        &output(c, &["serve"], &[("INTERVAL", "18446744073709551615")]),
        "'18446744073709551615' for '--interval",
    );
    assert_usage_error(
        &output(c, &["serve", "--canary-wait", "99999999999999999"], &[]),
        "--canary-wait",
    );
    // A schedule that never fires.
    assert_usage_error(
        &output(c, &["serve", "--cron", "0 0 31 2 *"], &[]),
        "--cron: \"0 0 31 2 *\" never fires",
    );
    // Empty list items: `,,,` is not an empty MONITOR (every container).
    assert_usage_error(
        &output(c, &["serve"], &[("MONITOR", ",,,")]),
        "',,,' for '--monitor",
    );
    assert_usage_error(
        &output(c, &["serve"], &[("IGNORE", ",")]),
        "',' for '--ignore",
    );
    assert_usage_error(
        &output(c, &["serve", "--canary-hosts", ",,"], &[]),
        "',,' for '--canary-hosts",
    );
    assert_usage_error(
        &output(c, &["serve", "--maintenance-windows", ";;"], &[]),
        "';;' for '--maintenance-windows",
    );
    assert_usage_error(
        &output(
            c,
            &["serve", "--maintenance-windows", "Sat 02:00-02:00"],
            &[],
        ),
        "'Sat 02:00-02:00' for '--maintenance-windows",
    );
    // `up` checks them all before it writes its PKI.
    let up_data = dir.path().join("up-data");
    assert_usage_error(
        &output(
            c,
            &[
                "up",
                "--cron",
                "0 0 31 2 *",
                "--data-dir",
                up_data.to_str().unwrap(),
            ],
            &[],
        ),
        "--cron",
    );
    assert!(!up_data.exists(), "a failed up wrote its data dir");
    assert_usage_error(&output(c, &["serve"], &[("DRY_RUN", "maybe")]), "--dry-run");
    assert_usage_error(
        &output(c, &["serve", "--monitor", "bad name!"], &[]),
        "--monitor",
    );
    assert_usage_error(
        &output(
            c,
            &["serve", "--insecure-registries", "reg.lan:5000,bad host!"],
            &[],
        ),
        "--insecure-registries",
    );
    assert_usage_error(
        &output(c, &["serve", "--insecure-registries", "reg.lan:0"], &[]),
        "--insecure-registries",
    );
    assert_usage_error(
        &output(c, &["serve", "--registry-ca", "/nonexistent/ca.pem"], &[]),
        "--registry-ca /nonexistent/ca.pem",
    );
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    assert_usage_error(
        &output(
            c,
            &["serve", "--registry-ca", not_pem.to_str().unwrap()],
            &[],
        ),
        "no PEM certificate",
    );
    assert_usage_error(
        &output(
            c,
            &["serve", "--docker-config", "/nonexistent/config.json"],
            &[],
        ),
        "--docker-config",
    );
    // A malformed docker config names the file and the place, never a secret in it.
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        r#"{"auths": {"reg.lan": {"auth": "sentinel-not-base64!"}}}"#,
    )
    .unwrap();
    let out = output(
        c,
        &["serve"],
        &[("DOCKER_CONFIG", docker_dir.to_str().unwrap())],
    );
    assert_usage_error(&out, "\"reg.lan\": \"auth\" is not base64");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sentinel"));
    assert_usage_error(
        &output(c, &["serve", "--run-once", "--run-once-wait", "0"], &[]),
        "--run-once-wait",
    );
    assert_usage_error(
        &output(c, &["serve"], &[("CLEANUP", "yes please")]),
        "--cleanup",
    );
    // A notifier URL with an unknown scheme, or malformed, stops startup naming it, its
    // secrets masked.
    assert_usage_error(
        &output(c, &["serve", "--notifiers", "irc://chat.lan/ops"], &[]),
        "unknown scheme \"irc\"",
    );
    let out = output(
        c,
        &["serve"],
        &[("NOTIFIERS", "json://h.lan/x discord://only-one-sentinel")],
    );
    assert_usage_error(&out, "discord://***");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sentinel"));
    assert_admin_usage_error(
        &output(c, &["hosts", "--server", "http://127.0.0.1:1"], &[]),
        "--server",
    );
    assert_admin_usage_error(&output(c, &["hosts", "--output", "yaml"], &[]), "--output");
    assert_admin_usage_error(
        &output(
            c,
            &["--log-level", "info", "history", "--since", "soon"],
            &[],
        ),
        "--since",
    );
    // Nothing listens there: exit 3, one line naming the address.
    let pki_dir = dir.path().join("admin-pki");
    let made = output(c, &["pki", "init", "--dir", pki_dir.to_str().unwrap()], &[]);
    assert!(made.status.success(), "{made:?}");
    for command in ["hosts", "status"] {
        let out = output(
            c,
            &[
                command,
                "--server",
                "https://127.0.0.1:1",
                "--pki-dir",
                pki_dir.to_str().unwrap(),
            ],
            &[],
        );
        assert_exit_one_line(
            &out,
            3,
            "cannot reach the coordinator at https://127.0.0.1:1",
        );
        // Each cause once, not `tcp connect error: tcp connect error`.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches("tcp connect error").count(), 1, "{stderr}");
    }
    assert_usage_error(
        &output(c, &["pki", "issue", "--dir", d, "--agent", "bad_name"], &[]),
        "--agent",
    );
    assert_usage_error(
        &output(c, &["pki", "init", "--dir", d, "--san", "not a name"], &[]),
        "--san",
    );
    // serve without a PKI says which directory and how to make one, and creates no store.
    let data = dir.path().join("data");
    let out = output(
        c,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pki-dir",
            d,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_usage_error(&out, "--pki-dir");
    assert!(!data.exists(), "a failed start created the data dir");

    let a = &bins.agent;
    let agent_args = |coordinator: &'static str| {
        vec![
            "--coordinator",
            coordinator,
            "--ca",
            "/nonexistent/ca.pem",
            "--cert",
            "/nonexistent/cert.pem",
            "--key",
            "/nonexistent/key.pem",
        ]
    };
    assert_usage_error(
        &output(a, &agent_args("http://127.0.0.1:1"), &[]),
        "--coordinator",
    );
    assert_usage_error(
        &output(a, &agent_args("https://127.0.0.1:1"), &[]),
        "--ca/--cert/--key",
    );
    assert_usage_error(&output(a, &["--ca", "x"], &[]), "--coordinator");
}

#[test]
fn pki_refuses_to_overwrite_and_agent_refuses_a_non_agent_certificate() {
    let bins = Binaries::get().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-pki-")
        .tempdir()
        .unwrap();
    let pki = dir.path().join("pki");
    let p = pki.to_str().unwrap();
    let c = &bins.coordinator;
    let first = output(c, &["pki", "init", "--dir", p], &[]);
    assert!(first.status.success(), "{first:?}");
    let ca_before = std::fs::read(pki.join("ca.pem")).unwrap();
    let again = output(c, &["pki", "init", "--dir", p], &[]);
    assert_usage_error(&again, "refusing to overwrite");
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), ca_before);

    let issued = output(c, &["pki", "issue", "--dir", p, "--agent", "Web-01"], &[]);
    assert!(issued.status.success(), "{issued:?}");
    assert!(pki.join("agent-web-01.pem").exists());
    let twice = output(c, &["pki", "issue", "--dir", p, "--agent", "web-01"], &[]);
    assert_usage_error(&twice, "refusing to overwrite");

    // The CLI certificate cannot serve as an agent's.
    let out = output(
        &bins.agent,
        &[
            "--coordinator",
            "https://127.0.0.1:1",
            "--ca",
            pki.join("ca.pem").to_str().unwrap(),
            "--cert",
            pki.join("cli.pem").to_str().unwrap(),
            "--key",
            pki.join("cli-key.pem").to_str().unwrap(),
            "--data-dir",
            dir.path().join("agent").to_str().unwrap(),
        ],
        &[],
    );
    assert_usage_error(&out, "an admin certificate, not an agent's");
}

#[test]
fn an_admin_command_with_another_coordinators_pki_says_so() {
    let bins = Binaries::get().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-other-pki-")
        .tempdir()
        .unwrap();
    let c = &bins.coordinator;
    let mut coordinator =
        crate::fleet::Coordinator::init(c, &dir.path().join("theirs"), &[]).unwrap();
    let _server = coordinator.serve("127.0.0.1:0").unwrap();
    let ours = dir.path().join("ours");
    let made = output(c, &["pki", "init", "--dir", ours.to_str().unwrap()], &[]);
    assert!(made.status.success(), "{made:?}");
    let url = coordinator.url.clone();
    let said = format!(
        "the certificate of the coordinator at {url} is not signed by the CA in {}: --server and --pki-dir (or OUROBOROS_SERVER and OUROBOROS_PKI_DIR) belong to different coordinators",
        ours.join("ca.pem").display()
    );
    let out = output(
        c,
        &[
            "hosts",
            "--server",
            &url,
            "--pki-dir",
            ours.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit_one_line(&out, 3, &said);
    // The same through the environment.
    let out = output(
        c,
        &["status"],
        &[
            ("OUROBOROS_SERVER", url.as_str()),
            ("OUROBOROS_PKI_DIR", ours.to_str().unwrap()),
        ],
    );
    assert_exit_one_line(&out, 3, &said);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("BadSignature"));
}

#[test]
fn flag_beats_environment_beats_default() {
    let bins = Binaries::get().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-test-prec-")
        .tempdir()
        .unwrap();
    let from_env = dir.path().join("from-env");
    let from_flag = dir.path().join("from-flag");
    // Environment used when no flag is given...
    let out = output(
        &bins.coordinator,
        &["pki", "init"],
        &[("OUROBOROS_PKI_DIR", from_env.to_str().unwrap())],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(from_env.join("ca.pem").exists());
    // ...and the flag wins over it.
    let out = output(
        &bins.coordinator,
        &["pki", "init", "--dir", from_flag.to_str().unwrap()],
        &[("OUROBOROS_PKI_DIR", from_env.to_str().unwrap())],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(from_flag.join("ca.pem").exists());
    // The default of --listen is documented in --help.
    let help = output(&bins.coordinator, &["serve", "--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("[default: 0.0.0.0:7443]"), "{text}");
    assert!(text.contains("[env: OUROBOROS_LISTEN="), "{text}");
}
