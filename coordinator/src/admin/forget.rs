//! `hosts` and `hosts forget HOST`: a retired (or compromised) host leaves the fleet, and its
//! certificates are revoked.

use clap::{Args, Subcommand};
use ouroboros_proto::v1 as pb;
use ouroboros_shared::host::HostName;
use serde_json::json;

use super::args::{AdminArgs, Failure, parse_host};
use super::client::connect;
use super::failure::call_failed;
use super::output::OutputFormat;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub action: Option<HostsAction>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum HostsAction {
    /// Remove a host from the fleet: its record, inventory and enrolment go, its agent is
    /// disconnected, and its certificates are revoked (refused at the handshake from now
    /// on). The name can then enrol again with a new join token.
    Forget(ForgetArgs),
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The host (`hosts` lists them).
    #[arg(value_name = "HOST", value_parser = parse_host)]
    pub host: HostName,
}

/// `hosts forget HOST`.
pub async fn forget(args: &ForgetArgs) -> Result<(), Failure> {
    let mut client = connect(&args.admin).await?;
    let answer = client
        .forget_host(pb::ForgetHostRequest {
            host: args.host.to_string(),
        })
        .await
        .map_err(call_failed(&args.admin, "forgetting the host"))?
        .into_inner();
    match args.admin.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "host": answer.host,
                "revoked_serials": answer.revoked_serials,
                "was_connected": answer.was_connected,
            }))
            .unwrap_or_default()
        ),
        OutputFormat::Table => println!(
            "host {} forgotten{}; {} certificate(s) revoked{}",
            answer.host,
            if answer.was_connected {
                " and disconnected"
            } else {
                ""
            },
            answer.revoked_serials.len(),
            if answer.revoked_serials.is_empty() {
                String::new()
            } else {
                format!(" (serial {})", answer.revoked_serials.join(", "))
            }
        ),
    }
    Ok(())
}
