//! `ouroboros-coordinator healthcheck`: asks the running coordinator's own `/healthz` (on the
//! metrics listener of `serve` and `up`, same `--prometheus-*` options and environment) and
//! exits 0 when it answers 200, 1 otherwise, with one line saying why. It needs no shell and
//! no certificate, so it serves as the image's `HEALTHCHECK`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;
use ouroboros_shared::names::{ENV_PROMETHEUS_ADDR, ENV_PROMETHEUS_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::Failure;

/// The longest the whole probe may take (Docker's own default timeout is 30 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// More of an answer than this is not read.
const MAX_ANSWER: u64 = 16 * 1024;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address the metrics endpoint listens on (0.0.0.0 or :: are asked on the loopback).
    #[arg(long, env = ENV_PROMETHEUS_ADDR, default_value = "0.0.0.0", value_name = "IP")]
    pub prometheus_addr: IpAddr,
    /// Port of the metrics endpoint, as given to `serve` or `up`.
    #[arg(long, env = ENV_PROMETHEUS_PORT, value_name = "PORT")]
    pub prometheus_port: Option<u16>,
}

impl HealthcheckArgs {
    /// Where to ask: the listener's address, the loopback when it listens on all of them.
    pub fn target(&self) -> Option<SocketAddr> {
        let ip = match self.prometheus_addr {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        self.prometheus_port.map(|port| SocketAddr::new(ip, port))
    }
}

/// Runs the check and prints its line; unhealthy is a failure with code 1.
pub async fn healthcheck(args: &HealthcheckArgs) -> Result<(), Failure> {
    let Some(addr) = args.target() else {
        return Err(Failure::runtime(
            "unhealthy: no metrics endpoint to ask (give --prometheus-port or PROMETHEUS_PORT, as to `serve`)",
        ));
    };
    let line = probe(addr, PROBE_TIMEOUT).await.map_err(Failure::runtime)?;
    println!("{line}");
    Ok(())
}

/// `GET /healthz` on `addr`: `Ok(line)` on a 200, `Err(line)` on anything else.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("unhealthy: http://{addr}/healthz: {e}")),
        Err(_) => {
            return Err(format!(
                "unhealthy: http://{addr}/healthz did not answer within {}s",
                timeout.as_secs()
            ));
        }
    };
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code == "200" {
        Ok(format!("healthy: http://{addr}/healthz answered 200"))
    } else {
        Err(format!(
            "unhealthy: http://{addr}/healthz answered {status:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers one request with `answer`.
    async fn answering(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn a_200_is_healthy() {
        let addr = answering("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
        let line = probe(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(line, format!("healthy: http://{addr}/healthz answered 200"));
    }

    #[tokio::test]
    async fn another_status_a_closed_port_or_silence_is_unhealthy() {
        let addr = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let line = probe(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(line.contains("503 Service Unavailable"), "{line}");

        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let line = probe(closed, Duration::from_secs(5)).await.unwrap_err();
        assert!(line.starts_with("unhealthy: http://"), "{line}");

        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let line = probe(addr, Duration::from_millis(200)).await.unwrap_err();
        assert!(line.contains("did not answer"), "{line}");
    }

    #[tokio::test]
    async fn the_real_endpoint_is_healthy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let store = std::sync::Arc::new(crate::fleet::store::MemoryStore::default());
        let fleet = std::sync::Arc::new(crate::fleet::Fleet::open(store).unwrap());
        let metrics = crate::telemetry::metrics::Metrics::new(true).unwrap();
        let server = tokio::spawn(crate::telemetry::http::serve(
            listener, fleet, metrics, stopped,
        ));
        let args = HealthcheckArgs {
            prometheus_addr: "0.0.0.0".parse().unwrap(),
            prometheus_port: Some(addr.port()),
        };
        assert_eq!(args.target(), Some(addr));
        healthcheck(&args).await.unwrap();
        let _ = stop.send(true);
        let _ = server.await;
        let none = HealthcheckArgs {
            prometheus_addr: "0.0.0.0".parse().unwrap(),
            prometheus_port: None,
        };
        let failure = healthcheck(&none).await.unwrap_err();
        assert_eq!(failure.code, 1);
        assert!(failure.message.contains("--prometheus-port"));
    }
}
