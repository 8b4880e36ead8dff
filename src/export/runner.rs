//! The export runner: a background task on each instance with `export.worker` on. It
//! takes a queued job (or one whose runner stopped: its lease lapsed) under a lease, and
//! works it batch by batch on a blocking thread with a database connection of its own —
//! `export.batch_size` records read, transformed and appended to the type's file, the
//! file synced, then the progress committed (while the lease is still ours), then a
//! pause of `export.batch_pause_ms`. API requests keep the pool and the async workers.
//!
//! **Resuming.** Progress is (part, last id written, lines and bytes per file). A runner
//! that takes a job over truncates each file to its committed length (dropping lines
//! written after the last commit) and continues after the committed id, so the result is
//! complete and has no duplicates. A de-identified job first recounts the k-anonymity
//! classes over the Patients (they are counts, not stored) and replays the Patients
//! already written without writing, so suppression decides as it did.
//!
//! **Memory.** One batch at a time; a de-identified job also holds the class counts and
//! the ids of suppressed patients (`deid::DeidSet`).
//!
//! **Audit.** Each batch is one `export` event on the type, with the job id and every
//! patient whose records the batch wrote (so the per-patient access report lists the
//! export); completion is one more `export` event on the job.

use super::files;
use super::source::{self, PartSpec};
use crate::audit::{
    Actor, AuditAction, AuditContext, AuthMethod, ClientId, Recorder, RoleCode, What,
};
use crate::crypto::ExportKey;
use crate::db::export_jobs::{self, Job};
use crate::deid::{DeidSet, Deidentifier, Rules};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::ResourceType;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde::{Deserialize, Serialize};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use uuid::Uuid;

/// What the runner needs besides the application state.
pub struct Engine {
    pub config: super::config::ExportConfig,
    pub key: Option<Arc<ExportKey>>,
    pub rules: Arc<Rules>,
    /// This runner's lease owner id (one per process).
    pub owner: Uuid,
}

impl Engine {
    pub fn root(&self) -> PathBuf {
        PathBuf::from(&self.config.dir)
    }

    fn lease_until(&self) -> DateTime<Utc> {
        // Leases are compared across instances: real time, not the application clock.
        Utc::now() + chrono::Duration::seconds(i64::try_from(self.config.lease_secs).unwrap_or(30))
    }
}

/// A job's committed progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The part being written (parts before it are complete).
    pub part: usize,
    /// The last record id written in that part.
    pub after: Option<Uuid>,
    /// Lines written per part.
    pub counts: Vec<u64>,
    /// Committed file length per part.
    pub bytes: Vec<u64>,
}

impl Progress {
    pub fn new(parts: usize) -> Progress {
        Progress {
            part: 0,
            after: None,
            counts: vec![0; parts],
            bytes: vec![0; parts],
        }
    }

    pub fn written(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Runs the runner loop (claim, work, sweep) for as long as the state lives.
pub fn spawn(state: Weak<AppState>, engine: Arc<Engine>) {
    tokio::spawn(async move {
        let poll = std::time::Duration::from_millis(engine.config.poll_ms);
        loop {
            tokio::time::sleep(poll).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            if let Err(e) = sweep(&state, &engine).await {
                tracing::warn!(error = %e, "export sweep not done yet");
            }
            if !engine.config.worker {
                continue;
            }
            let now = state.clock.now();
            let (owner, until) = (engine.owner, engine.lease_until());
            let claimed = state
                .db
                .run(move |c| export_jobs::claim(c, owner, now, until))
                .await;
            let job = match claimed {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "export runner cannot claim a job");
                    continue;
                }
            };
            let id = job.id;
            let alive: Arc<dyn std::any::Any + Send + Sync> = state.clone();
            let ctx = Ctx {
                db: state.db.clone(),
                keyring: state.keyring.clone(),
                audit: state.audit.clone(),
                clock: state.clock.clone(),
                alive: Arc::downgrade(&alive),
            };
            drop(alive);
            // The job holds the services it uses, not the state: when the instance shuts
            // down (the state goes), the job stops after its current batch and another
            // instance (or this one, restarted) resumes it once the lease lapses.
            drop(state);
            let e = engine.clone();
            let handle = tokio::runtime::Handle::current();
            let done = tokio::task::spawn_blocking(move || run(&ctx, &e, job, &handle)).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "export job failed"),
                Err(_) => tracing::warn!(job = %id, "export job task ended abnormally"),
            }
        }
    });
}

/// What a running job uses of the application.
pub struct Ctx {
    pub db: crate::db::Db,
    pub keyring: Arc<crate::crypto::Keyring>,
    pub audit: crate::audit::AuditWriter,
    pub clock: crate::domain::SharedClock,
    /// The process is still serving (or `custodian export` still running) while this
    /// upgrades: a weak handle on what it keeps alive while it does.
    pub alive: Weak<dyn std::any::Any + Send + Sync>,
}

/// Deletes jobs past their expiry on the application clock, and their files.
pub async fn sweep(state: &AppState, engine: &Engine) -> Result<usize, AppError> {
    let now = state.clock.now();
    let gone = state
        .db
        .run(move |c| export_jobs::delete_expired(c, now, 100))
        .await?;
    let root = engine.root();
    let n = gone.len();
    actix_web::web::block(move || {
        for id in gone {
            files::remove_job(&root, id)?;
        }
        Ok::<_, AppError>(())
    })
    .await
    .map_err(|_| AppError::internal("export sweep task was cancelled"))??;
    Ok(n)
}

/// The actor a job's events name: the requester as it was at kick-off, or the operator
/// (`custodian export`), recorded like every other command-line action.
fn actor_of(job: &Job) -> Actor {
    if AuthMethod::from_code(&job.auth_method) == Some(AuthMethod::Cli) {
        return Actor::cli();
    }
    let roles = job
        .actor_roles
        .iter()
        .filter_map(|r| RoleCode::parse(r).ok())
        .collect();
    let method = AuthMethod::from_code(&job.auth_method).unwrap_or(AuthMethod::Bearer);
    Actor {
        user_id: Some(UserId(job.requester_id)),
        client_id: job
            .actor_client_id
            .as_deref()
            .and_then(|c| ClientId::parse(c).ok()),
        roles,
        auth_method: method,
    }
}

/// Works one claimed job to its end (or until it is no longer ours).
pub fn run(
    state: &Ctx,
    engine: &Engine,
    job: Job,
    handle: &tokio::runtime::Handle,
) -> Result<(), AppError> {
    let mut conn = state.db.dedicated()?;
    let id = job.id;
    match work(state, engine, &mut conn, &job, handle) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = export_jobs::fail(&mut conn, id, "export-failed", state.clock.now());
            Err(e)
        }
    }
}

fn work(
    state: &Ctx,
    engine: &Engine,
    conn: &mut PgConnection,
    job: &Job,
    handle: &tokio::runtime::Handle,
) -> Result<(), AppError> {
    let parts: Vec<PartSpec> = serde_json::from_value(job.parts.clone())
        .map_err(|_| AppError::internal("export job parts"))?;
    let mut progress: Progress = serde_json::from_value(job.progress.clone())
        .map_err(|_| AppError::internal("export job progress"))?;
    if progress.counts.len() != parts.len() || progress.bytes.len() != parts.len() {
        return Err(AppError::internal("export job progress shape"));
    }
    let recorder = Recorder::new(state.audit.clone(), AuditContext::default(), actor_of(job))
        .with_client_app(
            job.client_app
                .as_deref()
                .and_then(|c| ClientId::parse(c).ok()),
        );
    let root = engine.root();
    std::fs::create_dir_all(files::job_dir(&root, job.id))
        .map_err(|_| AppError::internal("cannot create the export directory"))?;
    let batch = engine.config.batch_size;
    let pause = std::time::Duration::from_millis(engine.config.batch_pause_ms);
    let deid = job.kind == "de-identified";
    let key = match (deid, &engine.key) {
        (true, Some(k)) => Some(k.clone()),
        (true, None) => return Err(AppError::internal("de-identified export without a key")),
        (false, _) => None,
    };
    let as_of = job.transaction_time.date_naive();
    let k = u64::try_from(job.k).unwrap_or(1);
    let mut set = key.as_deref().map(|key| {
        DeidSet::new(
            Deidentifier::new(&engine.rules, key, as_of),
            k,
            job.suppress,
        )
    });
    // The Patients part (first, by the policy's type order) feeds the k-anonymity
    // classes: counted in full, then replayed up to where a previous runner stopped.
    if let Some(set) = set.as_mut() {
        let Some(pi) = parts.iter().position(|p| p.kind == "Patient") else {
            return Err(AppError::internal("de-identified export without Patients"));
        };
        let mut after = None;
        loop {
            let rows = source::batch(conn, &state.keyring, &parts[pi], after, batch)?;
            let Some(last) = rows.last().map(|r| r.id) else {
                break;
            };
            for r in rows
                .iter()
                .filter(|r| source::updated_since(&r.json, job.since))
            {
                set.count(&r.json, r.id);
            }
            after = Some(last);
        }
        // Replay what is already written (suppression is decided as before).
        let replay_until = if progress.part > pi {
            Some(Uuid::max())
        } else if progress.part == pi {
            progress.after
        } else {
            None
        };
        if let Some(until) = replay_until {
            let mut after = None;
            'replay: loop {
                let rows = source::batch(conn, &state.keyring, &parts[pi], after, batch)?;
                let Some(last) = rows.last().map(|r| r.id) else {
                    break;
                };
                for r in &rows {
                    if r.id > until {
                        break 'replay;
                    }
                    if source::updated_since(&r.json, job.since) {
                        let _ = set.patient(&r.json, r.id);
                    }
                }
                after = Some(last);
            }
        }
    }
    for (i, part) in parts.iter().enumerate().skip(progress.part) {
        let kind = part.resource()?;
        let path = files::part_file(&root, job.id, i, kind);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|_| AppError::internal("cannot open an export file"))?;
        // Lines written after the last committed batch (a runner that stopped) go.
        file.set_len(progress.bytes[i])
            .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(|_| AppError::internal("cannot truncate an export file"))?;
        let mut out = std::io::BufWriter::new(file);
        loop {
            let rows = source::batch(conn, &state.keyring, part, progress.after, batch)?;
            let Some(last) = rows.last().map(|r| r.id) else {
                break;
            };
            let mut patients: Vec<PatientId> = Vec::new();
            for r in rows
                .iter()
                .filter(|r| source::updated_since(&r.json, job.since))
            {
                let line = match set.as_mut() {
                    Some(set) if kind == ResourceType::Patient => set.patient(&r.json, r.id),
                    Some(set) => set.resource(kind, &r.json, r.patient.as_uuid()),
                    None => Some(r.json.clone()),
                };
                let Some(line) = line else { continue };
                if !part.write {
                    continue;
                }
                let text = serde_json::to_vec(&line)
                    .map_err(|_| AppError::internal("export line encoding"))?;
                let n = progress.counts[i];
                let written = if deid {
                    out.write_all(&text)
                } else {
                    let sealed = files::seal_line(&state.keyring, kind, job.id, n, &text)?;
                    out.write_all(sealed.as_bytes())
                };
                written
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(|_| AppError::internal("cannot write an export file"))?;
                progress.counts[i] = n + 1;
                if !patients.contains(&r.patient) {
                    patients.push(r.patient);
                }
            }
            out.flush()
                .and_then(|_| out.get_ref().sync_data())
                .map_err(|_| AppError::internal("cannot sync an export file"))?;
            progress.bytes[i] = out
                .get_ref()
                .metadata()
                .map_err(|_| AppError::internal("cannot stat an export file"))?
                .len();
            progress.after = Some(last);
            // The patients whose records left in this batch, before the batch counts as
            // done (a crash between repeats the event, never loses it).
            if !patients.is_empty() {
                let what = What::new(AuditAction::Export).on(kind).id(job.id);
                handle.block_on(recorder.permit(what, patients))?;
            }
            let value = serde_json::to_value(&progress)
                .map_err(|_| AppError::internal("export progress encoding"))?;
            if !export_jobs::advance(conn, job.id, engine.owner, &value, engine.lease_until())? {
                // Cancelled (its files are ours to remove), expired or taken over.
                if !export_jobs::exists(conn, job.id)? {
                    files::remove_job(&root, job.id)?;
                }
                return Ok(());
            }
            if state.alive.strong_count() == 0 {
                // Shutting down: the committed progress is where the next runner starts.
                return Ok(());
            }
            std::thread::sleep(pause);
        }
        progress.part = i + 1;
        progress.after = None;
    }
    let report = set
        .as_ref()
        .map(|s| serde_json::to_value(s.report()))
        .transpose()
        .map_err(|_| AppError::internal("k-anonymity report encoding"))?;
    let value = serde_json::to_value(&progress)
        .map_err(|_| AppError::internal("export progress encoding"))?;
    let now = state.clock.now();
    let expires =
        now + chrono::Duration::minutes(i64::try_from(engine.config.retain_mins).unwrap_or(1440));
    if export_jobs::complete(conn, job.id, engine.owner, &value, report, now, expires)? {
        let what = What::new(AuditAction::Export)
            .on(crate::audit::ResourceType::ExportJob)
            .id(job.id);
        handle.block_on(recorder.permit(what, []))?;
    } else if !export_jobs::exists(conn, job.id)? {
        files::remove_job(&root, job.id)?;
    }
    Ok(())
}
