//! Users, roles and care relationships: who may do what, read fresh on every request so
//! that a removed role or a disabled user takes effect immediately.

use crate::db::schema::{care_team_members, patients, role_assignments, users};
use crate::error::AppError;
use crate::policy::Role;
use diesel::prelude::*;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserKind {
    Person,
    Service,
}

impl UserKind {
    fn as_str(self) -> &'static str {
        match self {
            UserKind::Person => "person",
            UserKind::Service => "service",
        }
    }
}

/// A user as policy sees it.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: Uuid,
    pub disabled: bool,
    pub facility_id: Option<Uuid>,
    pub patient_id: Option<Uuid>,
    pub roles: Vec<Role>,
}

/// The user for (issuer, subject), created on first sight with no roles (default deny).
pub fn user_for(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
    kind: UserKind,
) -> Result<UserRecord, AppError> {
    if let Some(user) = find(conn, issuer, subject)? {
        return Ok(user);
    }
    diesel::insert_into(users::table)
        .values((
            users::id.eq(Uuid::new_v4()),
            users::issuer.eq(issuer),
            users::subject.eq(subject),
            users::kind.eq(kind.as_str()),
        ))
        .on_conflict((users::issuer, users::subject))
        .do_nothing()
        .execute(conn)?;
    find(conn, issuer, subject)?.ok_or_else(|| AppError::internal("user vanished after insert"))
}

/// The user with this id, with its (issuer, subject); `None` if it does not exist.
pub fn by_id(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(UserRecord, String, String)>, AppError> {
    let key: Option<(String, String)> = users::table
        .filter(users::id.eq(id))
        .select((users::issuer, users::subject))
        .first(conn)
        .optional()?;
    let Some((issuer, subject)) = key else {
        return Ok(None);
    };
    Ok(find(conn, &issuer, &subject)?.map(|u| (u, issuer, subject)))
}

/// A user joined with one of its roles (or none).
type UserRoleRow = (
    Uuid,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
);

fn find(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
) -> Result<Option<UserRecord>, AppError> {
    let rows: Vec<UserRoleRow> = users::table
        .left_join(role_assignments::table)
        .filter(users::issuer.eq(issuer).and(users::subject.eq(subject)))
        .select((
            users::id,
            users::disabled_at,
            users::facility_id,
            users::patient_id,
            role_assignments::role.nullable(),
        ))
        .load(conn)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(UserRecord {
        id: first.0,
        disabled: first.1.is_some(),
        facility_id: first.2,
        patient_id: first.3,
        // A role code we no longer know grants nothing.
        roles: rows
            .iter()
            .filter_map(|r| r.4.as_deref().and_then(Role::parse))
            .collect(),
    }))
}

/// The facility and care-team membership of a live patient, if it exists.
pub fn patient_facts(
    conn: &mut PgConnection,
    patient_id: Uuid,
    user_id: Uuid,
) -> Result<Option<crate::policy::PatientFacts>, AppError> {
    let member = diesel::dsl::exists(
        care_team_members::table.filter(
            care_team_members::patient_id
                .eq(patient_id)
                .and(care_team_members::user_id.eq(user_id)),
        ),
    );
    let row: Option<(Uuid, bool)> = patients::table
        .filter(
            patients::id
                .eq(patient_id)
                .and(patients::deleted_at.is_null()),
        )
        .select((patients::facility_id, member))
        .first(conn)
        .optional()?;
    Ok(
        row.map(|(facility_id, on_care_team)| crate::policy::PatientFacts {
            patient_id,
            facility_id,
            on_care_team,
        }),
    )
}

/// Grants a role (idempotent); the reason is required and kept.
pub fn grant_role(
    conn: &mut PgConnection,
    user_id: Uuid,
    role: Role,
    reason: &str,
    granted_by: Option<Uuid>,
) -> Result<(), AppError> {
    diesel::insert_into(role_assignments::table)
        .values((
            role_assignments::user_id.eq(user_id),
            role_assignments::role.eq(role.as_str()),
            role_assignments::reason.eq(reason),
            role_assignments::granted_by.eq(granted_by),
        ))
        .on_conflict((role_assignments::user_id, role_assignments::role))
        .do_nothing()
        .execute(conn)?;
    Ok(())
}

/// Removes a role; returns whether it was held.
pub fn revoke_role(conn: &mut PgConnection, user_id: Uuid, role: Role) -> Result<bool, AppError> {
    let n = diesel::delete(
        role_assignments::table.filter(
            role_assignments::user_id
                .eq(user_id)
                .and(role_assignments::role.eq(role.as_str())),
        ),
    )
    .execute(conn)?;
    Ok(n > 0)
}

pub fn add_to_care_team(
    conn: &mut PgConnection,
    patient_id: Uuid,
    user_id: Uuid,
    added_by: Option<Uuid>,
) -> Result<(), AppError> {
    diesel::insert_into(care_team_members::table)
        .values((
            care_team_members::patient_id.eq(patient_id),
            care_team_members::user_id.eq(user_id),
            care_team_members::added_by.eq(added_by),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(())
}

pub fn set_facility(
    conn: &mut PgConnection,
    user_id: Uuid,
    facility: Option<Uuid>,
) -> Result<(), AppError> {
    diesel::update(users::table.find(user_id))
        .set(users::facility_id.eq(facility))
        .execute(conn)?;
    Ok(())
}

pub fn link_patient(
    conn: &mut PgConnection,
    user_id: Uuid,
    patient: Option<Uuid>,
) -> Result<(), AppError> {
    diesel::update(users::table.find(user_id))
        .set(users::patient_id.eq(patient))
        .execute(conn)?;
    Ok(())
}

pub fn set_disabled(
    conn: &mut PgConnection,
    user_id: Uuid,
    disabled: bool,
) -> Result<(), AppError> {
    let at = disabled.then(chrono::Utc::now);
    diesel::update(users::table.find(user_id))
        .set(users::disabled_at.eq(at))
        .execute(conn)?;
    Ok(())
}

/// Removes a care relationship; returns whether it existed.
pub fn remove_from_care_team(
    conn: &mut PgConnection,
    patient_id: Uuid,
    user_id: Uuid,
) -> Result<bool, AppError> {
    let n = diesel::delete(
        care_team_members::table.filter(
            care_team_members::patient_id
                .eq(patient_id)
                .and(care_team_members::user_id.eq(user_id)),
        ),
    )
    .execute(conn)?;
    Ok(n > 0)
}

/// A user as the administration API lists it (no PHI: no patient link is shown).
#[derive(Clone, Debug, serde::Serialize)]
pub struct UserSummary {
    pub id: Uuid,
    pub issuer: String,
    pub subject: String,
    pub kind: String,
    pub display_name: Option<String>,
    pub facility: Option<Uuid>,
    pub roles: Vec<String>,
    pub disabled: bool,
}

type UserRow = (
    Uuid,
    String,
    String,
    String,
    Option<String>,
    Option<Uuid>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Users ordered by id, after `after` (keyset paging), at most `limit`.
pub fn list_users(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<UserSummary>, AppError> {
    search_users(conn, &UserFilter::default(), after, limit)
}

/// What the console's user lists narrow by.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    /// Part of the subject or display name (case-insensitive).
    pub text: Option<String>,
    pub kind: Option<UserKind>,
}

/// `text` as a literal `ILIKE` pattern (its `%`, `_` and `\` match themselves).
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Users matching `filter`, ordered by id, after `after` (keyset paging), at most `limit`.
pub fn search_users(
    conn: &mut PgConnection,
    filter: &UserFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<UserSummary>, AppError> {
    let mut query = users::table
        .select((
            users::id,
            users::issuer,
            users::subject,
            users::kind,
            users::display_name,
            users::facility_id,
            users::disabled_at,
        ))
        .order(users::id)
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(users::id.gt(after));
    }
    if let Some(text) = filter.text.as_deref() {
        let pattern = contains_pattern(text);
        query = query.filter(
            users::subject
                .ilike(pattern.clone())
                .or(users::display_name.ilike(pattern)),
        );
    }
    if let Some(kind) = filter.kind {
        query = query.filter(users::kind.eq(kind.as_str()));
    }
    let rows: Vec<UserRow> = query.load(conn)?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let roles: Vec<(Uuid, String)> = role_assignments::table
        .filter(role_assignments::user_id.eq_any(&ids))
        .select((role_assignments::user_id, role_assignments::role))
        .order((role_assignments::user_id, role_assignments::role))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| UserSummary {
            id: r.0,
            roles: roles
                .iter()
                .filter(|(u, _)| *u == r.0)
                .map(|(_, role)| role.clone())
                .collect(),
            issuer: r.1,
            subject: r.2,
            kind: r.3,
            display_name: r.4,
            facility: r.5,
            disabled: r.6.is_some(),
        })
        .collect())
}

/// The patients on whose care team the user is (internal ids only), oldest first.
pub fn care_teams_of(conn: &mut PgConnection, user_id: Uuid) -> Result<Vec<Uuid>, AppError> {
    Ok(care_team_members::table
        .filter(care_team_members::user_id.eq(user_id))
        .select(care_team_members::patient_id)
        .order(care_team_members::patient_id)
        .load(conn)?)
}

/// One user as [`list_users`] shows it.
pub fn get_user(conn: &mut PgConnection, id: Uuid) -> Result<Option<UserSummary>, AppError> {
    let row: Option<UserRow> = users::table
        .find(id)
        .select((
            users::id,
            users::issuer,
            users::subject,
            users::kind,
            users::display_name,
            users::facility_id,
            users::disabled_at,
        ))
        .first(conn)
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let roles: Vec<String> = role_assignments::table
        .filter(role_assignments::user_id.eq(id))
        .select(role_assignments::role)
        .order(role_assignments::role)
        .load(conn)?;
    Ok(Some(UserSummary {
        id: row.0,
        issuer: row.1,
        subject: row.2,
        kind: row.3,
        display_name: row.4,
        facility: row.5,
        roles,
        disabled: row.6.is_some(),
    }))
}

/// A facility as the administration API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FacilitySummary {
    pub id: Uuid,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub fn list_facilities(conn: &mut PgConnection) -> Result<Vec<FacilitySummary>, AppError> {
    use crate::db::schema::facilities;
    let rows: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>)> = facilities::table
        .select((facilities::id, facilities::name, facilities::created_at))
        .order((facilities::name, facilities::id))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, name, created_at)| FacilitySummary {
            id,
            name,
            created_at,
        })
        .collect())
}

pub fn facility_exists(conn: &mut PgConnection, id: Uuid) -> Result<bool, AppError> {
    use crate::db::schema::facilities;
    Ok(diesel::select(diesel::dsl::exists(facilities::table.find(id))).get_result(conn)?)
}

/// The user's kind ("person" or "service") for (issuer, subject), if known.
pub fn kind_of(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
) -> Result<Option<String>, AppError> {
    Ok(users::table
        .filter(users::issuer.eq(issuer).and(users::subject.eq(subject)))
        .select(users::kind)
        .first(conn)
        .optional()?)
}

/// Whether a live (not deleted) patient exists.
pub fn patient_exists(conn: &mut PgConnection, patient_id: Uuid) -> Result<bool, AppError> {
    Ok(diesel::select(diesel::dsl::exists(
        patients::table.filter(
            patients::id
                .eq(patient_id)
                .and(patients::deleted_at.is_null()),
        ),
    ))
    .get_result(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_literal() {
        assert_eq!(contains_pattern("ab"), "%ab%");
        assert_eq!(contains_pattern("5%_x\\"), "%5\\%\\_x\\\\%");
    }
}
