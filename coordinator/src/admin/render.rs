//! How the admin commands show answers: tables (aligned, relative times, colour only on a
//! terminal) and JSON (stable field names: the README lists them; fields may be added, never
//! renamed or removed).

use ouroboros_proto::v1 as pb;
use ouroboros_shared::inventory::{ContainerInfo, ContainerState, Health, HostMode};
use ouroboros_shared::time_fmt::{age, rfc3339_ms, rfc3339_secs};
use serde_json::json;

use super::output::{OutputFormat, colour_enabled, paint, table};

pub(crate) fn render_hosts(hosts: &[pb::HostStatus], format: OutputFormat, now: i64) -> String {
    let colour = colour_enabled();
    match format {
        OutputFormat::Json => {
            let items: Vec<_> = hosts
                .iter()
                .map(|h| {
                    let engine = h.engine.clone().unwrap_or_default();
                    json!({
                        "host": h.host,
                        "connected": h.connected,
                        "last_seen": rfc3339_ms(h.last_seen_unix_ms),
                        "connected_since": rfc3339_ms(h.connected_since_unix_ms),
                        "agent_version": h.agent_version,
                        "agent_image": h.agent_image,
                        "engine_version": engine.version,
                        "api_version": engine.api_version,
                        "os": engine.os,
                        "arch": engine.arch,
                        "mode": HostMode::from(h.mode()).as_str(),
                        "containers": h.container_count,
                    })
                })
                .collect();
            pretty(&items)
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    let engine = h.engine.clone().unwrap_or_default();
                    vec![
                        h.host.clone(),
                        paint(
                            if h.connected {
                                "connected"
                            } else {
                                "disconnected"
                            },
                            colour,
                        ),
                        age(h.last_seen_unix_ms, now),
                        agent_column(h),
                        engine.version,
                        engine.api_version,
                        HostMode::from(h.mode()).as_str().to_owned(),
                        h.container_count.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "HOST",
                    "STATUS",
                    "LAST SEEN",
                    "AGENT",
                    "ENGINE",
                    "API",
                    "MODE",
                    "CONTAINERS",
                ],
                &rows,
            )
        }
    }
}

/// The agent's version, and the digest its container runs when it runs in one: hosts midway
/// through a self-update stand out.
fn agent_column(h: &pb::HostStatus) -> String {
    match h.agent_image.rsplit_once("@sha256:") {
        Some((_, digest)) => format!("{} @{}", h.agent_version, &digest[..digest.len().min(12)]),
        None => h.agent_version.clone(),
    }
}

pub(crate) fn render_containers(rows: &[(String, ContainerInfo)], format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => {
            let items: Vec<_> = rows
                .iter()
                .map(|(host, c)| {
                    json!({
                        "host": host,
                        "id": c.id,
                        "name": c.name,
                        "image": c.image,
                        "image_id": c.image_id,
                        "repo_digests": c.repo_digests,
                        "labels": c.labels,
                        "state": c.state.as_str(),
                        "health": match c.health { Health::None => "none", h => h.as_str() },
                        "restart_count": c.restart_count,
                        "created": rfc3339_secs(c.created_unix),
                        "set_aside": (!c.set_aside.is_empty()).then_some(&c.set_aside),
                    })
                })
                .collect();
            pretty(&items)
        }
        OutputFormat::Table => {
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|(host, c)| {
                    let mut state = match (c.state, c.health) {
                        (ContainerState::Running, Health::None) => "running".to_owned(),
                        (ContainerState::Running, h) => format!("running ({})", h.as_str()),
                        (s, _) => s.as_str().to_owned(),
                    };
                    if !c.set_aside.is_empty() {
                        state.push_str(", set aside");
                    }
                    vec![
                        host.clone(),
                        c.name.clone(),
                        c.image.clone(),
                        state,
                        c.restart_count.to_string(),
                        c.id.chars().take(12).collect(),
                    ]
                })
                .collect();
            table(
                &["HOST", "NAME", "IMAGE", "STATE", "RESTARTS", "ID"],
                &table_rows,
            )
        }
    }
}

/// What became of an update's dependants, as JSON.
pub(crate) fn dependants_json(dependants: &[pb::DependantResult]) -> Vec<serde_json::Value> {
    dependants
        .iter()
        .map(|d| {
            json!({
                "container": d.container,
                "kind": d.kind,
                "action": d.action,
                "new_id": d.new_id,
                "reason": d.reason,
            })
        })
        .collect()
}

/// What became of an update's dependants, in a few words (`app recreated, proxy restarted`).
pub(crate) fn dependants_text(dependants: &[pb::DependantResult]) -> String {
    dependants
        .iter()
        .filter(|d| d.action != "untouched")
        .map(|d| match d.reason.as_str() {
            "" => format!("{} {}", d.container, d.action),
            why => format!("{} {} ({why})", d.container, d.action),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn pretty(items: &[serde_json::Value]) -> String {
    let mut text = serde_json::to_string_pretty(items).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

pub(crate) fn rollout_json(r: &pb::Rollout) -> serde_json::Value {
    json!({
        "id": r.id,
        "state": r.state,
        "reason": r.reason,
        "created": rfc3339_ms(r.created_unix_ms),
        "updated": rfc3339_ms(r.updated_unix_ms),
        "targets": r.targets.iter().map(|t| json!({
            "host": t.host,
            "container": t.container,
            "image": t.image,
            "old_digest": t.old_digest,
            "new_digest": t.new_digest,
            "state": t.state,
            "reason": t.reason,
            "op_id": t.op_id,
            "started": rfc3339_ms(t.started_unix_ms),
            "finished": rfc3339_ms(t.finished_unix_ms),
            "transitions": t.transitions.iter().filter_map(|line| {
                let (at, state) = line.split_once(' ')?;
                Some(json!({"at": rfc3339_ms(at.parse().ok()?), "at_unix_ms": at.parse::<i64>().ok()?, "state": state}))
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `0.1.0 @3f9a… on 2 hosts, 0.1.0 @77c1… on 1 host`: more than one entry (a fleet half-way
/// through a self-update) is painted.
fn agents_line(agents: &[pb::AgentVersion], colour: bool) -> String {
    let line = agents
        .iter()
        .map(|a| {
            let host = pb::HostStatus {
                agent_version: a.version.clone(),
                agent_image: a.image.clone(),
                ..Default::default()
            };
            let hosts = if a.hosts == 1 { "host" } else { "hosts" };
            format!("{} on {} {hosts}", agent_column(&host), a.hosts)
        })
        .collect::<Vec<_>>()
        .join(", ");
    match agents.len() {
        0 => "-".into(),
        1 => line,
        _ => paint(&line, colour),
    }
}

pub(crate) fn render_status(
    s: &pb::StatusResponse,
    format: OutputFormat,
    now: i64,
    colour: bool,
) -> String {
    let when = |ms: i64| (ms > 0).then(|| rfc3339_ms(ms)).flatten();
    match format {
        OutputFormat::Json => {
            let value = json!({
                "hosts": s.hosts,
                "hosts_connected": s.hosts_connected,
                "hosts_disconnected": s.hosts.saturating_sub(s.hosts_connected),
                "containers": s.containers,
                "containers_monitored": s.containers_monitored,
                "updates_pending": s.updates_pending,
                "rollouts_active": s.rollouts_active,
                "rollouts_paused": s.rollouts_paused,
                "last_cycle": when(s.last_cycle_unix_ms),
                "next_cycle": when(s.next_cycle_unix_ms),
                "paused": s.paused,
                "paused_reason": s.paused_reason,
                "agents": s.agents.iter().map(|a| json!({
                    "version": a.version,
                    "image": a.image,
                    "hosts": a.hosts,
                })).collect::<Vec<_>>(),
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            )
        }
        OutputFormat::Table => {
            let relative = |ms: i64| {
                if ms <= 0 {
                    "-".to_owned()
                } else if ms >= now {
                    format!("in {}", age(now, ms).trim_end_matches(" ago"))
                } else {
                    age(ms, now)
                }
            };
            let down = s.hosts.saturating_sub(s.hosts_connected);
            let rows = vec![
                vec![
                    "hosts".into(),
                    format!(
                        "{} up, {}",
                        s.hosts_connected,
                        if down > 0 {
                            paint(&format!("{down} down"), colour)
                        } else {
                            "0 down".into()
                        }
                    ),
                ],
                vec![
                    "containers".into(),
                    format!("{} ({} monitored)", s.containers, s.containers_monitored),
                ],
                vec!["agents".into(), agents_line(&s.agents, colour)],
                vec!["updates pending".into(), s.updates_pending.to_string()],
                vec![
                    "rollouts active".into(),
                    if s.rollouts_paused > 0 {
                        format!("{} ({} paused)", s.rollouts_active, s.rollouts_paused)
                    } else {
                        s.rollouts_active.to_string()
                    },
                ],
                vec!["last cycle".into(), relative(s.last_cycle_unix_ms)],
                vec!["next cycle".into(), relative(s.next_cycle_unix_ms)],
                vec![
                    "updates".into(),
                    if s.paused && s.paused_reason.is_empty() {
                        format!("{} by the operator", paint("paused", colour))
                    } else if s.paused {
                        format!("{} ({})", paint("paused", colour), s.paused_reason)
                    } else if s.rollouts_paused > 0 {
                        format!(
                            "{}: a paused rollout holds new updates (`resume` or `rollout cancel`)",
                            paint("held", colour)
                        )
                    } else {
                        paint("running", colour)
                    },
                ],
            ];
            table(&["FLEET", ""], &rows)
        }
    }
}

pub(crate) fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    }
}

/// The terminal display of a watched rollout: a progress bar and a line per target.
pub(crate) fn progress_display(r: &pb::Rollout, colour: bool) -> String {
    const WIDTH: usize = 30;
    let total = r.targets.len().max(1);
    let done = r
        .targets
        .iter()
        .filter(|t| !matches!(t.state.as_str(), "pending" | "updating" | "reverting"))
        .count();
    let filled = WIDTH * done / total;
    let mut out = format!(
        "rollout {}  {}  [{}{}] {done}/{}\n",
        r.id,
        paint(&r.state, colour),
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        r.targets.len()
    );
    let rows: Vec<Vec<String>> = r
        .targets
        .iter()
        .map(|t| {
            vec![
                format!("  {}/{}", t.host, t.container),
                paint(&t.state, colour),
                t.reason.clone(),
            ]
        })
        .collect();
    let body = table(&["  TARGET", "STATE", "REASON"], &rows);
    out.push_str(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_json_is_stable() {
        let h = pb::HostStatus {
            host: "h1".into(),
            connected: false,
            last_seen_unix_ms: 1_000,
            agent_version: "0.1.0".into(),
            engine: Some(pb::EngineInfo {
                version: "20.10.24".into(),
                api_version: "1.41".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
            }),
            mode: pb::HostMode::Standalone.into(),
            container_count: 3,
            connected_since_unix_ms: 0,
            inventory_at_unix_ms: 0,
            reported: false,
            agent_image: format!("r/ouroboros-agent:1@sha256:{}", "ab".repeat(32)),
        };
        let v: serde_json::Value = serde_json::from_str(&render_hosts(
            std::slice::from_ref(&h),
            OutputFormat::Json,
            0,
        ))
        .unwrap();
        assert_eq!(v[0]["host"], "h1");
        assert_eq!(v[0]["connected"], false);
        assert_eq!(v[0]["last_seen"], "1970-01-01T00:00:01Z");
        assert_eq!(v[0]["connected_since"], serde_json::Value::Null);
        assert_eq!(v[0]["api_version"], "1.41");
        assert_eq!(v[0]["mode"], "standalone");
        assert_eq!(v[0]["containers"], 3);
        assert_eq!(v[0]["agent_image"], h.agent_image.as_str());
        let t = render_hosts(&[h], OutputFormat::Table, 61_000);
        assert!(t.contains("disconnected  1m ago"), "{t}");
        // The digest the agent runs, so that a half-updated fleet shows.
        assert!(t.contains("0.1.0 @abababababab "), "{t}");
    }
}
