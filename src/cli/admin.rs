//! `custodian admin …`: console administration from the server itself — granting the
//! first administrator (through the same [`Op`] as the console and the JSON API), and
//! emergency accounts. Every change is audited (actor `cli`).

use super::audit::{OperatorRecorder, connect};
use crate::admin::Op;
use crate::audit::What;
use crate::audit::event::{AuditAction, ResourceType};
use crate::config::Config;
use crate::console::emergency::{AccountName, NewPassword};
use crate::console::store::emergency;
use crate::db::users::{self, UserKind};
use crate::policy::Role;
use actix_web::ResponseError;
use anyhow::{Context, bail};
use clap::Subcommand;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Grant a role to the person (issuer, subject) — e.g. `admin` to bootstrap the first
    /// console administrator. The user is created if Custodian has not seen it yet.
    Grant {
        /// The identity provider's issuer URL, exactly as in its ID tokens (console.issuer).
        #[arg(long)]
        issuer: String,
        /// The person's subject (`sub`) at that provider.
        #[arg(long)]
        subject: String,
        /// clinician, billing, patient, admin or privacy_officer.
        #[arg(long)]
        role: String,
        /// Why (kept with the assignment; 3–500 characters).
        #[arg(long)]
        reason: String,
    },
    /// Set or clear a person's family name for the same-family-name detector (kept as its
    /// blind index only; a value set here is not replaced by the provider's claim). The
    /// name is read from the first line of standard input, never from the command line.
    SetFamilyName {
        /// The identity provider's issuer URL, exactly as in its tokens.
        #[arg(long)]
        issuer: String,
        /// The person's subject (`sub`) at that provider.
        #[arg(long)]
        subject: String,
        /// Clear the family name instead of setting it (then the claim applies again).
        #[arg(long)]
        clear: bool,
        /// Why (kept in the access-change history; 3–500 characters).
        #[arg(long)]
        reason: String,
    },
    /// Create an emergency console account (admin role, for when the identity provider
    /// is down). The password (at least 15 characters) is read from --password-file or
    /// the first line of standard input, never from the command line. Prints the TOTP
    /// secret to add to an authenticator app; the first emergency sign-in confirms it.
    CreateEmergencyAccount {
        /// 1–64 of a-z 0-9 . _ - (starting with a letter or digit).
        name: String,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Disable an emergency account; its sessions end on their next request.
    DisableEmergencyAccount {
        name: String,
        /// Why (3 to 500 characters; kept in the user's access-change history).
        #[arg(long)]
        reason: String,
    },
}

/// Runs an admin command. Blocking.
pub fn run(path: Option<&Path>, cmd: AdminCommand) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    match cmd {
        AdminCommand::Grant {
            issuer,
            subject,
            role,
            reason,
        } => {
            // A person is never given the service role (that is for clients).
            let role = Role::parse(&role).filter(|r| *r != Role::Service).context(
                "--role: expected clinician, billing, patient, admin or privacy_officer",
            )?;
            crate::admin::check_reason(Some(&reason))
                .map_err(|_| anyhow::anyhow!("--reason: must have 3 to 500 characters"))?;
            if issuer.is_empty() || issuer.len() > 512 || subject.is_empty() || subject.len() > 255
            {
                bail!("--issuer and --subject: must be non-empty (at most 512 and 255 bytes)");
            }
            let mut conn = connect(&config)?;
            let user = users::user_for(&mut conn, &issuer, &subject, UserKind::Person)?;
            // The same operation as the console and the JSON API, acting for no account.
            let op = Op::GrantRole {
                user: user.id,
                role: role.as_str().to_string(),
                reason: Some(reason),
            };
            let (action, kind) = op.audit();
            let done = match op.apply(&mut conn, None, None) {
                Ok(done) => done,
                Err(e) => {
                    // Refused by the separation-of-duties rules (the only 403 here: a
                    // path to PHI for an administrator needs a second one): audited.
                    if e.status_code() == actix_web::http::StatusCode::FORBIDDEN {
                        let mut what = What::new(action);
                        if let Some(kind) = kind {
                            what = what.on(kind).id(user.id.as_uuid());
                        }
                        let reason = crate::audit::DenyReason::SeparationOfDuties;
                        OperatorRecorder::new(&config).record(
                            &mut conn,
                            what,
                            crate::audit::Outcome::Deny(reason),
                        )?;
                    }
                    return Err(e.into());
                }
            };
            let mut what = What::new(action);
            if let (Some(kind), Some(id)) = (kind, done.touched.resource_id) {
                what = what.on(kind).id(id);
            }
            OperatorRecorder::new(&config).permit(&mut conn, what)?;
            println!("granted {} to user {}", role.as_str(), user.id);
            Ok(())
        }
        AdminCommand::SetFamilyName {
            issuer,
            subject,
            clear,
            reason,
        } => {
            let mut conn = connect(&config)?;
            let Some(user) = users::find(&mut conn, &issuer, &subject)? else {
                bail!("--issuer/--subject: no such user");
            };
            let family_index = if clear {
                None
            } else {
                let keyring = crate::app::keys::load_keyring(
                    &config.crypto,
                    config.database.url.expose(),
                    config.database.connect_timeout_secs,
                )?;
                let name = read_line("family name")?;
                Some(
                    crate::admin::op::FamilyIndex::of(&keyring, &name).map_err(|_| {
                        anyhow::anyhow!(
                            "family name: 1 to 100 characters without control characters"
                        )
                    })?,
                )
            };
            // The same operation as the console and the JSON API, acting for no account.
            let op = Op::SetFamilyName {
                user: user.id,
                family_index,
                reason: Some(reason),
            };
            let (action, kind) = op.audit();
            let mut what = What::new(action);
            if let Some(kind) = kind {
                what = what.on(kind).id(user.id.as_uuid());
            }
            match op.apply(&mut conn, None, None) {
                Ok(_) => OperatorRecorder::new(&config).permit(&mut conn, what)?,
                Err(e) => {
                    OperatorRecorder::new(&config).record(
                        &mut conn,
                        what,
                        crate::audit::Outcome::Error,
                    )?;
                    return Err(e.into());
                }
            }
            println!(
                "{} the family name of user {}",
                if clear { "cleared" } else { "set" },
                user.id
            );
            Ok(())
        }
        AdminCommand::CreateEmergencyAccount {
            name,
            password_file,
        } => {
            let name = AccountName::parse(&name)
                .context("name: 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")?;
            let password = read_password(password_file.as_deref())?;
            let password =
                NewPassword::parse(password).map_err(|e| anyhow::anyhow!("password: {e}"))?;
            let hash = password.hash()?;
            let keyring = crate::app::keys::load_keyring(
                &config.crypto,
                config.database.url.expose(),
                config.database.connect_timeout_secs,
            )?;
            let mut conn = connect(&config)?;
            let created = match emergency::create(&mut conn, &keyring, &name, &hash)? {
                Ok(c) => c,
                Err(why) => bail!("{}: {why}", name.as_str()),
            };
            OperatorRecorder::new(&config).permit(
                &mut conn,
                What::new(AuditAction::EmergencyAccountChange)
                    .on(ResourceType::EmergencyAccount)
                    .id(created.account_id),
            )?;
            println!(
                "created emergency account {} (user {})",
                name.as_str(),
                created.user_id
            );
            println!(
                "TOTP secret (add to an authenticator app, then store offline with the password):"
            );
            println!("  {}", created.totp_secret_base32.as_str());
            println!("  {}", created.otpauth_uri.as_str());
            println!(
                "Sign in at /console/emergency; the first sign-in confirms the authenticator."
            );
            Ok(())
        }
        AdminCommand::DisableEmergencyAccount { name, reason } => {
            let name = AccountName::parse(&name).context("name: not a valid account name")?;
            let reason = crate::admin::check_reason(Some(&reason))
                .map_err(|_| anyhow::anyhow!("--reason: must have 3 to 500 characters"))?;
            let mut conn = connect(&config)?;
            let Some(id) =
                emergency::set_disabled(&mut conn, &name, true, &reason, chrono::Utc::now())?
            else {
                bail!("{}: no such emergency account", name.as_str());
            };
            OperatorRecorder::new(&config).permit(
                &mut conn,
                What::new(AuditAction::EmergencyAccountChange)
                    .on(ResourceType::EmergencyAccount)
                    .id(id),
            )?;
            println!("disabled emergency account {}", name.as_str());
            Ok(())
        }
    }
}

/// The first line of standard input, without its line ending (`what` for the prompt).
fn read_line(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Type the {what} and press Enter.");
    }
    stdin
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(line)
}

/// The first line of the file or of standard input, without its line ending.
fn read_password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    match file {
        Some(f) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("--password-file: cannot read {}", f.display()))?,
            );
            line.push_str(text.lines().next().unwrap_or(""));
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "Type the password (at least 15 characters) and press Enter. It is visible while typed: prefer --password-file or a pipe."
                );
            }
            stdin
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let trimmed = line.trim_end_matches(['\r', '\n']).len();
            line.truncate(trimmed);
        }
    }
    Ok(line)
}
