//! The command line: `custodian serve | dev | migrate | audit …`.

use crate::config::Config;
use crate::startup::{Application, Options};
use crate::{db, dev, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "custodian",
    version,
    about = "Keeps protected health information safe and usable"
)]
pub struct Cli {
    /// Configuration file (TOML); CUSTODIAN_* environment variables override it.
    #[arg(long, global = true, env = "CUSTODIAN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve HTTPS in production (certificates and database from configuration).
    Serve,
    /// Run locally with a private PostgreSQL cluster and a self-signed certificate.
    Dev,
    /// Apply pending database migrations and exit.
    Migrate,
    /// The audit trail: verify, export, print the checkpoint public key.
    Audit {
        #[command(subcommand)]
        command: crate::audit::command::AuditCommand,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.config.as_deref();
    match cli.command {
        Command::Serve => {
            let config = Config::load(path)?;
            telemetry::init(&config.log);
            let app = Application::build(config, Options::default()).await?;
            tracing::info!(https = %app.https_addr(), http = ?app.http_addr(), "serving");
            app.run().await?;
            Ok(())
        }
        Command::Dev => dev::run(path).await,
        Command::Audit { command } => {
            let path = path.map(PathBuf::from);
            actix_web::web::block(move || crate::audit::command::run(path.as_deref(), command))
                .await?
        }
        Command::Migrate => {
            let config = Config::load(path)?;
            let url = config.database.url.clone();
            let timeout = config.database.connect_timeout_secs;
            let applied =
                actix_web::web::block(move || db::migrate(url.expose(), timeout)).await??;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                println!(
                    "applied {} migration(s): {}",
                    applied.len(),
                    applied.join(", ")
                );
            }
            Ok(())
        }
    }
}
