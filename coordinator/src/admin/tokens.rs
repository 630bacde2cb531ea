//! `token create|list|revoke`: join tokens for enrolling hosts (`ouroboros-agent --join`).

use std::time::Duration;

use clap::{Args, Subcommand};
use ouroboros_proto::v1 as pb;
use ouroboros_shared::time_fmt::{now_unix_ms, rfc3339_ms};
use serde_json::json;

use super::args::{AdminArgs, Failure};
use super::client::connect;
use super::failure::call_failed;
use super::output::{OutputFormat, table};
use super::render::pretty;

/// Longest validity of a join token.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most enrolments one token allows.
const MAX_USES: u32 = 10_000;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token; its last line of output is the token, for `ouroboros-agent --join`.
    Create(TokenCreateArgs),
    /// List join tokens: id, expiry, uses left, revoked (never the secret).
    List(AdminArgs),
    /// Revoke a join token: it enrols nobody any more.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How long the token is valid, e.g. 30m, 1h, 2d (at most 30 days).
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// How many hosts it may enrol (1 to 10000).
    #[arg(long, default_value = "1", value_name = "N", value_parser = parse_uses)]
    pub uses: u32,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The token's id (`token list`).
    #[arg(value_name = "ID")]
    pub id: String,
}

pub fn parse_ttl(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= Duration::from_secs(1) && d <= MAX_TTL => Ok(d),
        _ => Err(format!(
            "{value:?} is not a duration from 1s to 30d (e.g. 30m, 1h, 2d)"
        )),
    }
}

pub fn parse_uses(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_USES).contains(&n) => Ok(n),
        _ => Err(format!(
            "{value:?} is not a number of uses from 1 to {MAX_USES}"
        )),
    }
}

fn info_json(t: &pb::JoinTokenInfo) -> serde_json::Value {
    json!({
        "id": t.id,
        "created": rfc3339_ms(t.created_unix_ms),
        "expires": rfc3339_ms(t.expires_unix_ms),
        "uses_left": t.uses_left,
        "revoked": t.revoked,
        "hosts": t.hosts,
    })
}

fn state(t: &pb::JoinTokenInfo, now: i64) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.expires_unix_ms <= now {
        "expired"
    } else if t.uses_left == 0 {
        "used"
    } else {
        "valid"
    }
}

/// Runs a `token` command.
pub async fn run(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => create(&args).await,
        TokenCommand::List(args) => list(&args).await,
        TokenCommand::Revoke(args) => revoke(&args.admin, &args.id).await,
    }
}

async fn create(args: &TokenCreateArgs) -> Result<(), Failure> {
    let mut client = connect(&args.admin).await?;
    let answer = client
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: args.ttl.as_secs(),
            uses: args.uses,
        })
        .await
        .map_err(call_failed(&args.admin, "the join token"))?
        .into_inner();
    let info = answer.info.unwrap_or_default();
    match args.admin.output {
        OutputFormat::Json => {
            let mut value = info_json(&info);
            value["token"] = json!(answer.token);
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
        OutputFormat::Table => {
            println!(
                "join token {} valid until {} for {} host(s); on the new host run:",
                info.id,
                rfc3339_ms(info.expires_unix_ms).unwrap_or_default(),
                info.uses_left
            );
            println!(
                "  ouroboros-agent --coordinator {} --join TOKEN",
                args.admin.server
            );
            println!("{}", answer.token);
        }
    }
    Ok(())
}

async fn list(args: &AdminArgs) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let tokens = client
        .list_join_tokens(pb::ListJoinTokensRequest {})
        .await
        .map_err(call_failed(args, "the join tokens"))?
        .into_inner()
        .tokens;
    match args.output {
        OutputFormat::Json => {
            print!(
                "{}",
                pretty(&tokens.iter().map(info_json).collect::<Vec<_>>())
            );
        }
        OutputFormat::Table => {
            let now = now_unix_ms();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        rfc3339_ms(t.expires_unix_ms).unwrap_or_default(),
                        t.uses_left.to_string(),
                        if t.revoked { "yes" } else { "no" }.to_owned(),
                        state(t, now).to_owned(),
                        t.hosts.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["ID", "EXPIRES", "USES LEFT", "REVOKED", "STATE", "HOSTS"],
                    &rows
                )
            );
        }
    }
    Ok(())
}

async fn revoke(args: &AdminArgs, id: &str) -> Result<(), Failure> {
    let mut client = connect(args).await?;
    let t = client
        .revoke_join_token(pb::RevokeJoinTokenRequest { id: id.to_owned() })
        .await
        .map_err(call_failed(args, "the revocation"))?
        .into_inner();
    match args.output {
        OutputFormat::Json => println!("{}", info_json(&t)),
        OutputFormat::Table => println!("join token {} revoked", t.id),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_uses_are_bounded() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2s"), Ok(Duration::from_secs(2)));
        for bad in ["0s", "", "1 fortnight", "31d", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_uses("3"), Ok(3));
        for bad in ["0", "-1", "x", "10001"] {
            assert!(parse_uses(bad).is_err(), "{bad}");
        }
    }
}
