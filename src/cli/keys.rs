//! `custodian keys status | rotate [--kek] | seal-claims | index-names`: operator commands over
//! [`crate::crypto`].
//! Progress goes to stderr, results to stdout.

use crate::config::Config;
use crate::crypto::rotation::{self, RotateOptions};
use crate::crypto::{KeyProvider, LocalKek};
use crate::db::webhooks::{KeyRotation, NewMessage};
use anyhow::Context;
use clap::Subcommand;
use diesel::{Connection, PgConnection};
use std::io::Write;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Data-key versions, their state, and how many rows and values each still protects.
    Status,
    /// Rotate: a new data key for new writes, then re-encrypt existing rows in batches
    /// (resumable: run again after an interruption). With --kek: re-wrap the data keys
    /// under crypto.rotation_kek instead, without touching data rows.
    Rotate {
        /// Re-wrap the data keys under crypto.rotation_kek (then make it crypto.kek).
        #[arg(long)]
        kek: bool,
        /// Rows per batch; each batch is one transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        /// Stop after this many batches (run again to continue).
        #[arg(long)]
        max_batches: Option<u64>,
    },
    /// Seal claims stored in clear by a version before claims were sealed (the upgrade
    /// migration set them aside in `claims_unsealed`; they are not served until sealed).
    /// Run once after upgrading; a no-op when nothing is left.
    SealClaims,
    /// Compute the starts-with and `:contains` name indexes (blind indexes of name
    /// prefixes and word substrings) of patients written before they existed (migrations
    /// 2026-12-03-000400 and 2026-12-06-000310); until then those searches do not find
    /// those patients. Run once after upgrading; resumable, and a no-op when nothing is
    /// left.
    IndexNames,
}

pub fn run(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let keyring = crate::app::keys::load_keyring(
        &config.crypto,
        config.database.url.expose(),
        config.database.connect_timeout_secs,
    )?;
    let mut conn = PgConnection::establish(&crate::db::with_connect_timeout(
        config.database.url.expose(),
        config.database.connect_timeout_secs,
    ))
    .context("database.url: cannot connect to PostgreSQL")?;
    match cmd {
        KeysCommand::Status => print_status(&mut conn),
        KeysCommand::SealClaims => {
            let sealed = crate::db::claims::seal_unsealed(&mut conn, &keyring)
                .context("cannot seal the claims stored in clear")?;
            println!("sealed {sealed} claim(s) stored in clear; none is left in clear");
            Ok(())
        }
        KeysCommand::IndexNames => {
            let n = crate::db::patients::index_name_prefixes(&mut conn, &keyring)
                .context("cannot compute the name prefix and substring indexes")?;
            println!(
                "indexed the name prefixes and substrings of {n} patient(s); none is left unindexed"
            );
            Ok(())
        }
        KeysCommand::Rotate { kek: true, .. } => {
            let new = config
                .crypto
                .rotation_kek
                .as_ref()
                .filter(|s| !s.expose().trim().is_empty())
                .context("crypto.rotation_kek: is required for `keys rotate --kek` (the new key-encryption key)")?;
            let new = LocalKek::from_base64("crypto.rotation_kek", new.expose())
                .map_err(crate::app::keys::config_error)?;
            let n =
                rotation::rotate_kek_with(&mut conn, &keyring, &new, &mut queue_rotation_message)
                    .map_err(crate::app::keys::config_error)?;
            println!(
                "re-wrapped {n} data key(s) under KEK {}; now set crypto.kek to the value of crypto.rotation_kek on every instance and remove crypto.rotation_kek",
                new.key_id()
            );
            print_status(&mut conn)
        }
        KeysCommand::Rotate {
            kek: false,
            batch_size,
            max_batches,
        } => {
            let mut stderr = std::io::stderr();
            let report = rotation::rotate_data_keys_with(
                &mut conn,
                &keyring,
                RotateOptions {
                    batch_size,
                    max_batches,
                },
                &mut |p| {
                    let _ = writeln!(
                        stderr,
                        "re-encrypting {}: {}/{} rows -> key version {}",
                        p.table, p.done, p.total, p.active_version
                    );
                },
                &mut queue_rotation_message,
            )
            .map_err(crate::app::keys::config_error)?;
            if report.started_new_version {
                println!(
                    "data key version {} is now active for new writes",
                    report.active_version
                );
            } else {
                println!(
                    "resumed the rotation to data key version {}",
                    report.active_version
                );
            }
            println!("re-encrypted {} row(s)", report.rows_reencrypted);
            for v in &report.retired {
                println!("retired data key version {v}");
            }
            if !report.complete {
                println!(
                    "rotation not finished: rows still use older key versions; run `custodian keys rotate` again"
                );
            }
            print_status(&mut conn)
        }
    }
}

/// Puts a rotation's webhook message in the outbox, inside the rotation's transaction
/// (the rotation lives in `crypto`, below the outbox's module, and calls this back): a
/// committed rotation always has its message, a rolled-back one has none, and a message
/// that cannot be written rolls the rotation back.
fn queue_rotation_message(
    conn: &mut PgConnection,
    what: rotation::Rotated,
) -> Result<(), crate::crypto::CryptoError> {
    let what = match what {
        rotation::Rotated::DataKey { version } => KeyRotation::DataKey { version },
        rotation::Rotated::Kek { rewrapped } => KeyRotation::Kek { rewrapped },
    };
    let message = NewMessage::key_rotation(what, chrono::Utc::now());
    crate::db::webhooks::enqueue(conn, &[message])
        .map(|_| ())
        .map_err(|_| {
            crate::crypto::CryptoError::Internal(
                "cannot queue the webhook message of this rotation (the rotation was rolled back)",
            )
        })
}

fn print_status(conn: &mut PgConnection) -> anyhow::Result<()> {
    let status = rotation::key_status(conn).map_err(crate::app::keys::config_error)?;
    println!(
        "{:>7}  {:<12}  {:>10}  {:>10}  {:<22}  tables",
        "version", "state", "rows", "values", "kek"
    );
    for k in status {
        let tables = k
            .tables
            .iter()
            .map(|(t, r, v)| format!("{t}={r}/{v}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:>7}  {:<12}  {:>10}  {:>10}  {:<22}  {}",
            k.version, k.state, k.rows, k.values, k.kek_id, tables
        );
    }
    Ok(())
}
