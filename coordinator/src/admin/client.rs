//! The admin commands' side of the `Admin` API: connect with the CLI certificate, call, print.

use std::time::Duration;

use ouroboros_proto::v1 as pb;
use ouroboros_proto::v1::admin_client::AdminClient;
use ouroboros_shared::host::HostName;
use ouroboros_shared::inventory::ContainerInfo;
use ouroboros_shared::pki::ClientPem;
use ouroboros_shared::time_fmt::{age, now_unix_ms, rfc3339_ms};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::args::{AdminArgs, Failure, UpdateArgs};
use crate::admin::failure::{call_failed, connect_failed};
use crate::admin::output::{OutputFormat, colour_enabled, table};
use crate::admin::render::*;
use crate::server::convert::status_name;

/// Opens a mutual-TLS channel to the coordinator with the CLI certificate.
pub async fn connect(args: &AdminArgs) -> Result<AdminClient<Channel>, Failure> {
    let pki = ouroboros_shared::pki::PkiDir::new(&args.pki_dir);
    let ca = args.ca.clone().unwrap_or_else(|| pki.ca_cert());
    let cert = args.cert.clone().unwrap_or_else(|| pki.cli_cert());
    let key = args.key.clone().unwrap_or_else(|| pki.cli_key());
    let pem = ClientPem::read(&ca, &cert, &key).map_err(Failure::usage)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem.ca))
        .identity(Identity::from_pem(pem.cert, pem.key));
    let endpoint = Endpoint::from_shared(args.server.clone())
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| Failure::usage(format!("--server {}: {e}", args.server)))?
        // No request timeout: `check`, `update` and `rollout --watch` last as long as their
        // rollout; the server's own deadlines bound them.
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_failed(args, &e))?;
    // A large fleet's answers (every container of a `check`: about 300 bytes each) outgrow
    // tonic's default of 4 MiB at some 15,000 containers.
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_ANSWER))
}

/// The largest answer the CLI reads from the coordinator.
const MAX_ANSWER: usize = 512 * 1024 * 1024;

/// `hosts`.
pub async fn hosts(args: &AdminArgs) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let hosts = client
        .list_hosts(pb::ListHostsRequest {})
        .await
        .map_err(call_failed(args, "the hosts list"))?
        .into_inner()
        .hosts;
    print!("{}", render_hosts(&hosts, args.output, now_unix_ms()));
    Ok(())
}

/// `containers [--host H]`.
pub async fn containers(args: &AdminArgs, host: Option<&HostName>) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let request = pb::ListContainersRequest {
        host: host.map(ToString::to_string).unwrap_or_default(),
    };
    let containers = client
        .list_containers(request)
        .await
        .map_err(call_failed(args, "the containers list"))?
        .into_inner()
        .containers;
    let mut rows = Vec::with_capacity(containers.len());
    for c in containers {
        let info = c
            .container
            .ok_or_else(|| Failure::runtime("coordinator sent a host entry without container"))
            .and_then(|x| ContainerInfo::try_from(x).map_err(Failure::runtime))?;
        rows.push((c.host, info));
    }
    print!("{}", render_containers(&rows, args.output));
    Ok(())
}

/// `update --host H --container C [--image REF]`: exit 0 when the container runs the target
/// image, 1 with one line when it was refused or rolled back.
pub async fn update(args: &UpdateArgs) -> Result<(), Failure> {
    let (Some(host), Some(container)) = (&args.host, &args.container) else {
        return Err(Failure::usage(
            "update of one container needs --host and --container",
        ));
    };
    let mut client = connect(&args.admin).await?;
    let request = pb::UpdateRequest {
        host: host.to_string(),
        container: container.clone(),
        image: args.image.clone().unwrap_or_default(),
    };
    let response = client
        .update(request)
        .await
        .map_err(call_failed(&args.admin, "the update"))?
        .into_inner();
    let result = response.result.clone().unwrap_or_default();
    use pb::recreate_result::Status;
    let status = status_name(&result);
    match args.admin.output {
        OutputFormat::Json => print!(
            "{}",
            pretty(&[json!({
                "host": host.as_str(),
                "container": container,
                "op_id": response.op_id,
                "status": status,
                "new_id": result.new_id,
                "image_id": result.image_id,
                "failed_step": result.step,
                "reason": result.reason,
                "steps": response.steps,
                "dependants": dependants_json(&result.dependants),
            })])
        ),
        OutputFormat::Table => print!(
            "{}",
            table(
                &["HOST", "CONTAINER", "STATUS", "STEPS", "OP"],
                &[vec![
                    host.to_string(),
                    container.clone(),
                    status.to_owned(),
                    response.steps.join(","),
                    response.op_id.clone(),
                ]],
            )
        ),
    }
    match result.status() {
        Status::Updated | Status::AlreadyCurrent => {
            match result.dependants.iter().find(|d| d.action == "failed") {
                Some(d) => Err(Failure::runtime(format!(
                    "{} on {} was updated, but its dependant {} does not run again: {}",
                    container, host, d.container, d.reason
                ))),
                None => Ok(()),
            }
        }
        Status::RolledBack => Err(Failure::runtime(format!(
            "update of {} on {} failed at {}: {}; the old container was restored",
            container, host, result.step, result.reason
        ))),
        Status::RollbackFailed => Err(Failure::runtime(format!(
            "update of {} on {} failed at {} and the rollback did not complete: {}",
            container, host, result.step, result.reason
        ))),
        Status::Interrupted => Err(Failure::runtime(format!(
            "update of {} on {} was interrupted: the agent stopped at {}; nothing changed, run it again when the agent is back",
            container, host, result.step
        ))),
        _ => Err(Failure::runtime(format!(
            "update of {} on {} refused: {}",
            container, host, result.reason
        ))),
    }
}

/// `check [--dry-run]` and `updates`: exit 1 when an update was sent and did not succeed.
pub async fn check(args: &AdminArgs, dry_run: bool) -> Result<(), Failure> {
    check_scoped(args, dry_run, None, None, Scope::Check).await
}

/// What kind of cycle an admin command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `check`, `updates`: known-bad digests are skipped.
    Check,
    /// `update` of a host's or a name's containers: known-bad digests are tried too.
    Update,
    /// `retry`: their known-bad digests are forgotten first.
    Retry,
}

/// A check cycle over `host`'s and/or `container`'s containers only.
pub async fn check_scoped(
    args: &AdminArgs,
    dry_run: bool,
    host: Option<&str>,
    container: Option<&str>,
    scope: Scope,
) -> Result<(), Failure> {
    let call = if dry_run {
        "the dry-run check"
    } else {
        "the check"
    };
    let mut client = connect(args).await?;
    let response = client
        .check(pb::CheckRequest {
            dry_run,
            host: host.unwrap_or_default().to_owned(),
            container: container.unwrap_or_default().to_owned(),
            update: scope != Scope::Check,
            retry: scope == Scope::Retry,
        })
        .await
        .map_err(call_failed(args, call))?
        .into_inner();
    print_check(&response, args.output)
}

/// Prints a check's answer; fails (exit 1) when an update did not succeed.
pub fn print_check(response: &pb::CheckResponse, format: OutputFormat) -> Result<(), Failure> {
    let checked = &response.containers;
    let status = |c: &pb::ContainerCheck| c.result.as_ref().map(status_name);
    match format {
        OutputFormat::Json => {
            let items: Vec<_> = checked
                .iter()
                .map(|c| {
                    let r = c.result.clone().unwrap_or_default();
                    json!({
                        "host": c.host,
                        "container": c.container,
                        "image": c.image,
                        "decision": c.decision,
                        "reason": c.reason,
                        "target": c.target,
                        "status": status(c),
                        "failed_step": r.step,
                        "result_reason": r.reason,
                        "cleanup": r.cleanup,
                        "dependants": dependants_json(&r.dependants),
                    })
                })
                .collect();
            print!("{}", pretty(&items));
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = checked
                .iter()
                .map(|c| {
                    let cleanup = c.result.as_ref().map(|r| r.cleanup.as_str()).unwrap_or("");
                    let dependants = c
                        .result
                        .as_ref()
                        .map(|r| dependants_text(&r.dependants))
                        .unwrap_or_default();
                    let detail = match (status(c), c.decision.as_str()) {
                        // A veto says why (the hook and its first line).
                        (Some("vetoed"), _) => c
                            .result
                            .as_ref()
                            .map_or_else(String::new, |r| r.reason.clone()),
                        (Some(s), _) => [s, cleanup, &dependants]
                            .iter()
                            .filter(|p| !p.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join("; "),
                        (None, "skip") => c.reason.clone(),
                        (None, "update") => format!("would update to {}", c.target),
                        (None, _) => String::new(),
                    };
                    vec![
                        c.host.clone(),
                        c.container.clone(),
                        c.image.clone(),
                        c.decision.clone(),
                        detail,
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["HOST", "CONTAINER", "IMAGE", "DECISION", "DETAIL"], &rows)
            );
        }
    }
    // Volume prunes go to stderr, so that the JSON on stdout keeps its shape.
    for p in &response.pruned {
        if p.error.is_empty() {
            eprintln!(
                "{}: removed {} unused anonymous volume(s)",
                p.host,
                p.removed.len()
            );
        } else {
            eprintln!(
                "{}: removed {} unused anonymous volume(s); {}",
                p.host,
                p.removed.len(),
                p.error
            );
        }
    }
    let named = |wanted: &dyn Fn(&str) -> bool| -> Vec<String> {
        checked
            .iter()
            .filter(|c| status(c).is_some_and(wanted))
            .map(|c| format!("{}/{}", c.host, c.container))
            .collect()
    };
    let failed = named(&|s| {
        !matches!(
            s,
            // A veto is the operator's own hook saying no, and a container removed since the
            // plan has nothing to update: neither is a failure.
            "updated" | "already-current" | "not-started" | "cancelled" | "vetoed" | "gone"
        )
    });
    let not_started = named(&|s| matches!(s, "not-started" | "cancelled"));
    let rollout = response
        .rollout
        .as_ref()
        .map(|r| format!("rollout {} {}", r.id, r.state))
        .unwrap_or_else(|| "the rollout".to_owned());
    match (failed.is_empty(), not_started.is_empty()) {
        (true, true) => Ok(()),
        (false, true) => Err(Failure::runtime(format!(
            "{} update(s) did not succeed: {}",
            failed.len(),
            failed.join(", ")
        ))),
        (true, false) => Err(Failure::runtime(format!(
            "{} update(s) not started ({rollout}): {}",
            not_started.len(),
            not_started.join(", ")
        ))),
        (false, false) => Err(Failure::runtime(format!(
            "{} update(s) did not succeed: {}; {} not started ({rollout})",
            failed.len(),
            failed.join(", "),
            not_started.len()
        ))),
    }
}

/// `rollouts [ID]`: stored rollouts, newest first; with an id, that one's targets.
pub async fn rollouts(args: &AdminArgs, id: Option<&str>) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let rollouts = client
        .list_rollouts(pb::ListRolloutsRequest {
            id: id.unwrap_or_default().to_owned(),
            summary: id.is_none() && args.output == OutputFormat::Table, // counts only
        })
        .await
        .map_err(call_failed(args, "the rollouts list"))?
        .into_inner()
        .rollouts;
    let now = now_unix_ms();
    match (args.output, id) {
        (OutputFormat::Json, _) => {
            let items: Vec<_> = rollouts.iter().map(rollout_json).collect();
            print!("{}", pretty(&items));
        }
        (OutputFormat::Table, None) => {
            let rows: Vec<Vec<String>> = rollouts
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.state.clone(),
                        format!("{}/{}", r.targets_updated, r.targets_total),
                        age(r.created_unix_ms, now),
                        r.reason.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["ROLLOUT", "STATE", "UPDATED", "CREATED", "REASON"], &rows)
            );
        }
        (OutputFormat::Table, Some(_)) => {
            for r in &rollouts {
                println!("rollout {}: {}{}", r.id, r.state, reason_suffix(&r.reason));
                let rows: Vec<Vec<String>> = r
                    .targets
                    .iter()
                    .map(|t| {
                        vec![
                            t.host.clone(),
                            t.container.clone(),
                            t.state.clone(),
                            t.reason.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["HOST", "CONTAINER", "STATE", "REASON"], &rows)
                );
            }
        }
    }
    Ok(())
}

/// `history`: past outcomes, oldest first.
pub async fn history(
    args: &AdminArgs,
    host: Option<&str>,
    container: Option<&str>,
    since: Option<Duration>,
) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let since_unix_ms = since.map_or(0, |d| {
        now_unix_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    });
    let entries = client
        .history(pb::HistoryRequest {
            host: host.unwrap_or_default().to_owned(),
            container: container.unwrap_or_default().to_owned(),
            since_unix_ms,
        })
        .await
        .map_err(call_failed(args, "the history"))?
        .into_inner()
        .entries;
    match args.output {
        OutputFormat::Json => {
            let items: Vec<_> = entries
                .iter()
                .map(|e| {
                    json!({
                        "rollout": e.rollout,
                        "host": e.host,
                        "container": e.container,
                        "image": e.image,
                        "old_digest": e.old_digest,
                        "new_digest": e.new_digest,
                        "result": e.result,
                        "reason": e.reason,
                        "started": rfc3339_ms(e.started_unix_ms),
                        "finished": rfc3339_ms(e.finished_unix_ms),
                        "duration_ms": e.duration_ms,
                    })
                })
                .collect();
            print!("{}", pretty(&items));
        }
        OutputFormat::Table => {
            let now = now_unix_ms();
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        age(e.finished_unix_ms, now),
                        e.host.clone(),
                        e.container.clone(),
                        e.result.clone(),
                        format!("{:.1}s", e.duration_ms as f64 / 1000.0),
                        e.reason.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["FINISHED", "HOST", "CONTAINER", "RESULT", "TOOK", "REASON"],
                    &rows
                )
            );
        }
    }
    Ok(())
}

/// `resume [ID]`: updates run again after `pause`, and a paused rollout goes on.
pub async fn resume(args: &AdminArgs, id: Option<&str>) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let answer = client
        .resume_rollout(pb::ResumeRolloutRequest {
            id: id.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(call_failed(args, "resume"))?
        .into_inner();
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "was_paused": answer.was_paused,
                "rollout": answer.rollout.as_ref().map(rollout_json),
            }))
            .unwrap_or_default()
        ),
        OutputFormat::Table => {
            if answer.was_paused {
                println!("updates resumed");
            }
            if let Some(r) = &answer.rollout {
                println!("rollout {} resumed", r.id);
            }
        }
    }
    Ok(())
}

/// `pause`: no new update starts until `resume`.
pub async fn pause(args: &AdminArgs, reason: Option<&str>) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    client
        .pause(pb::PauseRequest {
            reason: reason.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(call_failed(args, "pause"))?;
    match args.output {
        OutputFormat::Json => println!("{}", json!({"paused": true})),
        OutputFormat::Table => println!("updates paused; `resume` lets them run again"),
    }
    Ok(())
}

/// `status`: the fleet at a glance.
pub async fn status(args: &AdminArgs) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(call_failed(args, "the status"))?
        .into_inner();
    print!(
        "{}",
        render_status(&s, args.output, now_unix_ms(), colour_enabled())
    );
    Ok(())
}

/// `rollout cancel ID [--revert]`: the rollout ends; its targets not started are cancelled.
pub async fn cancel(
    args: &AdminArgs,
    id: &str,
    revert: bool,
    reason: Option<&str>,
) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let r = client
        .cancel_rollout(pb::CancelRolloutRequest {
            id: id.to_owned(),
            revert,
            reason: reason.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(call_failed(args, "the cancel"))?
        .into_inner();
    match args.output {
        OutputFormat::Json => print!("{}", pretty(&[rollout_json(&r)])),
        OutputFormat::Table => {
            let count = |state: &str| r.targets.iter().filter(|t| t.state == state).count();
            println!(
                "rollout {} {}: {} cancelled, {} updated{}",
                r.id,
                r.state,
                count("cancelled"),
                count("updated"),
                if revert {
                    format!(
                        ", {} reverted or going back",
                        count("reverted") + count("reverting")
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

/// `rollout ID [--watch]`: one rollout; with `--watch`, its targets' transitions as they
/// happen (a server stream), until it ends: exit 0 when it completed, 1 otherwise.
pub async fn rollout(args: &AdminArgs, id: &str, watch: bool) -> Result<(), Failure> {
    if !watch {
        return rollouts(args, Some(id)).await;
    }
    use futures_util::StreamExt;
    use std::io::IsTerminal;
    let mut client = connect(args).await?;
    let mut stream = client
        .watch_rollout(pb::ListRolloutsRequest {
            id: id.to_owned(),
            summary: false,
        })
        .await
        .map_err(call_failed(args, "the watch"))?
        .into_inner();
    let terminal = args.output == OutputFormat::Table && std::io::stdout().is_terminal();
    let colour = colour_enabled();
    let mut printed: std::collections::BTreeSet<(String, String, String)> = Default::default();
    let mut drawn_lines = 0usize;
    let mut last: Option<pb::Rollout> = None;
    while let Some(item) = stream.next().await {
        let r = item.map_err(call_failed(args, "the watch"))?;
        match args.output {
            OutputFormat::Json => println!("{}", rollout_json(&r)),
            OutputFormat::Table if terminal => {
                // Redraw the progress display in place.
                let text = progress_display(&r, colour);
                if drawn_lines > 0 {
                    print!("\x1b[{drawn_lines}A\x1b[J");
                }
                print!("{text}");
                drawn_lines = text.lines().count();
            }
            OutputFormat::Table => {
                for t in &r.targets {
                    for line in &t.transitions {
                        let key = (t.host.clone(), t.container.clone(), line.clone());
                        if printed.insert(key) {
                            let (at, state) = line.split_once(' ').unwrap_or(("0", line));
                            let at = rfc3339_ms(at.parse().unwrap_or(0)).unwrap_or_default();
                            let reason = if state == t.state && !t.reason.is_empty() {
                                format!("  {}", t.reason)
                            } else {
                                String::new()
                            };
                            println!("{at}  {}/{}  {state}{reason}", t.host, t.container);
                        }
                    }
                }
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        last = Some(r);
    }
    let Some(r) = last else {
        return Err(Failure::runtime(format!("rollout {id}: nothing received")));
    };
    if !terminal && args.output == OutputFormat::Table {
        println!("rollout {}: {}{}", r.id, r.state, reason_suffix(&r.reason));
    }
    match r.state.as_str() {
        "completed" => Ok(()),
        "running" | "rolling-back" => Err(Failure::unreachable(format!(
            "the coordinator at {} ended the watch of rollout {} while it was still {}",
            args.server, r.id, r.state
        ))),
        other => Err(Failure::runtime(format!(
            "rollout {} {other}{}",
            r.id,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            }
        ))),
    }
}
