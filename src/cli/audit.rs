//! `custodian audit verify | export | public-key`.

use crate::audit::chain::{self, ChainKey};
use crate::audit::config::AuditConfig;
use crate::audit::event::{Actor, AuditAction, Outcome, ResourceType};
use crate::audit::{EventBuilder, What, ops, store, verify, writer};
use crate::config::Config;
use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use diesel::prelude::*;
use ed25519_dalek::VerifyingKey;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain and the signed checkpoints (the database, or an export
    /// file offline). Prints one verdict line; exit code 0 only when the chain is intact.
    Verify {
        /// Verify this export file offline instead of the database.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Checkpoint public key (base64, from `custodian audit public-key`); default:
        /// derived from audit.checkpoint_signing_key.
        #[arg(long)]
        public_key: Option<String>,
        /// Checkpoint file (JSON lines); default: checkpoints.jsonl in
        /// audit.checkpoint_dir when it exists.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Export the events of a time range (and the checkpoints within it) as JSON lines.
    Export {
        /// Start (inclusive): RFC 3339 time or YYYY-MM-DD (UTC).
        #[arg(long)]
        since: Option<String>,
        /// End (exclusive): RFC 3339 time or YYYY-MM-DD (UTC).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the checkpoint public key (base64) and its key id.
    PublicKey,
}

fn parse_time(setting: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .with_context(|| format!("{setting}: expected an RFC 3339 time or YYYY-MM-DD"))
}

fn public_key(audit: &AuditConfig, given: Option<&str>) -> anyhow::Result<VerifyingKey> {
    match given {
        Some(text) => chain::decode_public_key(text).context(
            "--public-key: expected the base64 Ed25519 key printed by `custodian audit public-key`",
        ),
        None => Ok(audit.signing_key()?.public_key()),
    }
}

fn checkpoint_file(audit: &AuditConfig, given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        audit
            .checkpoint_dir
            .as_ref()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.join(writer::CHECKPOINT_FILE))
            .filter(|f| f.is_file())
    })
}

pub fn connect(config: &Config) -> anyhow::Result<PgConnection> {
    let url = crate::db::with_connect_timeout(
        config.database.url.expose(),
        config.database.connect_timeout_secs,
    );
    PgConnection::establish(&url).context("database.url: cannot connect to PostgreSQL")
}

/// The recorder of an operator command: events say *what* happened with the same typed
/// [`What`] as the API's and the console's [`crate::audit::Recorder`], the operator
/// ([`Actor::cli`]) is the actor, and each event is appended to the chain directly through
/// the one append path (`audit::store::append_batch`): a command has no writer task.
pub struct OperatorRecorder<'a> {
    config: &'a Config,
}

impl<'a> OperatorRecorder<'a> {
    pub fn new(config: &'a Config) -> Self {
        Self { config }
    }

    /// Records a permitted operator action. Blocking.
    pub fn permit(&self, conn: &mut PgConnection, what: What) -> anyhow::Result<()> {
        self.record(conn, what, Outcome::Permit)
    }

    /// Records an operator action with its outcome (e.g. a refused one). Blocking.
    pub fn record(
        &self,
        conn: &mut PgConnection,
        what: What,
        outcome: Outcome,
    ) -> anyhow::Result<()> {
        let mut event = EventBuilder::new(Actor::cli(), what.action, outcome);
        match (what.kind, what.id) {
            (Some(kind), Some(id)) => event = event.resource(kind, id),
            (Some(kind), None) => event = event.resource_type(kind),
            _ => {}
        }
        let audit = &self.config.audit;
        let policy = store::CheckpointPolicy {
            every_events: audit.checkpoint_every_events,
            every_secs: audit.checkpoint_every_secs,
        };
        store::append_batch(
            conn,
            &audit.chain_key()?,
            &audit.signing_key()?,
            policy,
            &[event.build()],
        )?;
        Ok(())
    }
}

/// Runs an audit command. Blocking.
pub fn run(path: Option<&Path>, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::PublicKey => {
            let audit = Config::load_audit(path)?;
            let public = audit.signing_key()?.public_key();
            println!("{}", chain::encode_public_key(&public));
            eprintln!("key id {}", chain::key_id(&public));
            Ok(())
        }
        AuditCommand::Verify {
            file,
            public_key: given,
            checkpoints,
        } => {
            let audit = Config::load_audit(path)?;
            let key: ChainKey = audit.chain_key()?;
            let public = public_key(&audit, given.as_deref())?;
            let extra = match checkpoint_file(&audit, checkpoints) {
                Some(f) => verify::read_checkpoint_file(&f)?,
                None => Vec::new(),
            };
            let started = std::time::Instant::now();
            let progress = |n: u64| {
                if n > 0 && n % 500_000 < 10_000 {
                    eprintln!("verified {n} events …");
                }
            };
            let (verdict, conn) = match file {
                Some(file) => (
                    ops::verify_export(&file, key, public, extra, progress)?,
                    None,
                ),
                None => {
                    let config = Config::load(path)?;
                    let mut conn = connect(&config)?;
                    let verdict = ops::verify_database(&mut conn, key, public, extra, progress)?;
                    (verdict, Some(conn))
                }
            };
            match verdict {
                Ok(ok) => {
                    eprintln!("verified in {:.1} s", started.elapsed().as_secs_f64());
                    println!("{ok}");
                    Ok(())
                }
                Err(failure) => {
                    println!("{failure}");
                    // The database's own trail failed: tell the webhook endpoints.
                    if let Some(mut conn) = conn {
                        let message = crate::db::webhooks::NewMessage::verification_failed(
                            None,
                            failure.seq,
                            chrono::Utc::now(),
                        );
                        if let Err(e) = crate::db::webhooks::enqueue(&mut conn, &[message]) {
                            eprintln!("cannot queue the webhook message of this failure: {e}");
                        }
                    }
                    anyhow::bail!("the audit trail failed verification")
                }
            }
        }
        AuditCommand::Export {
            since,
            until,
            output,
        } => {
            let since = since.map(|s| parse_time("--since", &s)).transpose()?;
            let until = until.map(|s| parse_time("--until", &s)).transpose()?;
            let config = Config::load(path)?;
            // Fail on bad audit keys before touching the database.
            config.audit.chain_key()?;
            config.audit.signing_key()?;
            let mut conn = connect(&config)?;
            // The export itself is audited, before any data leaves the database.
            OperatorRecorder::new(&config)
                .permit(
                    &mut conn,
                    What::new(AuditAction::AuditExport).on(ResourceType::AuditLog),
                )
                .context("cannot record the audit-export event")?;
            let file = std::fs::File::create(&output)
                .with_context(|| format!("--output: cannot create {}", output.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let header = ops::export(&mut conn, since, until, &mut out)?;
            println!(
                "exported {} events (sequence {}..={}) to {}",
                header.count,
                header.first_seq,
                header.last_seq,
                output.display()
            );
            Ok(())
        }
    }
}
