//! The simulator's coordinator: the real `ouroboros-coordinator serve` as a child process,
//! its admin API (over mTLS with the CLI certificate), and what `/proc` says about it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::admin_client::AdminClient;
use ouroboros_shared::pki::{ClientPem, PkiDir};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::process::Process;

/// Linux reports process CPU time in clock ticks of `USER_HZ`, which the kernel ABI fixes at
/// 100 on every architecture it runs on.
const USER_HZ: u64 = 100;

/// Admin answers for a large fleet (every container of a `check`) exceed tonic's 4 MiB default.
const MAX_ADMIN_MESSAGE: usize = 512 * 1024 * 1024;

/// How `serve` is started.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub bin: PathBuf,
    pub pki: PathBuf,
    pub data: PathBuf,
    pub max_hosts_in_flight: u32,
    pub max_containers_in_flight: u32,
    /// `--history-retention` (days, or a duration such as `30s`).
    pub history_retention: Option<String>,
}

/// A running coordinator.
pub struct SimCoordinator {
    args: ServeArgs,
    process: Process,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The highest peak RSS of earlier processes (before a restart).
    earlier_peak_rss: u64,
}

impl SimCoordinator {
    /// Starts `serve` on `listen` (`127.0.0.1:0` the first time, the same address after).
    pub fn start(args: ServeArgs, listen: &str) -> anyhow::Result<Self> {
        let process = spawn(&args, listen)?;
        let line = process.wait_for_log("Coordinator listening.", Duration::from_secs(60))?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .with_context(|| format!("no addr= in {line:?}"))?
            .to_owned();
        Ok(Self {
            args,
            process,
            addr,
            earlier_peak_rss: 0,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGKILL, then `serve` again on the same address and store.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.earlier_peak_rss = self.peak_rss();
        self.process.kill9()?;
        let process = spawn(&self.args, &self.addr)?;
        process.wait_for_log("Coordinator listening.", Duration::from_secs(60))?;
        self.process = process;
        Ok(())
    }

    /// SIGTERM and wait.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.process.terminate(Duration::from_secs(30)).map(|_| ())
    }

    /// The highest resident set size of the coordinator so far (`VmHWM`), over restarts.
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:").max(self.earlier_peak_rss)
    }

    /// The coordinator's resident set size now (`VmRSS`).
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// A `kB` field of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU time (user and system) the current process used so far.
    pub fn cpu_time(&self) -> Duration {
        let ticks = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces), from field 3 on.
                let rest = s.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: u64 = fields.get(11)?.parse().ok()?;
                let stime: u64 = fields.get(12)?.parse().ok()?;
                Some(utime + stime)
            })
            .unwrap_or(0);
        Duration::from_millis(ticks * 1000 / USER_HZ)
    }

    /// Bytes of the data directory (the store and whatever else the coordinator keeps).
    pub fn store_bytes(&self) -> u64 {
        dir_bytes(&self.args.data)
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }

    /// An admin client with the CLI certificate.
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let pki = PkiDir::new(&self.args.pki);
        let pem = ClientPem::read(&pki.ca_cert(), &pki.cli_cert(), &pki.cli_key())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem.ca))
            .identity(Identity::from_pem(pem.cert, pem.key));
        let channel = Endpoint::from_shared(self.url())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .context("connecting to the coordinator's admin API")?;
        Ok(AdminClient::new(channel)
            .max_decoding_message_size(MAX_ADMIN_MESSAGE)
            .max_encoding_message_size(MAX_ADMIN_MESSAGE))
    }
}

fn spawn(args: &ServeArgs, listen: &str) -> anyhow::Result<Process> {
    let max_hosts = args.max_hosts_in_flight.to_string();
    let max_containers = args.max_containers_in_flight.to_string();
    let mut argv = vec![
        "serve",
        "--listen",
        listen,
        "--data-dir",
        path_str(&args.data)?,
        "--pki-dir",
        path_str(&args.pki)?,
        // Cycles come from the simulator's `check`s only.
        "--interval",
        "86400",
        "--max-hosts-in-flight",
        &max_hosts,
        "--max-containers-in-flight",
        &max_containers,
        "--log-level",
        "info",
    ];
    if let Some(retention) = &args.history_retention {
        argv.extend(["--history-retention", retention]);
    }
    Process::spawn(&args.bin, &argv, &[])
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `ListHosts`: (connected and reported, known).
pub async fn reported_hosts(admin: &mut AdminClient<Channel>) -> anyhow::Result<(usize, usize)> {
    let hosts = admin
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner()
        .hosts;
    let reported = hosts.iter().filter(|h| h.connected && h.reported).count();
    Ok((reported, hosts.len()))
}
