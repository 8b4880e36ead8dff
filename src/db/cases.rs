//! Privacy cases (`privacy_cases`, `privacy_case_alerts`, `privacy_case_events`): alerts
//! grouped into a case that a privacy officer owns and works to a verdict. The case row
//! holds the current state (the database lets it move forward only and never change once
//! closed); every change is also one append-only history row, notes sealed. Also the
//! alert list's query (filters, keyset paging) and the dashboard's counts, which need the
//! cases. Who may do what is `policy::cases`; the callers ask it first.

use crate::crypto::Keyring;
use crate::crypto::columns::privacy_case_events::NOTE;
use crate::db::alerts::Alert;
use crate::db::schema::{
    alerts as a, privacy_case_alerts as ca, privacy_case_events as ev, privacy_cases as pc,
};
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::cases::{CaseStatus, Sanction};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

/// One case as stored.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = pc, check_for_backend(diesel::pg::Pg))]
pub struct Case {
    pub id: Uuid,
    pub status: String,
    pub owner: Uuid,
    pub sanction: Option<String>,
    pub opened_by: Uuid,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl Case {
    pub fn status(&self) -> Result<CaseStatus, AppError> {
        CaseStatus::from_code(&self.status).ok_or_else(|| AppError::internal("unknown case status"))
    }
}

/// The people the alerts `ids` are about (deduplicated), and how many of `ids` exist.
pub fn subjects_of_alerts(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<(Vec<UserId>, usize), AppError> {
    let rows: Vec<Option<UserId>> = a::table
        .filter(a::id.eq_any(ids))
        .select(a::user_id)
        .load(conn)?;
    let found = rows.len();
    let mut people: Vec<UserId> = rows.into_iter().flatten().collect();
    people.sort();
    people.dedup();
    Ok((people, found))
}

/// The people a case's alerts are about.
pub fn subjects(conn: &mut PgConnection, case: Uuid) -> Result<Vec<UserId>, AppError> {
    let mut people: Vec<UserId> = ca::table
        .inner_join(a::table)
        .filter(ca::case_id.eq(case))
        .select(a::user_id)
        .load::<Option<UserId>>(conn)?
        .into_iter()
        .flatten()
        .collect();
    people.sort();
    people.dedup();
    Ok(people)
}

/// How many of `ids` are in a case already.
pub fn already_in_case(conn: &mut PgConnection, ids: &[Uuid]) -> Result<i64, AppError> {
    Ok(ca::table
        .filter(ca::alert_id.eq_any(ids))
        .count()
        .get_result(conn)?)
}

struct NewEvent<'a> {
    case: Uuid,
    actor: UserId,
    at: DateTime<Utc>,
    action: &'static str,
    status: Option<&'static str>,
    owner: Option<UserId>,
    sanction: Option<&'static str>,
    alerts: Option<i32>,
    note: Option<&'a str>,
}

impl<'a> NewEvent<'a> {
    /// A history row of `action` by `actor` at `at` that changes nothing else: each
    /// operation names only the fields it records.
    fn of(case: Uuid, actor: UserId, at: DateTime<Utc>, action: &'static str) -> Self {
        Self {
            case,
            actor,
            at,
            action,
            status: None,
            owner: None,
            sanction: None,
            alerts: None,
            note: None,
        }
    }
}

fn append(conn: &mut PgConnection, kr: &Keyring, e: NewEvent<'_>) -> Result<(), AppError> {
    let id = Uuid::new_v4();
    // Every row carries the current key version (rotation walks the table by it).
    let sealer = kr.sealer_for_write(conn)?;
    let version = sealer.version();
    let sealed = match e.note {
        Some(text) => Some(sealer.seal_str(&NOTE.at(id), text)?),
        None => None,
    };
    diesel::insert_into(ev::table)
        .values((
            ev::id.eq(id),
            ev::case_id.eq(e.case),
            ev::actor.eq(e.actor.as_uuid()),
            ev::at.eq(e.at),
            ev::action.eq(e.action),
            ev::status.eq(e.status),
            ev::owner.eq(e.owner.map(|o| o.as_uuid())),
            ev::sanction.eq(e.sanction),
            ev::alerts.eq(e.alerts),
            ev::note_sealed.eq(sealed),
            ev::key_version.eq(version),
        ))
        .execute(conn)?;
    Ok(())
}

fn link_alerts(
    conn: &mut PgConnection,
    case: Uuid,
    ids: &[Uuid],
    by: UserId,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let rows: Vec<_> = ids
        .iter()
        .map(|id| {
            (
                ca::alert_id.eq(*id),
                ca::case_id.eq(case),
                ca::added_by.eq(by.as_uuid()),
                ca::added_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(ca::table).values(rows).execute(conn)?;
    Ok(())
}

/// Opens a case of `alerts` (none in a case yet: the caller checked, the primary key
/// refuses a second case) owned by `owner`; returns its id.
pub fn open(
    conn: &mut PgConnection,
    kr: &Keyring,
    alerts: &[Uuid],
    owner: UserId,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<Uuid, AppError> {
    let id = Uuid::new_v4();
    diesel::insert_into(pc::table)
        .values((
            pc::id.eq(id),
            pc::status.eq(CaseStatus::Open.code()),
            pc::owner.eq(owner.as_uuid()),
            pc::opened_by.eq(by.as_uuid()),
            pc::opened_at.eq(now),
            pc::updated_at.eq(now),
        ))
        .execute(conn)?;
    link_alerts(conn, id, alerts, by, now)?;
    append(
        conn,
        kr,
        NewEvent {
            status: Some(CaseStatus::Open.code()),
            owner: Some(owner),
            alerts: Some(alerts.len() as i32),
            ..NewEvent::of(id, by, now, "opened")
        },
    )?;
    Ok(id)
}

/// Adds alerts (none in a case yet) to an open case.
pub fn add_alerts(
    conn: &mut PgConnection,
    kr: &Keyring,
    case: Uuid,
    alerts: &[Uuid],
    by: UserId,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    link_alerts(conn, case, alerts, by, now)?;
    touch(conn, case, now)?;
    append(
        conn,
        kr,
        NewEvent {
            alerts: Some(alerts.len() as i32),
            ..NewEvent::of(case, by, now, "alerts-added")
        },
    )
}

fn touch(conn: &mut PgConnection, case: Uuid, now: DateTime<Utc>) -> Result<(), AppError> {
    diesel::update(pc::table.find(case))
        .set(pc::updated_at.eq(now))
        .execute(conn)?;
    Ok(())
}

/// The case, locked for a change in this transaction.
pub fn get_for_update(conn: &mut PgConnection, id: Uuid) -> Result<Option<Case>, AppError> {
    Ok(pc::table
        .find(id)
        .for_update()
        .select(Case::as_select())
        .first(conn)
        .optional()?)
}

pub fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Case>, AppError> {
    Ok(pc::table
        .find(id)
        .select(Case::as_select())
        .first(conn)
        .optional()?)
}

/// Gives the case to `owner`.
pub fn assign(
    conn: &mut PgConnection,
    kr: &Keyring,
    case: Uuid,
    owner: UserId,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    diesel::update(pc::table.find(case))
        .set((pc::owner.eq(owner.as_uuid()), pc::updated_at.eq(now)))
        .execute(conn)?;
    append(
        conn,
        kr,
        NewEvent {
            owner: Some(owner),
            ..NewEvent::of(case, by, now, "assigned")
        },
    )
}

/// Moves the case to `to` (a closing status with its sanction on a violation, checked by
/// the caller and by the table), with an optional note in the same history row.
#[allow(clippy::too_many_arguments)]
pub fn set_status(
    conn: &mut PgConnection,
    kr: &Keyring,
    case: Uuid,
    to: CaseStatus,
    sanction: Option<Sanction>,
    note: Option<&str>,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let closed = to.is_closed().then_some(now);
    let sanction = sanction.map(Sanction::code);
    diesel::update(pc::table.find(case))
        .set((
            pc::status.eq(to.code()),
            pc::sanction.eq(sanction),
            pc::closed_at.eq(closed),
            pc::updated_at.eq(now),
        ))
        .execute(conn)?;
    append(
        conn,
        kr,
        NewEvent {
            status: Some(to.code()),
            sanction,
            note,
            ..NewEvent::of(
                case,
                by,
                now,
                if to.is_closed() { "closed" } else { "status" },
            )
        },
    )
}

/// Appends a note (sealed).
pub fn add_note(
    conn: &mut PgConnection,
    kr: &Keyring,
    case: Uuid,
    note: &str,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    touch(conn, case, now)?;
    append(
        conn,
        kr,
        NewEvent {
            note: Some(note),
            ..NewEvent::of(case, by, now, "note")
        },
    )
}

/// One row of a case's history (note opened).
pub struct HistoryRow {
    pub actor: Uuid,
    pub at: DateTime<Utc>,
    pub action: String,
    pub status: Option<String>,
    pub owner: Option<Uuid>,
    pub sanction: Option<String>,
    pub alerts: Option<i32>,
    pub note: Option<String>,
}

type EventRow = (
    Uuid,
    Uuid,
    DateTime<Utc>,
    String,
    Option<String>,
    Option<Uuid>,
    Option<String>,
    Option<i32>,
    Option<Vec<u8>>,
);

/// A case's history, oldest first.
pub fn history(
    conn: &mut PgConnection,
    kr: &Keyring,
    case: Uuid,
) -> Result<Vec<HistoryRow>, AppError> {
    let rows: Vec<EventRow> = ev::table
        .filter(ev::case_id.eq(case))
        .order(ev::seq)
        .select((
            ev::id,
            ev::actor,
            ev::at,
            ev::action,
            ev::status,
            ev::owner,
            ev::sanction,
            ev::alerts,
            ev::note_sealed,
        ))
        .load(conn)?;
    rows.into_iter()
        .map(
            |(id, actor, at, action, status, owner, sanction, alerts, sealed)| {
                Ok(HistoryRow {
                    actor,
                    at,
                    action,
                    status,
                    owner,
                    sanction,
                    alerts,
                    note: match sealed {
                        Some(s) => Some(kr.open_str(&NOTE.at(id), &s)?),
                        None => None,
                    },
                })
            },
        )
        .collect()
}

/// The alerts of a case, newest first.
pub fn alerts_of(conn: &mut PgConnection, case: Uuid) -> Result<Vec<Alert>, AppError> {
    Ok(ca::table
        .inner_join(a::table)
        .filter(ca::case_id.eq(case))
        .order((a::created_at.desc(), a::id))
        .select(Alert::as_select())
        .load(conn)?)
}

/// Cases, newest first: the open ones (open, investigating) or those of one status.
pub fn list(
    conn: &mut PgConnection,
    status: Option<CaseStatus>,
    limit: i64,
) -> Result<Vec<(Case, i64)>, AppError> {
    let mut q = pc::table.into_boxed();
    q = match status {
        Some(s) => q.filter(pc::status.eq(s.code())),
        None => q.filter(pc::closed_at.is_null()),
    };
    let cases: Vec<Case> = q
        .order((pc::opened_at.desc(), pc::id))
        .limit(limit)
        .select(Case::as_select())
        .load(conn)?;
    let ids: Vec<Uuid> = cases.iter().map(|c| c.id).collect();
    let counts: Vec<(Uuid, i64)> = ca::table
        .filter(ca::case_id.eq_any(&ids))
        .group_by(ca::case_id)
        .select((ca::case_id, diesel::dsl::count_star()))
        .load(conn)?;
    Ok(cases
        .into_iter()
        .map(|c| {
            let n = counts
                .iter()
                .find(|(id, _)| *id == c.id)
                .map_or(0, |(_, n)| *n);
            (c, n)
        })
        .collect())
}

/// Where an alert stands: not in a case, in an open case, in a closed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertStatus {
    New,
    InCase,
    Closed,
}

impl AlertStatus {
    pub const ALL: [AlertStatus; 3] = [AlertStatus::New, AlertStatus::InCase, AlertStatus::Closed];

    pub fn code(self) -> &'static str {
        match self {
            AlertStatus::New => "new",
            AlertStatus::InCase => "in-case",
            AlertStatus::Closed => "closed",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// The alert list's filters (all optional).
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    pub status: Option<AlertStatus>,
    pub kind: Option<&'static str>,
    pub severity: Option<&'static str>,
}

/// The case an alert belongs to: its id and status.
pub type CaseOf = (Uuid, String);

/// One page of alerts, newest first, after the cursor alert `before` (exclusive), each
/// with its case (id, status) if any. Returns at most `limit` rows.
pub fn alert_page(
    conn: &mut PgConnection,
    filter: &AlertFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Alert, Option<CaseOf>)>, AppError> {
    let mut q = a::table.into_boxed();
    if let Some(kind) = filter.kind {
        q = q.filter(a::kind.eq(kind));
    }
    if let Some(severity) = filter.severity {
        q = q.filter(a::severity.eq(severity));
    }
    let in_case = ca::table.select(ca::alert_id);
    let closed = ca::table
        .inner_join(pc::table)
        .filter(pc::closed_at.is_not_null())
        .select(ca::alert_id);
    q = match filter.status {
        None => q,
        Some(AlertStatus::New) => q.filter(diesel::dsl::not(a::id.eq_any(in_case))),
        Some(AlertStatus::InCase) => q
            .filter(a::id.eq_any(in_case))
            .filter(diesel::dsl::not(a::id.eq_any(closed))),
        Some(AlertStatus::Closed) => q.filter(a::id.eq_any(closed)),
    };
    if let Some(cursor) = before {
        // Keyset: strictly after the cursor in (created_at desc, id asc) order.
        let at: Option<DateTime<Utc>> = a::table
            .find(cursor)
            .select(a::created_at)
            .first(conn)
            .optional()?;
        let Some(at) = at else {
            return Ok(Vec::new());
        };
        q = q.filter(
            a::created_at
                .lt(at)
                .or(a::created_at.eq(at).and(a::id.gt(cursor))),
        );
    }
    let alerts: Vec<Alert> = q
        .order((a::created_at.desc(), a::id))
        .limit(limit)
        .select(Alert::as_select())
        .load(conn)?;
    let ids: Vec<Uuid> = alerts.iter().map(|a| a.id).collect();
    let cases: Vec<(Uuid, Uuid, String)> = ca::table
        .inner_join(pc::table)
        .filter(ca::alert_id.eq_any(&ids))
        .select((ca::alert_id, pc::id, pc::status))
        .load(conn)?;
    Ok(alerts
        .into_iter()
        .map(|al| {
            let case = cases
                .iter()
                .find(|(alert, _, _)| *alert == al.id)
                .map(|(_, c, s)| (*c, s.clone()));
            (al, case)
        })
        .collect())
}

/// One alert with its case (id, status) if it is in one.
pub fn alert_with_case(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(Alert, Option<CaseOf>)>, AppError> {
    let Some(alert) = a::table
        .find(id)
        .select(Alert::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let case: Option<CaseOf> = ca::table
        .inner_join(pc::table)
        .filter(ca::alert_id.eq(id))
        .select((pc::id, pc::status))
        .first(conn)
        .optional()?;
    Ok(Some((alert, case)))
}

/// The dashboard's counts: open alerts (not in a closed case) by severity code, and open
/// cases (open or investigating).
pub fn counts(conn: &mut PgConnection) -> Result<(Vec<(String, i64)>, i64), AppError> {
    let closed = ca::table
        .inner_join(pc::table)
        .filter(pc::closed_at.is_not_null())
        .select(ca::alert_id);
    let by_severity: Vec<(String, i64)> = a::table
        .filter(diesel::dsl::not(a::id.eq_any(closed)))
        .group_by(a::severity)
        .select((a::severity, diesel::dsl::count_star()))
        .load(conn)?;
    let open_cases: i64 = pc::table
        .filter(pc::closed_at.is_null())
        .count()
        .get_result(conn)?;
    Ok((by_severity, open_cases))
}
