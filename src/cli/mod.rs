//! The command line: `custodian serve | dev | migrate | keys | admin | audit …`. Each
//! subcommand group is declared and run in its own module.

pub mod admin;
pub mod audit;
pub mod dev;
pub mod export;
pub mod keys;

use crate::app::{Application, Options};
use crate::config::Config;
use crate::{db, telemetry};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

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
    /// DEVELOPMENT ONLY: print a short-lived access token signed with the key `custodian
    /// dev` generated (refuses to run when there is none). Accepted only by `custodian dev`.
    DevToken {
        /// The token subject, e.g. dr.demo, billing.demo, admin.demo, patient.demo, po.demo.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes (they only narrow: roles come from the database).
        #[arg(long, default_value = crate::dev::token::DEFAULT_SCOPE)]
        scope: String,
        /// Lifetime in seconds (at most 8 hours).
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Add the sign-in claims of a multi-factor sign-in (auth_time, acr, amr with
        /// mfa), as break-glass requires.
        #[arg(long)]
        mfa: bool,
        /// Add auth_time this many seconds ago (with --mfa: 0 unless given), e.g. to try
        /// the step-up challenge of a stale sign-in.
        #[arg(long)]
        auth_age_secs: Option<u64>,
    },
    /// DEVELOPMENT ONLY: print the current TOTP code of a demo console person that
    /// `custodian dev` pre-enrolled (admin.demo, po.demo, emergency.demo), derived from
    /// its dev key (refuses to run when there is none). Knows no other secret.
    DevTotp {
        /// admin.demo, po.demo or emergency.demo.
        person: String,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print every configuration setting (Markdown table).
    Settings,
    /// Print the access policy: role x resource x interaction x view, then the
    /// administration rules (Markdown tables).
    Policy,
    /// Encryption keys: status and rotation.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Console administration on the server: grant the first administrator, create or
    /// disable emergency accounts.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Bulk export for operators: the `$export` job engine, rules, policy and audit,
    /// written to a directory (de-identified unless --identified).
    Export(export::ExportArgs),
    /// The audit trail: verify, export, print the checkpoint public key.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

/// The configuration file of an operator command: `--config` (or `CUSTODIAN_CONFIG`)
/// when given; otherwise, when `custodian dev` runs or ran in this folder, the effective
/// configuration it wrote there (said on stderr); otherwise none (environment only).
/// `serve` never uses a development configuration.
fn operator_config(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(given) = given {
        return Some(given.to_path_buf());
    }
    let dev = crate::dev::dev_dir().join(crate::dev::CONFIG_FILE);
    dev.is_file().then(|| {
        eprintln!(
            "using the development configuration {} (written by `custodian dev`; --config to use another)",
            dev.display()
        );
        dev
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let operator = || operator_config(cli.config.as_deref());
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
        Command::Policy => {
            print!("{}", crate::policy::matrix::markdown_table());
            print!("\n{}", crate::policy::matrix::smart_context_table());
            print!("\n{}", crate::policy::admin::markdown_table());
            print!("\n{}", crate::policy::confidentiality::markdown_table());
            print!("\n{}", crate::policy::export::markdown_table());
            print!("\n{}", crate::policy::reidentify::markdown_table());
            Ok(())
        }
        Command::DevToken {
            sub,
            scope,
            ttl_secs,
            mfa,
            auth_age_secs,
        } => {
            let auth = crate::dev::token::DevAuthentication {
                auth_age_secs: auth_age_secs.or(mfa.then_some(0)),
                mfa,
            };
            crate::dev::token::run(&crate::dev::dev_dir(), &sub, &scope, ttl_secs, auth)
        }
        Command::DevTotp { person } => {
            crate::dev::totp::run(&crate::dev::dev_dir().join("keys"), &person)
        }
        Command::Settings => {
            print!("{}", crate::config::markdown_table());
            Ok(())
        }
        Command::Keys(cmd) => {
            let config = Config::load(operator().as_deref())?;
            actix_web::web::block(move || keys::run(&config, cmd)).await?
        }
        Command::Admin(cmd) => {
            let path = operator();
            actix_web::web::block(move || admin::run(path.as_deref(), cmd)).await?
        }
        Command::Export(args) => export::run(operator().as_deref(), args).await,
        Command::Audit { command } => {
            let path = operator();
            actix_web::web::block(move || audit::run(path.as_deref(), command)).await?
        }
        Command::Migrate => {
            let config = Config::load(operator().as_deref())?;
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
