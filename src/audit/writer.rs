//! The group-commit writer: one per instance. Requests hand their event to the writer
//! and wait; the writer collects a batch, appends it to the chain in one transaction,
//! and releases every waiter only after the commit. If the commit fails or takes longer
//! than `audit.commit_timeout_ms`, the waiters get [`AppError::Unavailable`] (fail
//! closed) and, because the head moves in the same transaction, the chain does not
//! advance for events that were not stored.
//!
//! A request that changes data hands its write to the writer with its event
//! ([`AuditWriter::record_write`]): the writer runs it in the batch transaction (in a
//! savepoint of its own), so the data change and its audit event commit together or not
//! at all, and the writer stays the only code that appends to the chain.

use super::chain::{ChainKey, Checkpoint, CheckpointSigner};
use super::event::AuditEvent;
use super::store::{self, CheckpointPolicy};
use crate::audit::config::AuditConfig;
use crate::error::AppError;
use crate::error::ConfigError;
use crate::secret::Secret;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Everything the writer needs.
#[derive(Clone, Debug)]
pub struct WriterSettings {
    pub database_url: Secret<String>,
    pub connect_timeout_secs: u64,
    pub chain_key: ChainKey,
    pub signer: CheckpointSigner,
    pub checkpoint_dir: Option<PathBuf>,
    pub policy: CheckpointPolicy,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub commit_timeout: Duration,
}

impl WriterSettings {
    /// Reads the `[audit]` settings; a missing or malformed key is a [`ConfigError`].
    pub fn from_config(
        audit: &AuditConfig,
        database: &crate::db::config::DatabaseConfig,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: database.url.clone(),
            connect_timeout_secs: database.connect_timeout_secs,
            chain_key: audit.chain_key()?,
            signer: audit.signing_key()?,
            checkpoint_dir: audit
                .checkpoint_dir
                .clone()
                .filter(|d| !d.as_os_str().is_empty()),
            policy: CheckpointPolicy {
                every_events: audit.checkpoint_every_events,
                every_secs: audit.checkpoint_every_secs,
            },
            batch_max: audit.batch_max.max(1),
            batch_wait: Duration::from_millis(audit.batch_wait_ms),
            commit_timeout: Duration::from_millis(audit.commit_timeout_ms),
        })
    }
}

/// A data write to commit with its audit event. It runs in the writer's batch
/// transaction, in a savepoint; it returns whether it succeeded and may complete the event
/// (the id of a created record). On failure its savepoint is rolled back and the event is
/// recorded with outcome `error`. It must not block on anything but the database.
pub type WriteJob = Box<dyn FnOnce(&mut PgConnection, &mut AuditEvent) -> bool + Send>;

struct Pending {
    event: AuditEvent,
    write: Option<WriteJob>,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), AppError>>,
}

/// Batch statistics, for the benchmark and diagnostics.
#[derive(Debug, Default, Clone)]
pub struct WriterStats {
    pub batches: u64,
    pub events: u64,
    pub largest_batch: usize,
    pub failed_batches: u64,
}

/// The handle requests use: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Pending>,
    commit_timeout: Duration,
    stats: std::sync::Arc<std::sync::Mutex<WriterStats>>,
    /// Seals verified exports of selected events ([`super::selection`]) with the
    /// checkpoint key.
    signer: CheckpointSigner,
    /// Verifies the chain from the console ("verify now").
    chain_key: ChainKey,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditWriter")
    }
}

/// Name of the file under `audit.checkpoint_dir` that receives checkpoints.
pub const CHECKPOINT_FILE: &str = "checkpoints.jsonl";

impl AuditWriter {
    /// Starts the writer thread (with its own database connection). The thread ends
    /// when the last handle is dropped.
    pub fn start(settings: WriterSettings) -> std::io::Result<AuditWriter> {
        let capacity = settings.batch_max.saturating_mul(64).max(1024);
        let (tx, rx) = mpsc::channel(capacity);
        let stats = std::sync::Arc::new(std::sync::Mutex::new(WriterStats::default()));
        let writer = AuditWriter {
            tx,
            commit_timeout: settings.commit_timeout,
            stats: stats.clone(),
            signer: settings.signer.clone(),
            chain_key: settings.chain_key.clone(),
        };
        std::thread::Builder::new()
            .name("custodian-audit".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(WriterLoop::new(settings, rx, stats).run()),
                    Err(e) => tracing::error!(error = %e, "audit writer cannot start"),
                }
            })?;
        Ok(writer)
    }

    /// The checkpoint signer, for sealing exports of selected events.
    pub fn signer(&self) -> &CheckpointSigner {
        &self.signer
    }

    /// The chain key, for verifying the chain from the console.
    pub fn chain_key(&self) -> &ChainKey {
        &self.chain_key
    }

    /// Records `event`; returns only after the transaction holding it committed.
    /// [`AppError::Unavailable`] if it cannot be committed within the commit timeout.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AppError> {
        self.submit(event, None).await
    }

    /// Runs `write` and records `event` in one transaction: `Ok` only when both
    /// committed (whether the write itself succeeded is for `write` to report back to its
    /// caller). [`AppError::Unavailable`] when they could not be committed: then neither
    /// was.
    pub async fn record_write(&self, event: AuditEvent, write: WriteJob) -> Result<(), AppError> {
        self.submit(event, Some(write)).await
    }

    async fn submit(&self, event: AuditEvent, write: Option<WriteJob>) -> Result<(), AppError> {
        if event.action.severity() == crate::audit::event::Severity::High {
            // Ids and codes only (no PHI): lets log-based alerting page someone.
            tracing::warn!(
                event_id = %event.event_id,
                action = event.action.code(),
                outcome = event.outcome.code(),
                "high-severity audit event"
            );
        }
        let deadline = Instant::now() + self.commit_timeout;
        let (reply, done) = oneshot::channel();
        let pending = Pending {
            event,
            write,
            deadline,
            reply,
        };
        let wait = async {
            self.tx
                .send(pending)
                .await
                .map_err(|_| AppError::Unavailable)?;
            done.await.map_err(|_| AppError::Unavailable)?
        };
        let result = match tokio::time::timeout(self.commit_timeout, wait).await {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("audit event not committed within the commit timeout");
                Err(AppError::Unavailable)
            }
        };
        if result.is_err() {
            crate::monitoring::fail_closed();
        }
        result
    }

    pub fn stats(&self) -> WriterStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct WriterLoop {
    s: WriterSettings,
    rx: mpsc::Receiver<Pending>,
    conn: Option<PgConnection>,
    stats: std::sync::Arc<std::sync::Mutex<WriterStats>>,
}

impl WriterLoop {
    fn new(
        s: WriterSettings,
        rx: mpsc::Receiver<Pending>,
        stats: std::sync::Arc<std::sync::Mutex<WriterStats>>,
    ) -> Self {
        Self {
            s,
            rx,
            conn: None,
            stats,
        }
    }

    async fn run(mut self) {
        let tick = Duration::from_secs(self.s.policy.every_secs.clamp(1, 60));
        let mut next_tick = tokio::time::Instant::now() + tick;
        loop {
            let first = match tokio::time::timeout_at(next_tick, self.rx.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => {
                    next_tick = tokio::time::Instant::now() + tick;
                    self.timed_checkpoint();
                    continue;
                }
            };
            let batch = self.collect(first).await;
            self.commit(batch);
        }
    }

    async fn collect(&mut self, first: Pending) -> Vec<Pending> {
        let mut batch = Vec::with_capacity(self.s.batch_max);
        batch.push(first);
        let until = tokio::time::Instant::now() + self.s.batch_wait;
        while batch.len() < self.s.batch_max {
            match self.rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(until, self.rx.recv()).await {
                        Ok(Some(p)) => batch.push(p),
                        _ => break,
                    }
                }
            }
        }
        batch
    }

    fn connection(&mut self) -> Result<&mut PgConnection, AppError> {
        if self.conn.is_none() {
            let url = crate::db::with_connect_timeout(
                self.s.database_url.expose(),
                self.s.connect_timeout_secs,
            );
            let mut conn = PgConnection::establish(&url).map_err(|_| AppError::Unavailable)?;
            conn.batch_execute(&format!(
                "SET application_name = 'custodian-audit'; SET statement_timeout = {}",
                self.s.commit_timeout.as_millis().max(1)
            ))
            .map_err(|_| AppError::Unavailable)?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(AppError::Unavailable)
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        crate::monitoring::audit_queue_depth(self.rx.len());
        let now = Instant::now();
        // Waiters that already gave up got a 503; their events are not stored.
        let (live, _expired): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| p.deadline > now);
        if live.is_empty() {
            return;
        }
        let mut events = Vec::with_capacity(live.len());
        let mut writes = Vec::with_capacity(live.len());
        let mut replies = Vec::with_capacity(live.len());
        for p in live {
            events.push(p.event);
            writes.push(p.write);
            replies.push(p.reply);
        }
        let started = Instant::now();
        let result = self.append(&mut events, writes);
        crate::monitoring::audit_batch(events.len(), started.elapsed());
        let ok = result.is_ok();
        if let Ok(stats) = self.stats.lock().as_deref_mut() {
            stats.batches += 1;
            if ok {
                stats.events += events.len() as u64;
            } else {
                stats.failed_batches += 1;
            }
            stats.largest_batch = stats.largest_batch.max(events.len());
        }
        match result {
            Ok(checkpoint) => {
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
                if let Some(cp) = checkpoint {
                    self.write_checkpoint_file(&cp);
                }
            }
            Err(()) => {
                for reply in replies {
                    let _ = reply.send(Err(AppError::Unavailable));
                }
            }
        }
    }

    fn append(
        &mut self,
        events: &mut [AuditEvent],
        writes: Vec<Option<WriteJob>>,
    ) -> Result<Option<Checkpoint>, ()> {
        let key = self.s.chain_key.clone();
        let signer = self.s.signer.clone();
        let policy = self.s.policy;
        let conn = self.connection().map_err(|_| {
            tracing::error!("audit writer cannot connect to the database");
        })?;
        let result = conn.transaction(|conn| {
            // The writes first, the chain head (locked until commit) last: the head lock,
            // which serialises every instance, is held as briefly as before.
            for (event, write) in events.iter_mut().zip(writes) {
                if let Some(write) = write {
                    run_write(conn, event, write)?;
                }
            }
            store::append_batch(conn, &key, &signer, policy, events)
        });
        match result {
            Ok(appended) => Ok(appended.checkpoint),
            Err(e) => {
                // The database message names tables and constraints, never event values.
                tracing::error!(error = %e, count = events.len(), "audit batch not committed");
                // Start over with a fresh connection: it may be broken.
                self.conn = None;
                Err(())
            }
        }
    }

    fn timed_checkpoint(&mut self) {
        let signer = self.s.signer.clone();
        let policy = self.s.policy;
        let Ok(conn) = self.connection() else {
            return;
        };
        match store::checkpoint_if_due(conn, &signer, policy) {
            Ok(Some(cp)) => self.write_checkpoint_file(&cp),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint not written");
                self.conn = None;
            }
        }
    }

    fn write_checkpoint_file(&self, cp: &Checkpoint) {
        let Some(dir) = &self.s.checkpoint_dir else {
            return;
        };
        if let Err(e) = append_checkpoint_line(dir, cp) {
            tracing::error!(error = %e, checkpoint = cp.checkpoint, "cannot append the audit checkpoint file");
        } else {
            tracing::info!(
                checkpoint = cp.checkpoint,
                seq = cp.seq,
                "audit checkpoint written"
            );
        }
    }
}

/// Runs one write in a savepoint of the batch transaction. A write that fails (or
/// panics: it must not take the writer down) is rolled back to its savepoint and its event
/// becomes an error; the batch goes on. Only a failing savepoint itself fails the batch.
fn run_write(conn: &mut PgConnection, event: &mut AuditEvent, write: WriteJob) -> QueryResult<()> {
    let saved = conn.transaction(|conn| {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(conn, event)))
            .unwrap_or_else(|_| {
                tracing::error!("a data write panicked in the audit writer");
                false
            });
        if ok {
            Ok(())
        } else {
            Err(diesel::result::Error::RollbackTransaction)
        }
    });
    match saved {
        Ok(()) => Ok(()),
        Err(diesel::result::Error::RollbackTransaction) => {
            event.outcome = super::event::Outcome::Error;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Appends one JSON line to `<dir>/checkpoints.jsonl` and syncs it.
pub fn append_checkpoint_line(dir: &std::path::Path, cp: &Checkpoint) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut line = serde_json::to_string(cp).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(CHECKPOINT_FILE))?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}
