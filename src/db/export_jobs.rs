//! Bulk Data export jobs (`export_jobs`): kick-off inserts a job, one runner at a time
//! works it under a lease (so instances never run one job twice), and each batch's
//! progress commits only while the lease is still the runner's. A row holds codes, ids
//! and counts only; the output is in files ([`crate::export`]).

use crate::db::schema::export_jobs as j;
use crate::domain::UserId;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use uuid::Uuid;

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = j)]
pub struct Job {
    pub id: Uuid,
    pub requester_id: Uuid,
    pub status: String,
    pub level: String,
    pub kind: String,
    pub group_id: Option<Uuid>,
    pub types: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub k: i32,
    pub suppress: bool,
    pub parts: serde_json::Value,
    pub progress: serde_json::Value,
    pub actor_client_id: Option<String>,
    pub actor_roles: Vec<String>,
    pub auth_method: String,
    pub client_app: Option<String>,
    pub report: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub resumes: i32,
    pub lease_owner: Option<Uuid>,
    pub lease_until: Option<DateTime<Utc>>,
    pub transaction_time: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = j)]
pub struct NewJob {
    pub id: Uuid,
    pub requester_id: Uuid,
    pub status: String,
    pub level: String,
    pub kind: String,
    pub group_id: Option<Uuid>,
    pub types: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub k: i32,
    pub suppress: bool,
    pub parts: serde_json::Value,
    pub progress: serde_json::Value,
    pub actor_client_id: Option<String>,
    pub actor_roles: Vec<String>,
    pub auth_method: String,
    pub client_app: Option<String>,
    pub transaction_time: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Inserts a queued job; `None` when the requester already has one queued or running
/// (the partial unique index decides, so two kick-offs at once cannot both pass).
pub fn insert(conn: &mut PgConnection, job: &NewJob) -> Result<Option<Uuid>, AppError> {
    match diesel::insert_into(j::table).values(job).execute(conn) {
        Ok(_) => Ok(Some(job.id)),
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The job `id` of `requester` (anyone else's job is `None`, like a missing one).
pub fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Job>, AppError> {
    Ok(j::table
        .find(id)
        .select(Job::as_select())
        .first(conn)
        .optional()?)
}

/// Takes the oldest queued or running job whose lease has lapsed (its runner stopped)
/// for `owner` until `until`, counting a take-over of a started job as a resume. Jobs
/// of `custodian export` are never taken: their files are in the command's output
/// directory, which no server can reach.
pub fn claim(
    conn: &mut PgConnection,
    owner: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<Job>, AppError> {
    conn.transaction(|c| {
        let id: Option<(Uuid, Option<Uuid>)> = j::table
            .filter(j::status.eq_any(["queued", "running"]))
            .filter(j::auth_method.ne(CLI))
            .filter(j::lease_until.is_null().or(j::lease_until.lt(now)))
            .order(j::created_at)
            .select((j::id, j::lease_owner))
            .for_update()
            .skip_locked()
            .first(c)
            .optional()?;
        let Some((id, previous)) = id else {
            return Ok(None);
        };
        let resumed = i32::from(previous.is_some());
        let job = diesel::update(j::table.find(id))
            .set((
                j::status.eq("running"),
                j::lease_owner.eq(owner),
                j::lease_until.eq(until),
                j::resumes.eq(j::resumes + resumed),
            ))
            .returning(Job::as_returning())
            .get_result(c)?;
        Ok(Some(job))
    })
}

/// The `auth_method` of the jobs `custodian export` starts and works itself.
pub const CLI: &str = "cli";

/// Inserts a job that `owner` (a `custodian export` run) works at once, leased until
/// `until`, in the caller's transaction; `None` when the requester already has one
/// queued or running.
pub fn insert_taken(
    conn: &mut PgConnection,
    job: &NewJob,
    owner: Uuid,
    until: DateTime<Utc>,
) -> Result<Option<Job>, AppError> {
    if insert(conn, job)?.is_none() {
        return Ok(None);
    }
    let job = diesel::update(j::table.find(job.id))
        .set((
            j::status.eq("running"),
            j::lease_owner.eq(owner),
            j::lease_until.eq(until),
        ))
        .returning(Job::as_returning())
        .get_result(conn)?;
    Ok(Some(job))
}

/// Deletes `requester`'s queued or running jobs whose lease has lapsed (a
/// `custodian export` that was stopped: nobody else works them) and returns their ids.
pub fn delete_lapsed_of(
    conn: &mut PgConnection,
    requester: UserId,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, AppError> {
    Ok(diesel::delete(
        j::table
            .filter(j::requester_id.eq(requester.as_uuid()))
            .filter(j::status.eq_any(["queued", "running"]))
            .filter(j::lease_until.lt(now)),
    )
    .returning(j::id)
    .get_results(conn)?)
}

/// Records a batch's progress and extends the lease, if the job is still this runner's
/// and running (`false`: cancelled, expired or taken over — stop).
pub fn advance(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
    progress: &serde_json::Value,
    until: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(
        j::table
            .find(id)
            .filter(j::lease_owner.eq(owner))
            .filter(j::status.eq("running")),
    )
    .set((j::progress.eq(progress), j::lease_until.eq(until)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Marks the job completed (with the k-anonymity report of a de-identified export).
pub fn complete(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
    progress: &serde_json::Value,
    report: Option<serde_json::Value>,
    at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(
        j::table
            .find(id)
            .filter(j::lease_owner.eq(owner))
            .filter(j::status.eq("running")),
    )
    .set((
        j::status.eq("completed"),
        j::progress.eq(progress),
        j::report.eq(report),
        j::completed_at.eq(at),
        j::expires_at.eq(expires_at),
        j::lease_owner.eq(None::<Uuid>),
        j::lease_until.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Marks the job failed with a coded reason (no text).
pub fn fail(
    conn: &mut PgConnection,
    id: Uuid,
    code: &'static str,
    at: DateTime<Utc>,
) -> Result<(), AppError> {
    diesel::update(j::table.find(id).filter(j::status.eq("running")))
        .set((
            j::status.eq("failed"),
            j::error_code.eq(code),
            j::completed_at.eq(at),
            j::lease_owner.eq(None::<Uuid>),
            j::lease_until.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
    Ok(())
}

/// Deletes the job `id` of `requester` (cancel); `false` when there is none.
pub fn delete(conn: &mut PgConnection, id: Uuid, requester: UserId) -> Result<bool, AppError> {
    let n = diesel::delete(
        j::table
            .find(id)
            .filter(j::requester_id.eq(requester.as_uuid())),
    )
    .execute(conn)?;
    Ok(n == 1)
}

/// Deletes up to `max` jobs past their expiry and returns their ids (their files go
/// next; a file left by a crash in between is removed by the next sweep's directory scan).
pub fn delete_expired(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    max: i64,
) -> Result<Vec<Uuid>, AppError> {
    let due: Vec<Uuid> = j::table
        .filter(j::expires_at.lt(now))
        .select(j::id)
        .limit(max)
        .load(conn)?;
    if !due.is_empty() {
        diesel::delete(j::table.filter(j::id.eq_any(&due))).execute(conn)?;
    }
    Ok(due)
}

/// The newest `max` jobs (the console's list of export jobs).
pub fn recent(conn: &mut PgConnection, max: i64) -> Result<Vec<Job>, AppError> {
    Ok(j::table
        .order((j::created_at.desc(), j::id))
        .limit(max)
        .select(Job::as_select())
        .load(conn)?)
}

/// Whether job `id` still exists (a directory without a job is left over: removed).
pub fn exists(conn: &mut PgConnection, id: Uuid) -> Result<bool, AppError> {
    Ok(diesel::select(diesel::dsl::exists(j::table.find(id))).get_result(conn)?)
}
