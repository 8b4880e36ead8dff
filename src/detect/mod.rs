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
use std::collections::HashMap;

/// Key of the transaction-level advisory lock held by the one working runner.
pub const LOCK_KEY: i64 = 0x4355_5354_4445_5443; // "CUSTDETC"

/// The kinds of alert the detectors raise (the break-glass module raises the others).
pub const KINDS: &[AlertKind] = &[
    AlertKind::RestrictedRecord,
    AlertKind::WorkforcePatient,
    AlertKind::SameFamilyName,
    AlertKind::RepeatedDenial,
    AlertKind::AuthFailureSpike,
    AlertKind::BulkAccess,
    AlertKind::NameSearchSweep,
    AlertKind::OffHours,
    AlertKind::BreakGlassReviewOverdue,
];

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
    /// Break-glass grants active at the pass's time (for the metrics).
    pub active_grants: i64,
}

/// The detectors' runner state of one instance.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    windows: Windows,
    /// The cursor the windows' counts belong to.
    through: Option<i64>,
    last_overdue_check: Option<DateTime<Utc>>,
    /// Bulk-access means by person or role and UTC day (they change slowly: one query
    /// per person and day, not per window).
    means: Means,
}

/// The cached bulk-access means: (person, day) and (role, day).
#[derive(Debug, Default)]
struct Means {
    own: HashMap<(UserId, i64), f64>,
    role: HashMap<(String, i64), f64>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            cfg,
            windows: Windows::default(),
            through: None,
            last_overdue_check: None,
            means: Means::default(),
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
            let mut base = DbBaselines::new(c, &self.cfg, &mut self.means);
            let mut new = rules::run(&self.cfg, &facts, &mut self.windows, &mut base, &events);
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
            let active_grants = active_grants(c, now)?;
            Ok((
                Pass {
                    ran: true,
                    consumed: events.len(),
                    raised,
                    cursor: next,
                    head,
                    active_grants,
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
        // The newest events of the window (the bound keeps a takeover under heavy load
        // affordable; counts of a window older than MAX_REPLAY events start lower).
        let mut events: Vec<Event> = audit_events::table
            .filter(audit_events::seq.le(cursor))
            .filter(audit_events::occurred_at.ge(from))
            .order(audit_events::seq.desc())
            .limit(MAX_REPLAY)
            .select(Event::as_select())
            .load(conn)?;
        events.reverse();
        // Only the windowed detectors keep state; their alerts were raised before.
        let mut base = DbBaselines::new(conn, &self.cfg, &mut self.means);
        let _ = rules::run(
            &self.cfg,
            &rules::Facts::default(),
            &mut self.windows,
            &mut base,
            &events,
        );
        Ok(())
    }
}

/// The bulk-access means over the trail: distinct patients per active window of the person,
/// and of everyone holding the person's role (the highest of their roles), over
/// `detect.bulk_baseline_days` before the UTC day of the window (so each is computed once
/// per day and cached, not once per window: the throughput depends on it).
struct DbBaselines<'a> {
    conn: &'a mut PgConnection,
    window_secs: i64,
    days: i64,
    means: &'a mut Means,
}

#[derive(QueryableByName)]
struct Mean {
    #[diesel(sql_type = diesel::sql_types::Double)]
    mean: f64,
}

const MEAN_SQL: &str = "SELECT COALESCE(avg(n), 0)::float8 AS mean FROM ( \
    SELECT count(DISTINCT p) AS n FROM audit_events, unnest(patient_ids) AS p \
    WHERE {who} AND outcome = 'permit' AND occurred_at >= $2 AND occurred_at < $3 \
      AND action IN ('read', 'search', 'create', 'update', 'delete', 'export') \
    GROUP BY actor_user_id, floor(extract(epoch FROM occurred_at) / $4)) s";

impl<'a> DbBaselines<'a> {
    fn new(conn: &'a mut PgConnection, cfg: &DetectConfig, means: &'a mut Means) -> Self {
        // Bounded: a day's worth of people, then start over.
        if means.own.len() > 100_000 || means.role.len() > 1000 {
            *means = Means::default();
        }
        Self {
            conn,
            window_secs: i64::from(cfg.bulk_window_mins) * 60,
            days: i64::from(cfg.bulk_baseline_days),
            means,
        }
    }
}

impl DbBaselines<'_> {
    /// One mean, in a savepoint: a query that fails (e.g. the statement timeout on a huge
    /// trail) counts as a mean of 0 — the threshold falls back to the other mean and the
    /// minimum, so a failure errs towards alerting — and the pass goes on.
    fn mean(&mut self, who: &str, bind: Who<'_>, start: DateTime<Utc>) -> f64 {
        use diesel::sql_types::{Double, Text, Timestamptz, Uuid as SqlUuid};
        let from = start - Duration::days(self.days);
        let secs = self.window_secs as f64;
        let sql = MEAN_SQL.replace("{who}", who);
        let result = self.conn.transaction(|c| match bind {
            Who::Person(user) => diesel::sql_query(&sql)
                .bind::<SqlUuid, _>(user)
                .bind::<Timestamptz, _>(from)
                .bind::<Timestamptz, _>(start)
                .bind::<Double, _>(secs)
                .get_result::<Mean>(c),
            Who::Role(role) => diesel::sql_query(&sql)
                .bind::<Text, _>(role)
                .bind::<Timestamptz, _>(from)
                .bind::<Timestamptz, _>(start)
                .bind::<Double, _>(secs)
                .get_result::<Mean>(c),
        });
        match result {
            Ok(m) => m.mean,
            Err(e) => {
                tracing::warn!(error = %e, "detectors: a bulk-access baseline was not computed; 0 used");
                0.0
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Who<'a> {
    Person(UserId),
    Role(&'a str),
}

impl rules::Baselines for DbBaselines<'_> {
    fn means(&mut self, user: UserId, roles: &[String], start: DateTime<Utc>) -> (f64, f64) {
        let day = start.timestamp().div_euclid(86_400);
        let day_start = DateTime::from_timestamp(day * 86_400, 0).unwrap_or(start);
        let own = match self.means.own.get(&(user, day)) {
            Some(m) => *m,
            None => {
                let m = self.mean("actor_user_id = $1", Who::Person(user), day_start);
                self.means.own.insert((user, day), m);
                m
            }
        };
        let mut role = 0.0f64;
        for r in roles {
            let key = (r.clone(), day);
            let mean = match self.means.role.get(&key) {
                Some(m) => *m,
                None => {
                    let m = self.mean("$1 = ANY(actor_roles)", Who::Role(r), day_start);
                    self.means.role.insert(key, m);
                    m
                }
            };
            role = role.max(mean);
        }
        (own, role)
    }
}

/// Break-glass grants active at `now`.
fn active_grants(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<i64, AppError> {
    use crate::schema::break_glass_grants as g;
    Ok(g::table
        .filter(g::status.eq("active"))
        .filter(g::expires_at.gt(now))
        .count()
        .get_result(conn)?)
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
        .map(|(grant, user, patient, due_at)| {
            NewAlert::about(
                kind,
                "review-overdue",
                format!("{}:{grant}", kind.code()),
                now,
            )
            .person(Some(user))
            .patient(Some(patient))
            .grant(Some(grant))
            .figures(vec![(now - due_at).num_days()])
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
                                pass.active_grants,
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
