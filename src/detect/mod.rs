//! Detection: the privacy detectors over the audit trail and their runner.
//!
//! The runner consumes `audit_events` in sequence order from a cursor stored in
//! PostgreSQL (`detector_cursor`). One pass is one transaction: take the transaction-level
//! advisory lock [`LOCK_KEY`] (another instance holding it makes this one skip the pass,
//! so exactly one runner works at a time across instances), lock the cursor row, read at
//! most `detect.batch_max` events after it, run the detectors ([`rules`]), insert their
//! alerts (`db::alerts::raise_all`, idempotent by `dedup_key`) and move the cursor. A
//! crash before the commit loses the alerts *and* the cursor move, so the next pass redoes
//! the batch: no event is skipped, none alerts twice.
//!
//! The windowed detectors keep their counts in memory. A runner whose counts do not
//! belong to the cursor it finds (first pass, or another instance ran meanwhile) rebuilds
//! them by replaying the longest window of events before the cursor, alerts discarded.

pub mod config;
pub mod facts;
pub mod rules;

use crate::db::Db;
use crate::db::alerts::{self, AlertKind, NewAlert};
use crate::domain::{GrantId, PatientId, SharedClock, UserId};
use crate::error::AppError;
use crate::schema::{audit_chain_head, audit_events, detector_cursor};
use chrono::{DateTime, Duration, Utc};
use config::DetectConfig;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rules::{Event, Windows};

/// Key of the transaction-level advisory lock held by the one working runner.
pub const LOCK_KEY: i64 = 0x4355_5354_4445_5443; // "CUSTDETC"

/// Most events replayed to rebuild the windows' counts.
const MAX_REPLAY: i64 = 200_000;

diesel::define_sql_function! {
    fn pg_try_advisory_xact_lock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool;
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// False when another runner held the lock (nothing was read).
    pub ran: bool,
    pub consumed: usize,
    /// Kinds of the alerts newly inserted.
    pub raised: Vec<AlertKind>,
    /// The cursor after the pass, and the chain head it was read against.
    pub cursor: i64,
    pub head: i64,
}

/// The detectors' runner state of one instance.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    windows: Windows,
    /// The cursor the windows' counts belong to.
    through: Option<i64>,
    last_overdue_check: Option<DateTime<Utc>>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            cfg,
            windows: Windows::default(),
            through: None,
            last_overdue_check: None,
        }
    }

    /// One pass (see the module documentation). `now` dates the overdue-review check.
    pub fn pass(&mut self, conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Pass, AppError> {
        // Counts changed inside a transaction that then fails do not belong to any
        // cursor: forget whose they are until the commit.
        let through = self.through.take();
        let result = conn.transaction(|c| {
            let locked: bool = diesel::select(pg_try_advisory_xact_lock(LOCK_KEY)).get_result(c)?;
            if !locked {
                return Ok::<_, AppError>((Pass::default(), through));
            }
            let cursor: i64 = detector_cursor::table
                .select(detector_cursor::seq)
                .for_update()
                .first(c)?;
            if through != Some(cursor) {
                self.rebuild(c, cursor)?;
            }
            let events: Vec<Event> = audit_events::table
                .filter(audit_events::seq.gt(cursor))
                .order(audit_events::seq)
                .limit(self.cfg.batch_max)
                .select(Event::as_select())
                .load(c)?;
            let facts = facts::load(c, &events)?;
            let mut new = rules::run(&self.cfg, &facts, &mut self.windows, &events);
            if self
                .last_overdue_check
                .is_none_or(|t| now - t >= Duration::seconds(60))
            {
                new.extend(overdue_reviews(c, now)?);
            }
            let raised = alerts::raise_all(c, &new)?;
            let next = events.last().map_or(cursor, |e| e.seq);
            if next != cursor {
                diesel::update(detector_cursor::table)
                    .set((
                        detector_cursor::seq.eq(next),
                        detector_cursor::updated_at.eq(now),
                    ))
                    .execute(c)?;
            }
            let head: i64 = audit_chain_head::table
                .select(audit_chain_head::seq)
                .first(c)?;
            Ok((
                Pass {
                    ran: true,
                    consumed: events.len(),
                    raised,
                    cursor: next,
                    head,
                },
                Some(next),
            ))
        });
        let (pass, through) = result?;
        self.through = through;
        if pass.ran
            && self
                .last_overdue_check
                .is_none_or(|t| now - t >= Duration::seconds(60))
        {
            self.last_overdue_check = Some(now);
        }
        Ok(pass)
    }

    /// Rebuilds the windows' counts from the events of the longest window before `cursor`.
    fn rebuild(&mut self, conn: &mut PgConnection, cursor: i64) -> Result<(), AppError> {
        self.windows = Windows::default();
        let last: Option<DateTime<Utc>> = audit_events::table
            .filter(audit_events::seq.eq(cursor))
            .select(audit_events::occurred_at)
            .first(conn)
            .optional()?;
        let Some(last) = last else {
            return Ok(());
        };
        let from = last - Duration::seconds(self.cfg.max_window_secs());
        let events: Vec<Event> = audit_events::table
            .filter(audit_events::seq.le(cursor))
            .filter(audit_events::occurred_at.ge(from))
            .filter(audit_events::outcome.eq("deny"))
            .order(audit_events::seq)
            .limit(MAX_REPLAY)
            .select(Event::as_select())
            .load(conn)?;
        // Only the windowed detectors keep state, and they read refusals only.
        let _ = rules::run(
            &self.cfg,
            &rules::Facts::default(),
            &mut self.windows,
            &events,
        );
        Ok(())
    }
}

/// break-glass-review-overdue: grants that were used, whose review fell due, unreviewed.
fn overdue_reviews(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Vec<NewAlert>, AppError> {
    use crate::schema::{break_glass_grants as g, break_glass_reviews as r};
    let reviewed = diesel::dsl::exists(r::table.filter(r::grant_id.eq(g::id)));
    let due: Vec<(GrantId, UserId, PatientId, DateTime<Utc>)> = g::table
        .filter(g::activated_at.is_not_null())
        .filter(g::review_due_at.le(now))
        .filter(diesel::dsl::not(reviewed))
        .order(g::review_due_at)
        .limit(500)
        .select((g::id, g::user_id, g::patient_id, g::review_due_at))
        .load(conn)?;
    let kind = AlertKind::BreakGlassReviewOverdue;
    Ok(due
        .into_iter()
        .map(|(grant, user, patient, due_at)| NewAlert {
            kind,
            severity: kind.severity(),
            reason: "review-overdue",
            user_id: Some(user),
            patient_id: Some(patient),
            grant_id: Some(grant),
            source_ip: None,
            client_id: None,
            figures: vec![(now - due_at).num_days()],
            evidence_seqs: Vec::new(),
            dedup_key: format!("{}:{grant}", kind.code()),
            created_at: now,
        })
        .collect())
}

/// Runs passes for as long as the process lives: at once again while a pass filled its
/// batch (catching up), else after `detect.poll_ms`. Errors are logged and retried.
pub fn spawn<T: Send + Sync + 'static>(
    alive: std::sync::Weak<T>,
    db: Db,
    cfg: DetectConfig,
    clock: SharedClock,
) {
    if !cfg.enabled {
        return;
    }
    let poll = std::time::Duration::from_millis(cfg.poll_ms);
    let batch = usize::try_from(cfg.batch_max).unwrap_or(usize::MAX);
    tokio::spawn(async move {
        let mut detector = Some(Detector::new(cfg.clone()));
        loop {
            if alive.strong_count() == 0 {
                return;
            }
            let Some(mut d) = detector.take() else {
                // The blocking task was lost (cancelled): start over with fresh counts.
                detector = Some(Detector::new(cfg.clone()));
                tokio::time::sleep(poll).await;
                continue;
            };
            let now = clock.now();
            let result = db
                .run(move |c| {
                    let pass = d.pass(c, now);
                    Ok((d, pass))
                })
                .await;
            let busy = match result {
                Ok((d, pass)) => {
                    detector = Some(d);
                    match pass {
                        Ok(pass) => {
                            crate::monitoring::detector_pass(
                                pass.ran,
                                pass.head.saturating_sub(pass.cursor),
                                pass.raised.iter().map(|k| k.code()),
                            );
                            pass.consumed >= batch
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "detectors: pass failed, retrying");
                            false
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "detectors: no database connection, retrying");
                    false
                }
            };
            if !busy {
                tokio::time::sleep(poll).await;
            }
        }
    });
}
