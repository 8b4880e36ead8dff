//! Searching the audit trail for review: a [`Filter`] over the PHI-free fields, paged by
//! keyset on the chain sequence (newest first, both directions), and the events of one
//! patient's access report. The MRN never reaches this module: the console resolves it to
//! the internal id through the blind index first.

use super::event::{AuditAction, DenyReason, PurposeOfUse, ResourceType};
use super::store::EventRow;
use crate::domain::{PatientId, UserId};
use crate::schema::audit_events;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::net::IpAddr;
use uuid::Uuid;

/// The outcome an event had (the deny reason is filtered separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeCode {
    Permit,
    Deny,
    Error,
}

impl OutcomeCode {
    pub const ALL: [OutcomeCode; 3] = [OutcomeCode::Permit, OutcomeCode::Deny, OutcomeCode::Error];

    pub fn code(self) -> &'static str {
        match self {
            OutcomeCode::Permit => "permit",
            OutcomeCode::Deny => "deny",
            OutcomeCode::Error => "error",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// Which events a review wants. Every field narrows; an empty filter matches every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub actor: Option<UserId>,
    pub patient: Option<PatientId>,
    pub action: Option<AuditAction>,
    /// Any of these actions (empty: any action); the FHIR `AuditEvent` search's
    /// `type`, `subtype` and `action` each name a set of them.
    pub actions: Vec<AuditAction>,
    pub resource_type: Option<ResourceType>,
    pub outcome: Option<OutcomeCode>,
    pub deny_reason: Option<DenyReason>,
    pub break_glass_grant: Option<Uuid>,
    pub purpose: Option<PurposeOfUse>,
    pub source_ip: Option<IpAddr>,
    /// Occurred at or after.
    pub since: Option<DateTime<Utc>>,
    /// Occurred before.
    pub until: Option<DateTime<Utc>>,
    /// Pages list the oldest events first (default: newest first).
    pub oldest_first: bool,
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The first page: the newest matching events (the oldest, with
    /// [`Filter::oldest_first`]).
    Newest,
    /// The events just older than this sequence number.
    Before(i64),
    /// The events just newer than this sequence number.
    After(i64),
}

/// One page, in the filter's order, with the cursors of its neighbours (`None`: no such
/// page).
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<EventRow>,
    /// `Cursor::Before(older)` opens the next older page.
    pub older: Option<i64>,
    /// `Cursor::After(newer)` opens the next newer page.
    pub newer: Option<i64>,
}

type Boxed<'a> = audit_events::BoxedQuery<'a, diesel::pg::Pg, audit_events::SqlType>;

fn filtered(f: &Filter) -> Boxed<'static> {
    let mut q = audit_events::table.into_boxed();
    if let Some(actor) = f.actor {
        q = q.filter(audit_events::actor_user_id.eq(actor));
    }
    if let Some(patient) = f.patient {
        q = q.filter(audit_events::patient_ids.contains(vec![patient]));
    }
    if let Some(action) = f.action {
        q = q.filter(audit_events::action.eq(action.code()));
    }
    if !f.actions.is_empty() {
        let codes: Vec<&'static str> = f.actions.iter().map(|a| a.code()).collect();
        q = q.filter(audit_events::action.eq_any(codes));
    }
    if let Some(kind) = f.resource_type {
        q = q.filter(audit_events::resource_type.eq(kind.code()));
    }
    if let Some(outcome) = f.outcome {
        q = q.filter(audit_events::outcome.eq(outcome.code()));
    }
    if let Some(reason) = f.deny_reason {
        q = q.filter(audit_events::deny_reason.eq(reason.code()));
    }
    if let Some(grant) = f.break_glass_grant {
        q = q.filter(audit_events::break_glass_grant_id.eq(grant));
    }
    if let Some(purpose) = f.purpose {
        q = q.filter(audit_events::purpose_of_use.eq(purpose.code()));
    }
    if let Some(ip) = f.source_ip {
        q = q.filter(audit_events::source_ip.eq(ip.to_string()));
    }
    if let Some(since) = f.since {
        q = q.filter(audit_events::occurred_at.ge(since));
    }
    if let Some(until) = f.until {
        q = q.filter(audit_events::occurred_at.lt(until));
    }
    q
}

/// Up to `limit` events matching `f` from `cursor`, newest first (oldest first with
/// [`Filter::oldest_first`]). Keyset paging on the sequence number: events appended while
/// a reviewer pages never shift the pages already seen.
pub fn search(
    conn: &mut PgConnection,
    f: &Filter,
    cursor: Cursor,
    limit: i64,
) -> QueryResult<Page> {
    let take = usize::try_from(limit).unwrap_or(0);
    // Rows just beyond `bound` (older: seq < bound, newest first; newer: seq > bound,
    // oldest first), and whether there are more.
    let mut fetch = |older: bool, bound: Option<i64>| -> QueryResult<(Vec<EventRow>, bool)> {
        let mut q = filtered(f)
            .limit(limit.saturating_add(1))
            .select(EventRow::as_select());
        q = if older {
            q.order(audit_events::seq.desc())
        } else {
            q.order(audit_events::seq.asc())
        };
        if let Some(b) = bound {
            q = if older {
                q.filter(audit_events::seq.lt(b))
            } else {
                q.filter(audit_events::seq.gt(b))
            };
        }
        let mut rows: Vec<EventRow> = q.load(conn)?;
        let more = rows.len() > take;
        rows.truncate(take);
        Ok((rows, more))
    };
    let first = |rows: &[EventRow]| rows.first().map(|r| r.seq);
    let last = |rows: &[EventRow]| rows.last().map(|r| r.seq);
    let page = match (f.oldest_first, cursor) {
        // Newest first: rows descend.
        (false, Cursor::Newest) => {
            let (rows, more) = fetch(true, None)?;
            let older = if more { last(&rows) } else { None };
            Page {
                older,
                newer: None,
                rows,
            }
        }
        (false, Cursor::Before(seq)) => {
            let (rows, more) = fetch(true, Some(seq))?;
            let older = if more { last(&rows) } else { None };
            Page {
                older,
                newer: first(&rows),
                rows,
            }
        }
        (false, Cursor::After(seq)) => {
            let (mut rows, more) = fetch(false, Some(seq))?;
            rows.reverse();
            let newer = if more { first(&rows) } else { None };
            Page {
                older: last(&rows),
                newer,
                rows,
            }
        }
        // Oldest first: rows ascend.
        (true, Cursor::Newest) => {
            let (rows, more) = fetch(false, None)?;
            let newer = if more { last(&rows) } else { None };
            Page {
                older: None,
                newer,
                rows,
            }
        }
        (true, Cursor::After(seq)) => {
            let (rows, more) = fetch(false, Some(seq))?;
            let newer = if more { last(&rows) } else { None };
            Page {
                older: first(&rows),
                newer,
                rows,
            }
        }
        (true, Cursor::Before(seq)) => {
            let (mut rows, more) = fetch(true, Some(seq))?;
            rows.reverse();
            let older = if more { first(&rows) } else { None };
            Page {
                older,
                newer: last(&rows),
                rows,
            }
        }
    };
    Ok(page)
}

/// One event by its sequence number.
pub fn event(conn: &mut PgConnection, seq: i64) -> QueryResult<Option<EventRow>> {
    audit_events::table
        .filter(audit_events::seq.eq(seq))
        .select(EventRow::as_select())
        .first(conn)
        .optional()
}

/// One event by its id (the `AuditEvent` resource id).
pub fn event_by_id(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<EventRow>> {
    audit_events::table
        .filter(audit_events::event_id.eq(id))
        .select(EventRow::as_select())
        .first(conn)
        .optional()
}

/// The actions that reach a patient's data: what an access report lists.
pub const ACCESS_ACTIONS: [AuditAction; 6] = [
    AuditAction::Read,
    AuditAction::Search,
    AuditAction::Create,
    AuditAction::Update,
    AuditAction::Delete,
    AuditAction::Export,
];

/// The permitted accesses to `patient`'s data in `[since, until)`, oldest first, at most
/// `limit`: every event naming the patient, so a search whose results contained the
/// patient is included (its `patient_ids` lists every patient it returned).
pub fn patient_accesses(
    conn: &mut PgConnection,
    patient: PatientId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let actions: Vec<&str> = ACCESS_ACTIONS.iter().map(|a| a.code()).collect();
    audit_events::table
        .filter(audit_events::patient_ids.contains(vec![patient]))
        .filter(audit_events::occurred_at.ge(since))
        .filter(audit_events::occurred_at.lt(until))
        .filter(audit_events::outcome.eq(OutcomeCode::Permit.code()))
        .filter(audit_events::action.eq_any(actions))
        .order(audit_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
}

/// The whole trail's accesses (the [`ACCESS_ACTIONS`]) per UTC day in `[since, until)`:
/// (day, permitted, denied, failed).
pub fn trail_per_day(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> QueryResult<Vec<(NaiveDate, i64, i64, i64)>> {
    use diesel::sql_types::{Array, BigInt, Date, Text, Timestamptz};
    #[derive(QueryableByName)]
    struct Day {
        #[diesel(sql_type = Date)]
        day: NaiveDate,
        #[diesel(sql_type = BigInt)]
        permit: i64,
        #[diesel(sql_type = BigInt)]
        deny: i64,
        #[diesel(sql_type = BigInt)]
        error: i64,
    }
    let actions: Vec<&str> = ACCESS_ACTIONS.iter().map(|a| a.code()).collect();
    let days: Vec<Day> = diesel::sql_query(
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, \
                count(*) FILTER (WHERE outcome = 'permit') AS permit, \
                count(*) FILTER (WHERE outcome = 'deny') AS deny, \
                count(*) FILTER (WHERE outcome = 'error') AS error \
         FROM audit_events WHERE occurred_at >= $1 AND occurred_at < $2 AND action = ANY($3) \
         GROUP BY 1 ORDER BY 1",
    )
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .bind::<Array<Text>, _>(actions)
    .load(conn)?;
    Ok(days
        .into_iter()
        .map(|d| (d.day, d.permit, d.deny, d.error))
        .collect())
}

/// The `n` people whose permitted accesses in `[since, until)` named the most distinct
/// patients, most first.
pub fn top_people(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    n: i64,
) -> QueryResult<Vec<(UserId, i64)>> {
    use diesel::sql_types::{Array, BigInt, Text, Timestamptz, Uuid as SqlUuid};
    #[derive(QueryableByName)]
    struct Person {
        #[diesel(sql_type = SqlUuid)]
        person: Uuid,
        #[diesel(sql_type = BigInt)]
        patients: i64,
    }
    let actions: Vec<&str> = ACCESS_ACTIONS.iter().map(|a| a.code()).collect();
    let rows: Vec<Person> = diesel::sql_query(
        "SELECT actor_user_id AS person, count(DISTINCT p) AS patients \
         FROM audit_events, unnest(patient_ids) AS p \
         WHERE occurred_at >= $1 AND occurred_at < $2 AND outcome = 'permit' \
           AND actor_user_id IS NOT NULL AND action = ANY($3) \
         GROUP BY actor_user_id ORDER BY patients DESC, person LIMIT $4",
    )
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .bind::<Array<Text>, _>(actions)
    .bind::<BigInt, _>(n)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| (UserId(r.person), r.patients))
        .collect())
}

/// Display names of these people (those without one are left out).
pub fn display_names(
    conn: &mut PgConnection,
    ids: &[UserId],
) -> QueryResult<std::collections::HashMap<UserId, String>> {
    use crate::schema::users;
    let uuids: Vec<Uuid> = ids.iter().map(|u| u.as_uuid()).collect();
    let rows: Vec<(Uuid, Option<String>)> = users::table
        .filter(users::id.eq_any(uuids))
        .select((users::id, users::display_name))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, name)| name.map(|n| (UserId(id), n)))
        .collect())
}

/// Why an access was allowed: the basis the decision point recorded in the event, else
/// (events recorded before the basis was stored, and accesses not decided on a
/// relationship) as far as the event tells.
pub fn basis(e: &EventRow) -> &'static str {
    match e.basis.as_deref() {
        Some("care-team") => return "care team",
        Some("facility") => return "facility",
        Some("own-record") => return "own record",
        Some("break-glass") => return "break-glass",
        _ => {}
    }
    if e.break_glass_grant_id.is_some() {
        "break-glass"
    } else if e.actor_roles.iter().any(|r| r == "patient") {
        "own record"
    } else if e.actor_client_id.is_some() {
        "service client"
    } else {
        "care team or facility"
    }
}

/// A time bound of a review period: a date (its midnight; for an `end`, the next
/// midnight, so the day is included) or a date and time, in UTC.
pub fn bound(raw: &str, end: bool) -> Option<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let d = if end { d.succ_opt()? } else { d };
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc());
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
        .map(|t| t.and_utc())
}

/// One person's activity in `[since, until)`: events per (UTC day, hour), the patients
/// their permitted accesses named (with counts, most first, at most `top`), denials and
/// break-glass accesses.
#[derive(Debug, Default)]
pub struct Activity {
    /// (day, hour 0..24, events).
    pub by_hour: Vec<(chrono::NaiveDate, u32, i64)>,
    /// (day, permitted, denied).
    pub by_day: Vec<(chrono::NaiveDate, i64, i64)>,
    pub patients: Vec<(PatientId, i64)>,
    pub distinct_patients: i64,
    pub events: i64,
    pub denials: i64,
    pub break_glass: i64,
}

pub fn activity(
    conn: &mut PgConnection,
    person: UserId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    top: i64,
) -> QueryResult<Activity> {
    use diesel::sql_types::{BigInt, Date, Integer, Timestamptz, Uuid as SqlUuid};
    #[derive(QueryableByName)]
    struct Cell {
        #[diesel(sql_type = Date)]
        day: chrono::NaiveDate,
        #[diesel(sql_type = Integer)]
        hour: i32,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    #[derive(QueryableByName)]
    struct Day {
        #[diesel(sql_type = Date)]
        day: chrono::NaiveDate,
        #[diesel(sql_type = BigInt)]
        permit: i64,
        #[diesel(sql_type = BigInt)]
        deny: i64,
    }
    #[derive(QueryableByName)]
    struct PatientCount {
        #[diesel(sql_type = SqlUuid)]
        patient: Uuid,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    #[derive(QueryableByName)]
    struct Totals {
        #[diesel(sql_type = BigInt)]
        events: i64,
        #[diesel(sql_type = BigInt)]
        denials: i64,
        #[diesel(sql_type = BigInt)]
        break_glass: i64,
        #[diesel(sql_type = BigInt)]
        distinct_patients: i64,
    }
    let cells: Vec<Cell> = diesel::sql_query(
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, \
                extract(hour FROM occurred_at AT TIME ZONE 'UTC')::int AS hour, count(*) AS n \
         FROM audit_events WHERE actor_user_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<SqlUuid, _>(person.as_uuid())
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .load(conn)?;
    let days: Vec<Day> = diesel::sql_query(
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, \
                count(*) FILTER (WHERE outcome = 'permit') AS permit, \
                count(*) FILTER (WHERE outcome = 'deny') AS deny \
         FROM audit_events WHERE actor_user_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind::<SqlUuid, _>(person.as_uuid())
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .load(conn)?;
    let patients: Vec<PatientCount> = diesel::sql_query(
        "SELECT p AS patient, count(*) AS n \
         FROM audit_events, unnest(patient_ids) AS p \
         WHERE actor_user_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
           AND outcome = 'permit' \
         GROUP BY p ORDER BY n DESC, p LIMIT $4",
    )
    .bind::<SqlUuid, _>(person.as_uuid())
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .bind::<BigInt, _>(top)
    .load(conn)?;
    let totals: Totals = diesel::sql_query(
        "SELECT count(*) AS events, \
                count(*) FILTER (WHERE outcome = 'deny') AS denials, \
                count(*) FILTER (WHERE break_glass_grant_id IS NOT NULL) AS break_glass, \
                (SELECT count(DISTINCT p) FROM audit_events e2, unnest(e2.patient_ids) AS p \
                  WHERE e2.actor_user_id = $1 AND e2.occurred_at >= $2 AND e2.occurred_at < $3 \
                    AND e2.outcome = 'permit') AS distinct_patients \
         FROM audit_events WHERE actor_user_id = $1 AND occurred_at >= $2 AND occurred_at < $3",
    )
    .bind::<SqlUuid, _>(person.as_uuid())
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .get_result(conn)?;
    Ok(Activity {
        by_hour: cells
            .into_iter()
            .map(|c| (c.day, u32::try_from(c.hour).unwrap_or(0), c.n))
            .collect(),
        by_day: days
            .into_iter()
            .map(|d| (d.day, d.permit, d.deny))
            .collect(),
        patients: patients
            .into_iter()
            .map(|p| (PatientId(p.patient), p.n))
            .collect(),
        distinct_patients: totals.distinct_patients,
        events: totals.events,
        denials: totals.denials,
        break_glass: totals.break_glass,
    })
}
