//! The `ouroboros-coordinator` command line: [`args`] (clap types and value checks),
//! [`config`] (the options of `serve` and `up` into a typed configuration), [`rotate`] (`pki
//! rotate-server`, `pki rotate-cli`), [`serve`] (the server: store, gRPC, schedule, metrics
//! endpoint, run-once), [`up`] (all in one for a single host) and [`healthcheck`] (the image's
//! HEALTHCHECK); here, the dispatch of each
//! command.

pub mod args;
pub mod config;
pub mod healthcheck;
pub mod rotate;
pub mod serve;
pub mod up;

use ouroboros_shared::host::HostName;
use ouroboros_shared::pki::{self, PkiDir};

pub use self::args::*;
pub use crate::admin::args::{EXIT_ADMIN_USAGE, EXIT_UNREACHABLE, Failure};
use crate::admin::client as admin_client;

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Pki(PkiCommand::Init { dir, sans }) => {
            let pki = PkiDir::new(dir);
            let written = pki::init(&pki, &sans).map_err(Failure::usage)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            println!(
                "Next: issue one certificate per host with `ouroboros-coordinator pki issue --dir {} --agent HOST`.",
                pki.dir().display()
            );
            Ok(())
        }
        Command::Pki(PkiCommand::RotateServer { dir, sans, days }) => {
            print_rotated(rotate::rotate(
                &PkiDir::new(dir),
                rotate::Rotated::Server,
                &sans,
                days,
            )?);
            println!("Restart `serve` to use the new certificate.");
            Ok(())
        }
        Command::Pki(PkiCommand::RotateCli { dir, days }) => {
            print_rotated(rotate::rotate(
                &PkiDir::new(dir),
                rotate::Rotated::Cli,
                &[],
                days,
            )?);
            Ok(())
        }
        Command::Pki(PkiCommand::Issue { dir, agent, days }) => {
            let pki = PkiDir::new(dir);
            let written = pki::issue_agent(&pki, &agent, days).map_err(Failure::usage)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Serve(args) => serve::serve_command(args).await,
        Command::Up(args) => crate::cli::up::up(args).await,
        Command::Hosts(args) => match &args.action {
            Some(crate::admin::forget::HostsAction::Forget(forget)) => {
                crate::admin::forget::forget(forget).await
            }
            None => admin_client::hosts(&args.admin).await,
        },
        Command::Token(command) => crate::admin::tokens::run(command).await,
        Command::Containers(args) => {
            admin_client::containers(&args.admin, args.host.as_ref()).await
        }
        Command::Update(args) => match (&args.host, &args.container) {
            // One container: recreated now, on its tag's current image or on --image.
            (Some(_), Some(_)) => admin_client::update(&args).await,
            // A host's or a name's containers: a cycle over them, updating what moved.
            (host, container) => {
                admin_client::check_scoped(
                    &args.admin,
                    false,
                    host.as_ref().map(HostName::as_str),
                    container.as_deref(),
                    admin_client::Scope::Update,
                )
                .await
            }
        },
        Command::Check(args) => admin_client::check(&args.admin, args.dry_run).await,
        Command::Updates(args) => admin_client::check(&args, true).await,
        Command::Rollouts(args) => admin_client::rollouts(&args.admin, args.id.as_deref()).await,
        Command::History(args) => {
            admin_client::history(
                &args.admin,
                args.host.as_ref().map(HostName::as_str),
                args.container.as_deref(),
                args.since,
            )
            .await
        }
        Command::Resume(args) => admin_client::resume(&args.admin, args.id.as_deref()).await,
        Command::Status(args) => admin_client::status(&args).await,
        Command::Pause(args) => admin_client::pause(&args.admin, args.reason.as_deref()).await,
        Command::Rollout(args) => match (args.action, args.id) {
            (Some(RolloutAction::Cancel(c)), _) => {
                admin_client::cancel(&c.admin, &c.id, c.revert, c.reason.as_deref()).await
            }
            (None, Some(id)) => admin_client::rollout(&args.admin, &id, args.watch).await,
            (None, None) => Err(Failure {
                code: EXIT_ADMIN_USAGE,
                message: "rollout: give a rollout id (see `rollouts`), or `rollout cancel ID`"
                    .into(),
            }),
        },
        Command::Retry(args) => {
            admin_client::check_scoped(
                &args.admin,
                false,
                args.host.as_ref().map(HostName::as_str),
                args.container.as_deref(),
                admin_client::Scope::Retry,
            )
            .await
        }
        Command::Healthcheck(args) => healthcheck::healthcheck(&args).await,
        Command::SelfRecreate(args) => self_recreate(&args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "ouroboros-coordinator",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// What a `pki rotate-*` command wrote.
fn print_rotated(written: Vec<std::path::PathBuf>) {
    for path in written {
        println!(
            "wrote {} (previous one kept as {})",
            path.display(),
            rotate::backup_path(&path).display()
        );
    }
}

/// `self-recreate`: the updater container's run (see `ouroboros_agent::updater`); exits 0 when
/// the container runs the new image, 1 otherwise.
async fn self_recreate(args: &args::SelfRecreateArgs) -> Result<(), Failure> {
    let docker = ouroboros_agent::engine::DockerEndpoint::new(&args.docker_host, false, None)
        .map_err(|e| Failure::usage(format!("--docker-host: {e}")))?;
    let outcome = ouroboros_agent::updater::run(
        &docker,
        &args.journal_dir,
        &args.container,
        &args.image,
        &args.op,
    )
    .await
    .map_err(Failure::runtime)?;
    tracing::info!(?outcome, op = %args.op, "Self-recreate finished.");
    match outcome {
        ouroboros_agent::recreate::journal::Outcome::Updated { .. } => Ok(()),
        other => Err(Failure::runtime(format!("{other:?}"))),
    }
}
