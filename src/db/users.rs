//! Users, roles and care relationships: who may do what, read fresh on every request so
//! that a removed role or a disabled user takes effect immediately.

use crate::db::schema::{access_changes, care_team_members, patients, role_assignments, users};
use crate::domain::{FacilityId, PatientId, UserId};
use crate::error::AppError;
use crate::policy::Role;
use diesel::prelude::*;

/// A person (signs in through the identity provider) or a service client
/// (client-credentials); serialised as `person` / `service`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserKind {
    Person,
    Service,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Person => "person",
            UserKind::Service => "service",
        }
    }

    /// The kind stored in `users.kind` (a CHECK constraint keeps it to these two).
    fn from_db(s: &str) -> Result<UserKind, AppError> {
        match s {
            "person" => Ok(UserKind::Person),
            "service" => Ok(UserKind::Service),
            _ => Err(AppError::internal("unknown user kind in the database")),
        }
    }
}

/// A user as policy sees it.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: UserId,
    /// Person or service, as stored: the request's context follows this, never the
    /// shape of the token that named the account.
    pub kind: UserKind,
    pub disabled: bool,
    pub facility_id: Option<FacilityId>,
    pub patient_id: Option<PatientId>,
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
            users::id.eq(UserId::new()),
            users::issuer.eq(issuer),
            users::subject.eq(subject),
            users::kind.eq(kind.as_str()),
        ))
        .on_conflict((users::issuer, users::subject))
        .do_nothing()
        .execute(conn)?;
    find(conn, issuer, subject)?.ok_or_else(|| AppError::internal("user vanished after insert"))
}

/// Where a person's family-name index came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilySource {
    /// The sign-in provider's `family_name` claim (ID token or bearer token).
    Provider,
    /// An administrator (audited, with a reason); a later claim does not overwrite it.
    Admin,
}

impl FamilySource {
    pub fn as_str(self) -> &'static str {
        match self {
            FamilySource::Provider => "provider",
            FamilySource::Admin => "admin",
        }
    }
}

/// Stores a person's family name as its blind index only (computed by the caller with
/// `Keyring::blind_index(BlindKind::Family, ..)`, the patients' normalisation and key).
/// A provider's value never replaces an administrator's; an unchanged value writes
/// nothing. Returns whether the row changed.
pub fn set_family_index(
    conn: &mut PgConnection,
    user_id: UserId,
    index: &[u8],
    source: FamilySource,
) -> Result<bool, AppError> {
    let target = users::table.filter(users::id.eq(user_id)).filter(
        users::family_index
            .is_distinct_from(index)
            .or(users::family_index_source.is_distinct_from(source.as_str())),
    );
    let changed = match source {
        FamilySource::Admin => diesel::update(target)
            .set((
                users::family_index.eq(index),
                users::family_index_source.eq(source.as_str()),
            ))
            .execute(conn)?,
        FamilySource::Provider => {
            diesel::update(target.filter(users::family_index_source.is_distinct_from("admin")))
                .set((
                    users::family_index.eq(index),
                    users::family_index_source.eq(source.as_str()),
                ))
                .execute(conn)?
        }
    };
    Ok(changed > 0)
}

/// An administrator sets (`Some`, the blind index) or clears (`None`) a person's
/// family-name index, keeping the reason in the access-change history. A set value is
/// marked `admin` (a later claim does not replace it); a cleared one has no source, so the
/// provider's claim applies again. Returns whether the row changed (nothing is recorded
/// otherwise).
pub fn admin_family_index(
    conn: &mut PgConnection,
    user_id: UserId,
    index: Option<&[u8]>,
    reason: &str,
    by: Option<UserId>,
) -> Result<bool, AppError> {
    let (changed, change) = match index {
        Some(index) => (
            set_family_index(conn, user_id, index, FamilySource::Admin)?,
            Change::FamilyNameSet,
        ),
        None => {
            let n = diesel::update(
                users::table
                    .filter(users::id.eq(user_id))
                    .filter(users::family_index.is_not_null()),
            )
            .set((
                users::family_index.eq(None::<Vec<u8>>),
                users::family_index_source.eq(None::<String>),
            ))
            .execute(conn)?;
            (n > 0, Change::FamilyNameCleared)
        }
    };
    if changed {
        record(conn, user_id, change, reason, by)?;
    }
    Ok(changed)
}

/// The user with this id, with its (issuer, subject); `None` if it does not exist.
pub fn by_id(
    conn: &mut PgConnection,
    id: UserId,
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
    UserId,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<FacilityId>,
    Option<PatientId>,
    Option<String>,
);

/// The user for (issuer, subject) if it exists; never creates one (a refused sign-in must
/// not add anybody to the users table).
pub fn find(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
) -> Result<Option<UserRecord>, AppError> {
    let rows: Vec<UserRoleRow> = users::table
        .left_join(role_assignments::table)
        .filter(users::issuer.eq(issuer).and(users::subject.eq(subject)))
        .select((
            users::id,
            users::kind,
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
        kind: UserKind::from_db(&first.1)?,
        disabled: first.2.is_some(),
        facility_id: first.3,
        patient_id: first.4,
        // A role code we no longer know grants nothing.
        roles: rows
            .iter()
            .filter_map(|r| r.5.as_deref().and_then(Role::parse))
            .collect(),
    }))
}

/// The stored family-name index of a person and where it came from (so that an
/// unchanged provider claim costs no statement).
pub type StoredFamily = (Option<Vec<u8>>, Option<String>);

/// Whether a provider's family-name `index` would change the stored one: not over an
/// administrator's value, and not when it is already stored from the provider
/// ([`set_family_index`] applies the same rule in SQL; this only spares the no-op UPDATE).
pub fn family_index_changes(stored: &StoredFamily, index: &[u8]) -> bool {
    match stored {
        (_, Some(source)) if source == FamilySource::Admin.as_str() => false,
        (Some(old), Some(source)) => {
            old.as_slice() != index || source != FamilySource::Provider.as_str()
        }
        _ => true,
    }
}

/// One row of [`find_with_facts`]: the user with one of its roles, and the facts of the
/// asked-for patient (all NULL when there is no such live patient).
#[derive(diesel::QueryableByName)]
struct UserFactsRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: UserId,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    disabled: bool,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    facility_id: Option<FacilityId>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    patient_id: Option<PatientId>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    role: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bytea>)]
    family_index: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    family_index_source: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    p_facility_id: Option<FacilityId>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    p_on_care_team: bool,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    p_confidentiality: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    p_grant: Option<uuid::Uuid>,
}

/// The statement of [`find_with_facts`]: fixed SQL and bind parameters only, so diesel
/// prepares it once per connection (cached by its text) instead of parsing and planning
/// it on every request.
struct UserFactsQuery<'a> {
    issuer: &'a str,
    subject: &'a str,
    patient: Option<uuid::Uuid>,
    now: chrono::DateTime<chrono::Utc>,
}

impl diesel::query_builder::QueryId for UserFactsQuery<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for UserFactsQuery<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl RunQueryDsl<PgConnection> for UserFactsQuery<'_> {}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for UserFactsQuery<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
        // The same facts as `patient_facts` (care team, confidentiality, the active grant
        // with the latest expiry) and the same user and roles as `find`.
        out.push_sql(
            "SELECT u.id, u.kind, u.disabled_at IS NOT NULL AS disabled, u.facility_id, \
             u.patient_id, r.role, u.family_index, u.family_index_source, \
             p.facility_id AS p_facility_id, \
             (p.id IS NOT NULL AND EXISTS (SELECT 1 FROM care_team_members c \
               WHERE c.patient_id = p.id AND c.user_id = u.id)) AS p_on_care_team, \
             p.confidentiality AS p_confidentiality, \
             (SELECT g.id FROM break_glass_grants g WHERE g.user_id = u.id \
               AND g.patient_id = p.id AND g.status = 'active' AND g.expires_at > ",
        );
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(
            " ORDER BY g.expires_at DESC LIMIT 1) AS p_grant \
             FROM users u LEFT JOIN role_assignments r ON r.user_id = u.id \
             LEFT JOIN patients p ON p.id = ",
        );
        out.push_bind_param::<Nullable<SqlUuid>, _>(&self.patient)?;
        out.push_sql(" AND p.deleted_at IS NULL WHERE u.issuer = ");
        out.push_bind_param::<Text, _>(&self.issuer)?;
        out.push_sql(" AND u.subject = ");
        out.push_bind_param::<Text, _>(&self.subject)?;
        Ok(())
    }
}

/// [`find`] and, in the SAME statement, [`patient_facts`] of `patient` for that user (a
/// read's principal and its subject's facts in one round trip). `None`: no such user
/// (the caller creates it with [`user_for`]). The facts are `None` when `patient` is
/// `None` or no such live patient exists. Also the user's stored family-name index.
pub fn find_with_facts(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
    patient: Option<PatientId>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<
    Option<(
        UserRecord,
        StoredFamily,
        Option<crate::policy::PatientFacts>,
    )>,
    AppError,
> {
    let rows: Vec<UserFactsRow> = UserFactsQuery {
        issuer,
        subject,
        patient: patient.map(|p| p.0),
        now,
    }
    .load(conn)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let user = UserRecord {
        id: first.id,
        kind: UserKind::from_db(&first.kind)?,
        disabled: first.disabled,
        facility_id: first.facility_id,
        patient_id: first.patient_id,
        // A role code we no longer know grants nothing.
        roles: rows
            .iter()
            .filter_map(|r| r.role.as_deref().and_then(Role::parse))
            .collect(),
    };
    let facts = match (patient, first.p_facility_id, &first.p_confidentiality) {
        (Some(patient_id), Some(facility_id), Some(level)) => Some(crate::policy::PatientFacts {
            patient_id,
            facility_id,
            on_care_team: first.p_on_care_team,
            confidentiality: crate::db::break_glass::parse_level(level)?,
            grant: first.p_grant.map(crate::domain::GrantId),
        }),
        _ => None,
    };
    let family = (
        first.family_index.clone(),
        first.family_index_source.clone(),
    );
    Ok(Some((user, family, facts)))
}

/// The policy facts of a live patient, if it exists: its facility, whether `user_id` is
/// on its care team, its confidentiality, and `user_id`'s active break-glass grant for it
/// as of `now` (the application clock) — one query.
pub fn patient_facts(
    conn: &mut PgConnection,
    patient_id: PatientId,
    user_id: UserId,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<crate::policy::PatientFacts>, AppError> {
    let member = diesel::dsl::exists(
        care_team_members::table.filter(
            care_team_members::patient_id
                .eq(patient_id)
                .and(care_team_members::user_id.eq(user_id)),
        ),
    );
    let grant = crate::db::break_glass::active_grant_of(user_id, patient_id, now).single_value();
    let row: Option<(FacilityId, bool, String, Option<uuid::Uuid>)> = patients::table
        .filter(
            patients::id
                .eq(patient_id)
                .and(patients::deleted_at.is_null()),
        )
        .select((
            patients::facility_id,
            member,
            patients::confidentiality,
            grant,
        ))
        .first(conn)
        .optional()?;
    row.map(|(facility_id, on_care_team, level, grant)| {
        Ok(crate::policy::PatientFacts {
            patient_id,
            facility_id,
            on_care_team,
            confidentiality: crate::db::break_glass::parse_level(&level)?,
            grant: grant.map(crate::domain::GrantId),
        })
    })
    .transpose()
}

/// One kind of access change kept in `access_changes` with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    RoleGranted(Role),
    RoleRevoked(Role),
    Disabled,
    Enabled,
    CareTeamAdded(PatientId),
    CareTeamRemoved(PatientId),
    FacilitySet(FacilityId),
    FamilyNameSet,
    FamilyNameCleared,
}

/// Appends one access change and its reason to the history (in the caller's
/// transaction, together with the change itself).
fn record(
    conn: &mut PgConnection,
    user_id: UserId,
    change: Change,
    reason: &str,
    by: Option<UserId>,
) -> Result<(), AppError> {
    let (name, role, patient, facility) = match change {
        Change::RoleGranted(r) => ("role_granted", Some(r.as_str()), None, None),
        Change::RoleRevoked(r) => ("role_revoked", Some(r.as_str()), None, None),
        Change::Disabled => ("disabled", None, None, None),
        Change::Enabled => ("enabled", None, None, None),
        Change::CareTeamAdded(p) => ("care_team_added", None, Some(p), None),
        Change::CareTeamRemoved(p) => ("care_team_removed", None, Some(p), None),
        Change::FacilitySet(f) => ("facility_set", None, None, Some(f)),
        Change::FamilyNameSet => ("family_name_set", None, None, None),
        Change::FamilyNameCleared => ("family_name_cleared", None, None, None),
    };
    diesel::insert_into(access_changes::table)
        .values((
            access_changes::user_id.eq(user_id),
            access_changes::change.eq(name),
            access_changes::role.eq(role),
            access_changes::patient_id.eq(patient),
            access_changes::facility_id.eq(facility),
            access_changes::reason.eq(reason),
            access_changes::changed_by.eq(by),
        ))
        .execute(conn)?;
    Ok(())
}

/// Grants a role (idempotent); the reason is required and kept, with the grant and in
/// the access-change history.
pub fn grant_role(
    conn: &mut PgConnection,
    user_id: UserId,
    role: Role,
    reason: &str,
    granted_by: Option<UserId>,
) -> Result<(), AppError> {
    conn.transaction(|conn| {
        let n = diesel::insert_into(role_assignments::table)
            .values((
                role_assignments::user_id.eq(user_id),
                role_assignments::role.eq(role.as_str()),
                role_assignments::reason.eq(reason),
                role_assignments::granted_by.eq(granted_by),
            ))
            .on_conflict((role_assignments::user_id, role_assignments::role))
            .do_nothing()
            .execute(conn)?;
        if n > 0 {
            record(conn, user_id, Change::RoleGranted(role), reason, granted_by)?;
        }
        Ok(())
    })
}

/// Removes a role, keeping the reason in the history; returns whether it was held.
pub fn revoke_role(
    conn: &mut PgConnection,
    user_id: UserId,
    role: Role,
    reason: &str,
    revoked_by: Option<UserId>,
) -> Result<bool, AppError> {
    conn.transaction(|conn| {
        let n = diesel::delete(
            role_assignments::table.filter(
                role_assignments::user_id
                    .eq(user_id)
                    .and(role_assignments::role.eq(role.as_str())),
            ),
        )
        .execute(conn)?;
        if n > 0 {
            record(conn, user_id, Change::RoleRevoked(role), reason, revoked_by)?;
        }
        Ok(n > 0)
    })
}

/// Adds a care relationship (idempotent), keeping the reason in the history.
pub fn add_to_care_team(
    conn: &mut PgConnection,
    patient_id: PatientId,
    user_id: UserId,
    reason: &str,
    added_by: Option<UserId>,
) -> Result<(), AppError> {
    conn.transaction(|conn| {
        let n = diesel::insert_into(care_team_members::table)
            .values((
                care_team_members::patient_id.eq(patient_id),
                care_team_members::user_id.eq(user_id),
                care_team_members::added_by.eq(added_by),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        if n > 0 {
            let change = Change::CareTeamAdded(patient_id);
            record(conn, user_id, change, reason, added_by)?;
        }
        Ok(())
    })
}

pub fn set_facility(
    conn: &mut PgConnection,
    user_id: UserId,
    facility: Option<FacilityId>,
) -> Result<(), AppError> {
    diesel::update(users::table.find(user_id))
        .set(users::facility_id.eq(facility))
        .execute(conn)?;
    Ok(())
}

/// Moves a user to a facility (an access change: facility-scoped roles see that
/// facility's patients from the next request), keeping the reason in the history. Returns
/// whether the user was moved (`false` when already there: nothing is recorded).
pub fn move_to_facility(
    conn: &mut PgConnection,
    user_id: UserId,
    facility: FacilityId,
    reason: &str,
    by: Option<UserId>,
) -> Result<bool, AppError> {
    conn.transaction(|conn| {
        let target = users::table.find(user_id).filter(
            users::facility_id
                .is_null()
                .or(users::facility_id.ne(facility)),
        );
        let n = diesel::update(target)
            .set(users::facility_id.eq(Some(facility)))
            .execute(conn)?;
        if n > 0 {
            record(conn, user_id, Change::FacilitySet(facility), reason, by)?;
        }
        Ok(n > 0)
    })
}

/// Ends every console session of a user (role removed, disabled, authenticator reset,
/// or revoked by an administrator): their next console request lands on the sign-in page.
pub fn end_console_sessions(conn: &mut PgConnection, user_id: UserId) -> Result<usize, AppError> {
    use crate::db::schema::console_sessions as cs;
    Ok(diesel::delete(cs::table.filter(cs::user_id.eq(user_id))).execute(conn)?)
}

/// Forgets the user's console authenticator (TOTP secret): their next
/// sign-in enrols a new one. Returns whether there was one.
pub fn forget_authenticator(conn: &mut PgConnection, user_id: UserId) -> Result<bool, AppError> {
    use crate::db::schema::console_totp as ct;
    Ok(diesel::delete(ct::table.filter(ct::user_id.eq(user_id))).execute(conn)? > 0)
}

pub fn link_patient(
    conn: &mut PgConnection,
    user_id: UserId,
    patient: Option<PatientId>,
) -> Result<(), AppError> {
    diesel::update(users::table.find(user_id))
        .set(users::patient_id.eq(patient))
        .execute(conn)?;
    Ok(())
}

/// Disables or enables a user, keeping the reason in the history when the state changes.
pub fn set_disabled(
    conn: &mut PgConnection,
    user_id: UserId,
    disabled: bool,
    reason: &str,
    by: Option<UserId>,
) -> Result<(), AppError> {
    conn.transaction(|conn| {
        let target = users::table
            .find(user_id)
            .filter(users::disabled_at.is_null().eq(disabled));
        let n = diesel::update(target)
            .set(users::disabled_at.eq(disabled.then(chrono::Utc::now)))
            .execute(conn)?;
        if n > 0 {
            let change = if disabled {
                Change::Disabled
            } else {
                Change::Enabled
            };
            record(conn, user_id, change, reason, by)?;
        }
        Ok(())
    })
}

/// Removes a care relationship, keeping the reason in the history; returns whether it
/// existed.
pub fn remove_from_care_team(
    conn: &mut PgConnection,
    patient_id: PatientId,
    user_id: UserId,
    reason: &str,
    by: Option<UserId>,
) -> Result<bool, AppError> {
    conn.transaction(|conn| {
        let n = diesel::delete(
            care_team_members::table.filter(
                care_team_members::patient_id
                    .eq(patient_id)
                    .and(care_team_members::user_id.eq(user_id)),
            ),
        )
        .execute(conn)?;
        if n > 0 {
            let change = Change::CareTeamRemoved(patient_id);
            record(conn, user_id, change, reason, by)?;
        }
        Ok(n > 0)
    })
}

/// One entry of a user's access-change history, newest first in [`UserSummary`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccessChange {
    pub change: String,
    pub role: Option<String>,
    pub patient_id: Option<PatientId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facility_id: Option<FacilityId>,
    pub reason: String,
    pub changed_by: Option<UserId>,
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

/// How many history entries one user view carries (newest first).
pub const HISTORY_SHOWN: i64 = 50;

type ChangeRow = (
    String,
    Option<String>,
    Option<PatientId>,
    Option<FacilityId>,
    String,
    Option<UserId>,
    chrono::DateTime<chrono::Utc>,
);

/// The newest [`HISTORY_SHOWN`] access changes of a user, newest first.
pub fn history(conn: &mut PgConnection, user_id: UserId) -> Result<Vec<AccessChange>, AppError> {
    let rows: Vec<ChangeRow> = access_changes::table
        .filter(access_changes::user_id.eq(user_id))
        .order(access_changes::seq.desc())
        .limit(HISTORY_SHOWN)
        .select((
            access_changes::change,
            access_changes::role,
            access_changes::patient_id,
            access_changes::facility_id,
            access_changes::reason,
            access_changes::changed_by,
            access_changes::changed_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| AccessChange {
            change: r.0,
            role: r.1,
            patient_id: r.2,
            facility_id: r.3,
            reason: r.4,
            changed_by: r.5,
            changed_at: r.6,
        })
        .collect())
}

/// A user as the administration API lists it (no PHI: no patient link is shown).
#[derive(Clone, Debug, serde::Serialize)]
pub struct UserSummary {
    pub id: UserId,
    pub issuer: String,
    pub subject: String,
    pub kind: UserKind,
    pub display_name: Option<String>,
    pub facility: Option<FacilityId>,
    pub roles: Vec<String>,
    pub disabled: bool,
    /// Only in the one-user view (`GET /api/admin/users/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AccessChange>>,
}

type UserRow = (
    UserId,
    String,
    String,
    String,
    Option<String>,
    Option<FacilityId>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Users ordered by id, after `after` (keyset paging), at most `limit`.
pub fn list_users(
    conn: &mut PgConnection,
    after: Option<UserId>,
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
    after: Option<UserId>,
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
    let ids: Vec<UserId> = rows.iter().map(|r| r.0).collect();
    let roles: Vec<(UserId, String)> = role_assignments::table
        .filter(role_assignments::user_id.eq_any(&ids))
        .select((role_assignments::user_id, role_assignments::role))
        .order((role_assignments::user_id, role_assignments::role))
        .load(conn)?;
    rows.into_iter()
        .map(|r| {
            Ok(UserSummary {
                id: r.0,
                roles: roles
                    .iter()
                    .filter(|(u, _)| *u == r.0)
                    .map(|(_, role)| role.clone())
                    .collect(),
                issuer: r.1,
                subject: r.2,
                kind: UserKind::from_db(&r.3)?,
                display_name: r.4,
                facility: r.5,
                disabled: r.6.is_some(),
                history: None,
            })
        })
        .collect()
}

/// The patients on whose care team the user is (internal ids only), oldest first.
pub fn care_teams_of(conn: &mut PgConnection, user_id: UserId) -> Result<Vec<PatientId>, AppError> {
    Ok(care_team_members::table
        .filter(care_team_members::user_id.eq(user_id))
        .select(care_team_members::patient_id)
        .order(care_team_members::patient_id)
        .load(conn)?)
}

/// One user as [`list_users`] shows it.
pub fn get_user(conn: &mut PgConnection, id: UserId) -> Result<Option<UserSummary>, AppError> {
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
        kind: UserKind::from_db(&row.3)?,
        display_name: row.4,
        facility: row.5,
        roles,
        disabled: row.6.is_some(),
        history: None,
    }))
}

/// A facility as the administration API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FacilitySummary {
    pub id: FacilityId,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub fn list_facilities(conn: &mut PgConnection) -> Result<Vec<FacilitySummary>, AppError> {
    use crate::db::schema::facilities;
    let rows: Vec<(FacilityId, String, chrono::DateTime<chrono::Utc>)> = facilities::table
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

pub fn facility_exists(conn: &mut PgConnection, id: FacilityId) -> Result<bool, AppError> {
    use crate::db::schema::facilities;
    Ok(diesel::select(diesel::dsl::exists(facilities::table.find(id))).get_result(conn)?)
}

/// The user's kind for (issuer, subject), if known.
pub fn kind_of(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
) -> Result<Option<UserKind>, AppError> {
    let kind: Option<String> = users::table
        .filter(users::issuer.eq(issuer).and(users::subject.eq(subject)))
        .select(users::kind)
        .first(conn)
        .optional()?;
    kind.as_deref().map(UserKind::from_db).transpose()
}

/// The roles `id` holds now, with the user's row locked until the caller's transaction
/// ends, so that two administrators changing the same person are decided one after the
/// other (the separation-of-duties rules look at the roles held). `None`: no such user.
pub fn roles_locked(conn: &mut PgConnection, id: UserId) -> Result<Option<Vec<Role>>, AppError> {
    let found: Option<UserId> = users::table
        .find(id)
        .select(users::id)
        .for_update()
        .first(conn)
        .optional()?;
    if found.is_none() {
        return Ok(None);
    }
    let names: Vec<String> = role_assignments::table
        .filter(role_assignments::user_id.eq(id))
        .select(role_assignments::role)
        .load(conn)?;
    Ok(Some(names.iter().filter_map(|r| Role::parse(r)).collect()))
}

/// Whether a live (not deleted) patient exists.
pub fn patient_exists(conn: &mut PgConnection, patient_id: PatientId) -> Result<bool, AppError> {
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
