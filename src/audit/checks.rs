//! The console's verifications of the chain ("verify now"): one `audit_verifications`
//! row per run, its progress while it runs and its result — counts, sequence numbers and
//! the verifier's fixed problem text only. The run itself is [`super::ops::verify_database`].

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

/// A verification run, as the dashboard shows it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Run {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    pub started_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    pub started_by: Uuid,
    #[diesel(sql_type = BigInt)]
    pub total_events: i64,
    #[diesel(sql_type = BigInt)]
    pub verified_events: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Bool>)]
    pub ok: Option<bool>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub failed_seq: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub problem: Option<String>,
}

/// How long an unfinished run counts as running (after that, its instance is presumed
/// gone and a new run may start).
pub const STALE_AFTER_SECS: i64 = 3600;

/// Starts a run unless one is running (started within [`STALE_AFTER_SECS`] and not
/// finished): `None` then.
pub fn start(
    conn: &mut PgConnection,
    by: Uuid,
    total: i64,
    now: DateTime<Utc>,
) -> QueryResult<Option<Uuid>> {
    conn.transaction(|conn| {
        // One start at a time across instances.
        diesel::sql_query("LOCK TABLE audit_verifications IN SHARE ROW EXCLUSIVE MODE")
            .execute(conn)?;
        let running: Vec<Run> = diesel::sql_query(
            "SELECT * FROM audit_verifications WHERE finished_at IS NULL AND started_at > $1",
        )
        .bind::<Timestamptz, _>(now - chrono::Duration::seconds(STALE_AFTER_SECS))
        .load(conn)?;
        if !running.is_empty() {
            return Ok(None);
        }
        let id = Uuid::new_v4();
        diesel::sql_query(
            "INSERT INTO audit_verifications (id, started_at, started_by, total_events) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Timestamptz, _>(now)
        .bind::<SqlUuid, _>(by)
        .bind::<BigInt, _>(total)
        .execute(conn)?;
        Ok(Some(id))
    })
}

/// Records how many events the run has verified so far.
pub fn progress(conn: &mut PgConnection, id: Uuid, verified: i64) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE audit_verifications SET verified_events = $2 WHERE id = $1 AND finished_at IS NULL",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(verified)
    .execute(conn)
    .map(|_| ())
}

/// Records the result: `Ok(events)` or `Err((sequence, problem))`. A failure also puts
/// its webhook message in the outbox, in the same transaction.
pub fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    result: Result<i64, (i64, String)>,
    now: DateTime<Utc>,
) -> Result<(), crate::error::AppError> {
    conn.transaction(|conn| {
        if let Err((seq, _)) = &result {
            let message = crate::db::webhooks::NewMessage::verification_failed(Some(id), *seq, now);
            crate::db::webhooks::enqueue(conn, &[message])?;
        }
        Ok(store_result(conn, id, result, now)?)
    })
}

fn store_result(
    conn: &mut PgConnection,
    id: Uuid,
    result: Result<i64, (i64, String)>,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let (ok, verified, seq, problem) = match result {
        Ok(n) => (true, Some(n), None, None),
        Err((seq, problem)) => (false, None, Some(seq), Some(problem)),
    };
    let problem = problem.map(|p| p.chars().take(500).collect::<String>());
    diesel::sql_query(
        "UPDATE audit_verifications SET finished_at = $2, ok = $3, \
         verified_events = COALESCE($4, verified_events), failed_seq = $5, problem = $6 \
         WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Timestamptz, _>(now)
    .bind::<Bool, _>(ok)
    .bind::<Nullable<BigInt>, _>(verified)
    .bind::<Nullable<BigInt>, _>(seq)
    .bind::<Nullable<Text>, _>(problem)
    .execute(conn)
    .map(|_| ())
}

/// The newest finished run and the newest running one (if any).
pub fn latest(conn: &mut PgConnection) -> QueryResult<(Option<Run>, Option<Run>)> {
    let finished: Option<Run> = diesel::sql_query(
        "SELECT * FROM audit_verifications WHERE finished_at IS NOT NULL \
         ORDER BY finished_at DESC LIMIT 1",
    )
    .get_result(conn)
    .optional()?;
    let running: Option<Run> = diesel::sql_query(
        "SELECT * FROM audit_verifications WHERE finished_at IS NULL \
         ORDER BY started_at DESC LIMIT 1",
    )
    .get_result(conn)
    .optional()?;
    Ok((finished, running))
}
