//! `DATA_EXPORT=influxdb`: after every cycle the same figures as `/metrics`, written as
//! InfluxDB line protocol. InfluxDB 1.x through `/write` (database, user and password), 2.x
//! through `/api/v2/write` (org, bucket and token; used when a token is given). A failed
//! write is logged (without credentials) and never delays a cycle. The points are made from
//! the families the metrics registry gathers ([`line_protocol`]).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus::proto::{Metric, MetricFamily, MetricType};
use tracing::{debug, warn};

use crate::fleet::Fleet;
use crate::telemetry::families::*;
use crate::telemetry::http::fleet_figures;
use crate::telemetry::metrics::Metrics;

/// The measurement of the fleet-wide figures (one field each).
const FLEET_MEASUREMENT: &str = "ouroboros_fleet";
/// The fields of [`FLEET_MEASUREMENT`], and whether each is written as an integer.
const FLEET_FIELDS: [(Family, bool); 5] = [
    (AGENTS_CONNECTED, true),
    (HOSTS, true),
    (UPDATES_AVAILABLE, true),
    (ROLLBACKS_TOTAL, true),
    (LAST_CYCLE_TIMESTAMP_SECONDS, false),
];
/// The families written one point per series (the value as an integer field `value`).
const SERIES: [Family; 7] = [
    HOST_CONNECTED,
    CONTAINERS_MONITORED,
    UPDATES_TOTAL,
    REGISTRY_REQUESTS_TOTAL,
    ROLLOUTS,
    NOTIFICATIONS_TOTAL,
    HOOK_RUNS_TOTAL,
];
/// The histograms, written as their count and sum.
const HISTOGRAMS: [Family; 2] = [CYCLE_SECONDS, REGISTRY_PROBE_SECONDS];

/// A counter's or gauge's value.
fn value(metric: &Metric, kind: MetricType) -> f64 {
    match kind {
        MetricType::COUNTER => metric.get_counter().get_value(),
        _ => metric.get_gauge().get_value(),
    }
}

/// The value of label `name`.
fn label<'m>(metric: &'m Metric, name: &str) -> &'m str {
    metric
        .get_label()
        .iter()
        .find(|pair| pair.name() == name)
        .map_or("", |pair| pair.value())
}

/// A tag key or value, escaped.
fn tag(value: &str) -> String {
    value
        .replace(',', "\\,")
        .replace('=', "\\=")
        .replace(' ', "\\ ")
}

/// The gathered `families` as InfluxDB line protocol points at `unix_ns`: the fleet-wide
/// figures in one point, then a point per series of [`SERIES`] (tags in the family's label
/// order, points ordered by them), then the histograms' count and sum. Written by hand: the
/// prometheus crate has no InfluxDB encoder, and this layout is what dashboards query.
pub fn line_protocol(families: &[MetricFamily], unix_ns: i128) -> String {
    let find = |f: &Family| families.iter().find(|g| g.name() == f.name);
    let mut out = String::new();
    let fields: Vec<String> = FLEET_FIELDS
        .iter()
        .map(|(f, integer)| {
            let v = find(f)
                .and_then(|g| g.get_metric().first())
                .map_or(0.0, |m| value(m, f.kind));
            if *integer {
                format!("{}={}i", f.short_name(), v as i64)
            } else {
                format!("{}={v}", f.short_name())
            }
        })
        .collect();
    let _ = writeln!(out, "{FLEET_MEASUREMENT} {} {unix_ns}", fields.join(","));
    for f in &SERIES {
        let Some(g) = find(f) else { continue };
        let mut points: Vec<(Vec<&str>, f64)> = g
            .get_metric()
            .iter()
            .map(|m| {
                let tags = f.labels.iter().map(|l| label(m, l)).collect();
                (tags, value(m, f.kind))
            })
            .collect();
        points.sort_by(|a, b| a.0.cmp(&b.0));
        for (tags, v) in points {
            let tags: Vec<String> = f
                .labels
                .iter()
                .zip(tags)
                .map(|(k, v)| format!("{k}={}", tag(v)))
                .collect();
            let _ = writeln!(
                out,
                "{},{} value={}i {unix_ns}",
                f.name,
                tags.join(","),
                v as i64
            );
        }
    }
    for f in &HISTOGRAMS {
        let (count, sum) = find(f)
            .and_then(|g| g.get_metric().first())
            .map_or((0, 0.0), |m| {
                let h = m.get_histogram();
                (h.get_sample_count(), h.get_sample_sum())
            });
        let _ = writeln!(out, "{} count={count}i,sum={sum} {unix_ns}", f.name);
    }
    out
}

/// Where and how to write.
#[derive(Clone, PartialEq, Eq)]
pub struct InfluxConfig {
    /// `http://host` or `https://host` (`INFLUX_URL`).
    pub url: String,
    pub port: u16,
    pub database: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// InfluxDB 2.x: org, bucket and token.
    pub org: Option<String>,
    pub bucket: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl InfluxConfig {
    /// The write endpoint's URL (without credentials).
    pub fn write_url(&self) -> Result<reqwest::Url, String> {
        let base = self.url.trim_end_matches('/');
        let mut url = reqwest::Url::parse(base).map_err(|e| format!("INFLUX_URL {base:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("INFLUX_URL {base:?}: not http:// or https://"));
        }
        url.set_port(Some(self.port))
            .map_err(|()| format!("INFLUX_URL {base:?}: cannot take a port"))?;
        if self.token.is_some() {
            url.set_path("/api/v2/write");
            url.query_pairs_mut()
                .append_pair("org", self.org.as_deref().unwrap_or_default())
                .append_pair("bucket", self.bucket.as_deref().unwrap_or(&self.database))
                .append_pair("precision", "ns");
        } else {
            url.set_path("/write");
            url.query_pairs_mut()
                .append_pair("db", &self.database)
                .append_pair("precision", "ns");
        }
        Ok(url)
    }
}

/// Writes the figures to InfluxDB.
pub struct Exporter {
    http: reqwest::Client,
    config: InfluxConfig,
    url: reqwest::Url,
    metrics: Metrics,
}

impl Exporter {
    pub fn new(config: InfluxConfig, metrics: Metrics) -> Result<Self, String> {
        ouroboros_shared::install_crypto_provider();
        let url = config.write_url()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the InfluxDB client: {e}"))?;
        Ok(Self {
            http,
            config,
            url,
            metrics,
        })
    }

    /// Writes the figures now; the error names the endpoint and the answer, not credentials.
    pub async fn write(&self, fleet: &Fleet) -> Result<(), String> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let body = line_protocol(&self.metrics.gather(&fleet_figures(fleet)), now_ns);
        let mut request = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if let Some(token) = &self.config.token {
            request = request.header(reqwest::header::AUTHORIZATION, format!("Token {token}"));
        } else if let Some(user) = &self.config.username {
            request = request.basic_auth(user, self.config.password.as_deref());
        }
        let where_to = format!(
            "{}://{}:{}{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default(),
            self.config.port,
            self.url.path()
        );
        let response = request
            .send()
            .await
            .map_err(|e| format!("{where_to}: {}", ouroboros_shared::cli::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            debug!(to = %where_to, "Figures written to InfluxDB.");
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(format!(
                "{where_to} answered {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        }
    }
}

/// Writes after every cycle until `stop`.
pub async fn run(
    exporter: Exporter,
    fleet: Arc<Fleet>,
    cycle_done: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = cycle_done.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = exporter.write(&fleet).await {
            warn!(error = %e, "Cannot write the figures to InfluxDB.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InfluxConfig {
        InfluxConfig {
            url: "http://influx.lan".into(),
            port: 8086,
            database: "ouroboros".into(),
            username: Some("writer".into()),
            password: Some("pw-sentinel".into()),
            org: None,
            bucket: None,
            token: None,
        }
    }

    #[test]
    fn v1_and_v2_endpoints_and_no_secret_in_debug() {
        assert_eq!(
            config().write_url().unwrap().as_str(),
            "http://influx.lan:8086/write?db=ouroboros&precision=ns"
        );
        let v2 = InfluxConfig {
            org: Some("ops".into()),
            bucket: Some("fleet".into()),
            token: Some("token-sentinel".into()),
            ..config()
        };
        assert_eq!(
            v2.write_url().unwrap().as_str(),
            "http://influx.lan:8086/api/v2/write?org=ops&bucket=fleet&precision=ns"
        );
        let shown = format!("{:?}", v2);
        assert!(!shown.contains("sentinel"), "{shown}");
        let bad = InfluxConfig {
            url: "ftp://x".into(),
            ..config()
        };
        assert!(bad.write_url().is_err());
    }

    /// InfluxDB 2.x is not packaged here: a local receiver records what the 2.x write API
    /// gets, per its documentation (POST /api/v2/write?org&bucket&precision, `Token` auth,
    /// line protocol body).
    #[tokio::test]
    async fn the_v2_write_api_gets_token_org_bucket_and_line_protocol() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf).to_string()
        });
        let exporter = Exporter::new(
            InfluxConfig {
                url: "http://127.0.0.1".into(),
                port,
                org: Some("ops".into()),
                bucket: Some("fleet".into()),
                token: Some("tok-sentinel".into()),
                ..config()
            },
            Metrics::new(true).unwrap(),
        )
        .unwrap();
        let store = std::sync::Arc::new(crate::fleet::store::MemoryStore::default());
        let fleet = Fleet::open(store).unwrap();
        exporter.write(&fleet).await.unwrap();
        let request = received.await.unwrap();
        assert!(
            request.starts_with("POST /api/v2/write?org=ops&bucket=fleet&precision=ns HTTP/1.1"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Token tok-sentinel"),
            "{request}"
        );
        assert!(
            request.contains("\r\n\r\nouroboros_fleet agents_connected=0i,hosts=0i"),
            "{request}"
        );
    }
}
