//! The administration operations: ONE typed set, used by the JSON admin API
//! ([`super::api`]), the console pages (`crate::console::pages`) and the `custodian admin`
//! CLI. Each operation knows its audit action ([`Op::audit`]), whether it needs a recent
//! TOTP check in the console ([`Op::needs_step_up`]), its reason rule ([`Op::reason_rule`])
//! and its validation, and is carried out by one function ([`Op::perform`], or
//! [`Op::apply`] on a connection the caller holds) in ONE transaction, so a change and
//! its access-change history entry are written together or not at all.
//!
//! Operations take narrow dependencies: the database, and for registering a service
//! client the issuer its tokens come from. Role rules come from [`crate::policy::admin`].

use crate::audit::{AuditAction, ClientId, Outcome, ResourceType as Kind};
use crate::db::Db;
use crate::db::users::{self, UserKind, UserSummary};
use crate::domain::{FacilityId, PatientId, UserId};
use crate::error::AppError;
use crate::policy::Role;
use crate::policy::admin::{self as rules, SelfChange};
use actix_web::http::StatusCode;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use std::future::Future;
use uuid::Uuid;

/// Shortest and longest accepted `reason` (characters, after trimming).
pub const REASON_MIN: usize = 3;
pub const REASON_MAX: usize = 500;
/// Longest facility name (characters).
pub const FACILITY_NAME_MAX: usize = 200;

/// One change an administrator asked for. Stored as JSON while it waits for a console
/// step-up, so it is performed later exactly as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    GrantRole {
        user: UserId,
        role: String,
        reason: Option<String>,
    },
    RevokeRole {
        user: UserId,
        role: String,
        reason: Option<String>,
    },
    AddCareTeam {
        user: UserId,
        patient: PatientId,
        reason: Option<String>,
    },
    RemoveCareTeam {
        user: UserId,
        patient: PatientId,
        reason: Option<String>,
    },
    SetFacility {
        user: UserId,
        facility: FacilityId,
        reason: Option<String>,
    },
    Disable {
        user: UserId,
        reason: Option<String>,
    },
    Enable {
        user: UserId,
        reason: Option<String>,
    },
    RevokeSessions {
        user: UserId,
    },
    ResetTotp {
        user: UserId,
    },
    CreateClient {
        client_id: String,
        facility: FacilityId,
        roles: Vec<String>,
        reason: Option<String>,
    },
    DisableClient {
        user: UserId,
        reason: Option<String>,
    },
    CreateFacility {
        name: String,
    },
}

/// Whether an operation needs a free-text reason (kept in the access-change history,
/// never in the audit trail or the logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonRule {
    /// It changes who may see what: a reason of [`REASON_MIN`]..=[`REASON_MAX`] characters.
    Required,
    /// A reason may be given; without one, this text is kept.
    Optional(&'static str),
    /// Nothing to keep a reason with.
    None,
}

/// What a successful operation produced.
pub enum Done {
    /// The user after the change.
    User(UserSummary),
    /// The care relationship after the change.
    CareTeam {
        patient: PatientId,
        user: UserId,
        member: bool,
    },
    /// The new facility.
    Facility { id: FacilityId, name: String },
    /// Nothing to show (sessions ended, authenticator reset).
    Nothing,
}

/// What a change touched, for its audit event (internal ids only).
#[derive(Default)]
pub struct Touched {
    pub resource_id: Option<Uuid>,
    pub patients: Vec<PatientId>,
}

impl Touched {
    pub fn user(id: UserId) -> Touched {
        Touched {
            resource_id: Some(id.into()),
            ..Touched::default()
        }
    }
}

/// A performed operation: its result and what it touched.
pub struct Performed {
    pub done: Done,
    pub touched: Touched,
}

/// Who performs an administration change, as the audit trail records it.
pub trait AdminActor {
    /// Our user id of the administrator.
    fn user_id(&self) -> UserId;
    /// Records the one audit event of this change (internal ids only).
    fn record(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<PatientId>,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), AppError>>;
}

/// Runs `work` and records its one audit event: permit on success, error otherwise. If
/// the event cannot be written the caller gets 503 (fail closed).
pub async fn audited<A, T, F>(
    who: &A,
    action: AuditAction,
    kind: Option<Kind>,
    work: F,
) -> Result<T, AppError>
where
    A: AdminActor,
    F: Future<Output = Result<(T, Touched), AppError>>,
{
    match work.await {
        Ok((value, touched)) => {
            who.record(
                action,
                kind.map(|k| (k, touched.resource_id)),
                touched.patients,
                Outcome::Permit,
            )
            .await?;
            Ok(value)
        }
        Err(err) => {
            who.record(action, kind.map(|k| (k, None)), Vec::new(), Outcome::Error)
                .await?;
            Err(err)
        }
    }
}

/// Performs `op` for `who` and records its one audit event (permit or error).
pub async fn run<A: AdminActor>(
    op: Op,
    who: &A,
    db: &Db,
    client_issuer: Option<&str>,
) -> Result<Done, AppError> {
    let (action, kind) = op.audit();
    let by = who.user_id();
    let work = async {
        let p = op.perform(db, Some(by), client_issuer).await?;
        Ok((p.done, p.touched))
    };
    audited(who, action, kind, work).await
}

/// A required free-text reason: 3..=500 characters, no control characters but newlines
/// and tabs. Stored where the schema has a place for it; never audited or logged.
pub fn check_reason(reason: Option<&str>) -> Result<String, AppError> {
    let Some(reason) = reason else {
        return Err(AppError::unprocessable(
            "The field 'reason' is required (3 to 500 characters).",
        ));
    };
    let reason = reason.trim();
    let n = reason.chars().count();
    if !(REASON_MIN..=REASON_MAX).contains(&n) {
        return Err(AppError::unprocessable(
            "The field 'reason' must be 3 to 500 characters long.",
        ));
    }
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(AppError::unprocessable(
            "The field 'reason' must not contain control characters.",
        ));
    }
    Ok(reason.to_string())
}

pub fn parse_role(field: &'static str, text: &str) -> Result<Role, AppError> {
    Role::parse(text).ok_or_else(|| {
        AppError::unprocessable(format!(
            "The field '{field}' must be one of: clinician, billing, patient, admin, privacy_officer, service."
        ))
    })
}

pub fn user_not_found() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The user was not found.")
}

fn unknown_facility() -> AppError {
    AppError::unprocessable("The field 'facility_id' does not name a known facility.")
}

fn refused(why: SelfChange) -> AppError {
    let message = match why {
        SelfChange::OwnAdminRole => {
            "You cannot remove your own admin role; ask another administrator."
        }
        SelfChange::OwnAccountDisabled => "You cannot disable your own account.",
    };
    AppError::client(StatusCode::CONFLICT, message)
}

/// An operation whose input passed validation (roles parsed, reason checked).
enum Valid {
    GrantRole(UserId, Role, String),
    RevokeRole(UserId, Role, String),
    CareTeam {
        user: UserId,
        patient: PatientId,
        reason: String,
        add: bool,
    },
    SetFacility(UserId, FacilityId, String),
    SetDisabled {
        user: UserId,
        disabled: bool,
        reason: String,
        only_clients: bool,
    },
    RevokeSessions(UserId),
    ResetTotp(UserId),
    CreateClient {
        client_id: String,
        facility: FacilityId,
        roles: Vec<Role>,
        reason: String,
        issuer: String,
    },
    CreateFacility(String),
}

impl Op {
    /// The audit action and resource kind of this operation's event.
    pub fn audit(&self) -> (AuditAction, Option<Kind>) {
        let (action, kind) = match self {
            Op::GrantRole { .. } | Op::RevokeRole { .. } => {
                (AuditAction::PermissionChange, Kind::RoleAssignment)
            }
            Op::AddCareTeam { .. } | Op::RemoveCareTeam { .. } => {
                (AuditAction::CareRelationshipChange, Kind::CareRelationship)
            }
            Op::SetFacility { .. }
            | Op::Disable { .. }
            | Op::Enable { .. }
            | Op::ResetTotp { .. } => (AuditAction::PermissionChange, Kind::User),
            Op::RevokeSessions { .. } => (AuditAction::SessionRevoked, Kind::User),
            Op::CreateClient { .. } => (AuditAction::PermissionChange, Kind::Client),
            Op::DisableClient { .. } => (AuditAction::ClientRevoked, Kind::Client),
            Op::CreateFacility { .. } => return (AuditAction::Create, None),
        };
        (action, Some(kind))
    }

    /// Sensitive changes need a TOTP code entered within `console.step_up_secs` when
    /// made in the console. Creating a facility grants nobody anything.
    pub fn needs_step_up(&self) -> bool {
        !matches!(self, Op::CreateFacility { .. })
    }

    /// Whether this operation needs a reason.
    pub fn reason_rule(&self) -> ReasonRule {
        match self {
            Op::GrantRole { .. }
            | Op::RevokeRole { .. }
            | Op::AddCareTeam { .. }
            | Op::RemoveCareTeam { .. }
            | Op::SetFacility { .. }
            | Op::Disable { .. }
            | Op::Enable { .. }
            | Op::DisableClient { .. } => ReasonRule::Required,
            Op::CreateClient { .. } => {
                ReasonRule::Optional("service client registered through the admin API")
            }
            Op::RevokeSessions { .. } | Op::ResetTotp { .. } | Op::CreateFacility { .. } => {
                ReasonRule::None
            }
        }
    }

    fn reason(&self) -> Result<String, AppError> {
        let given = match self {
            Op::GrantRole { reason, .. }
            | Op::RevokeRole { reason, .. }
            | Op::AddCareTeam { reason, .. }
            | Op::RemoveCareTeam { reason, .. }
            | Op::SetFacility { reason, .. }
            | Op::Disable { reason, .. }
            | Op::Enable { reason, .. }
            | Op::DisableClient { reason, .. }
            | Op::CreateClient { reason, .. } => reason.as_deref(),
            Op::RevokeSessions { .. } | Op::ResetTotp { .. } | Op::CreateFacility { .. } => None,
        };
        match (self.reason_rule(), given) {
            (ReasonRule::Required, r) => check_reason(r),
            (ReasonRule::Optional(_), Some(r)) => check_reason(Some(r)),
            (ReasonRule::Optional(default), None) => Ok(default.to_string()),
            (ReasonRule::None, _) => Ok(String::new()),
        }
    }

    /// What the step-up page says is waiting (ids and role codes only, never free text).
    pub fn describe(&self) -> String {
        let role = |r: &str| Role::parse(r).map(Role::as_str).unwrap_or("(unknown role)");
        match self {
            Op::GrantRole { user, role: r, .. } => {
                format!("Grant the role {} to user {user}", role(r))
            }
            Op::RevokeRole { user, role: r, .. } => {
                format!("Remove the role {} from user {user}", role(r))
            }
            Op::AddCareTeam { user, patient, .. } => {
                format!("Add user {user} to the care team of patient {patient}")
            }
            Op::RemoveCareTeam { user, patient, .. } => {
                format!("Remove user {user} from the care team of patient {patient}")
            }
            Op::SetFacility { user, .. } => format!("Change the facility of user {user}"),
            Op::Disable { user, .. } => format!("Disable user {user}"),
            Op::Enable { user, .. } => format!("Enable user {user}"),
            Op::RevokeSessions { user } => format!("End all console sessions of user {user}"),
            Op::ResetTotp { user } => format!("Reset the authenticator of user {user}"),
            Op::CreateClient { .. } => "Register a new service client".to_string(),
            Op::DisableClient { user, .. } => format!("Disable service client {user}"),
            Op::CreateFacility { .. } => "Create a facility".to_string(),
        }
    }

    /// Checks the input without touching the database: role names, the reason rule,
    /// client ids, facility names, and the rules about one's own account (`by`: the
    /// acting administrator, `None` for the server's CLI).
    fn validate(self, by: Option<UserId>, client_issuer: Option<&str>) -> Result<Valid, AppError> {
        let reason = self.reason()?;
        Ok(match self {
            Op::GrantRole { user, role, .. } => {
                Valid::GrantRole(user, parse_role("role", &role)?, reason)
            }
            Op::RevokeRole { user, role, .. } => {
                let role = parse_role("role", &role)?;
                rules::may_remove_role(by, user, role).map_err(refused)?;
                Valid::RevokeRole(user, role, reason)
            }
            Op::AddCareTeam { user, patient, .. } => Valid::CareTeam {
                user,
                patient,
                reason,
                add: true,
            },
            Op::RemoveCareTeam { user, patient, .. } => Valid::CareTeam {
                user,
                patient,
                reason,
                add: false,
            },
            Op::SetFacility { user, facility, .. } => Valid::SetFacility(user, facility, reason),
            Op::Disable { user, .. } | Op::DisableClient { user, .. } => {
                rules::may_disable(by, user).map_err(refused)?;
                let only_clients = matches!(self, Op::DisableClient { .. });
                Valid::SetDisabled {
                    user,
                    disabled: true,
                    reason,
                    only_clients,
                }
            }
            Op::Enable { user, .. } => Valid::SetDisabled {
                user,
                disabled: false,
                reason,
                only_clients: false,
            },
            Op::RevokeSessions { user } => Valid::RevokeSessions(user),
            Op::ResetTotp { user } => Valid::ResetTotp(user),
            Op::CreateClient {
                client_id,
                facility,
                roles,
                ..
            } => {
                if ClientId::parse(&client_id).is_err() {
                    return Err(AppError::unprocessable(
                        "The field 'client_id' must be 1 to 128 printable characters without spaces.",
                    ));
                }
                if roles.is_empty() {
                    return Err(AppError::unprocessable(
                        "The field 'roles' must name at least one role.",
                    ));
                }
                let mut parsed = Vec::new();
                for r in &roles {
                    let role = parse_role("roles", r)?;
                    if !rules::client_may_hold(role) {
                        return Err(AppError::unprocessable(
                            "The field 'roles' may not give a service client the admin, privacy_officer or patient role.",
                        ));
                    }
                    parsed.push(role);
                }
                let issuer = client_issuer.ok_or(AppError::Unavailable)?.to_string();
                Valid::CreateClient {
                    client_id,
                    facility,
                    roles: parsed,
                    reason,
                    issuer,
                }
            }
            Op::CreateFacility { name } => {
                let name = name.trim().to_string();
                let n = name.chars().count();
                // One line: control characters and the line/paragraph separators refused.
                let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
                if !(1..=FACILITY_NAME_MAX).contains(&n) || name.chars().any(breaks) {
                    return Err(AppError::unprocessable(
                        "The field 'name' must be 1 to 200 characters without control characters.",
                    ));
                }
                Valid::CreateFacility(name)
            }
        })
    }

    /// Validates, then performs the operation in one transaction on the database.
    pub async fn perform(
        self,
        db: &Db,
        by: Option<UserId>,
        client_issuer: Option<&str>,
    ) -> Result<Performed, AppError> {
        let valid = self.validate(by, client_issuer)?;
        db.run(move |c| c.transaction(|c| valid.apply(c, by))).await
    }

    /// Validates, then performs the operation in one transaction on `conn` (for the CLI,
    /// which holds its own connection).
    pub fn apply(
        self,
        conn: &mut PgConnection,
        by: Option<UserId>,
        client_issuer: Option<&str>,
    ) -> Result<Performed, AppError> {
        let valid = self.validate(by, client_issuer)?;
        conn.transaction(|c| valid.apply(c, by))
    }
}

fn user_of(c: &mut PgConnection, id: UserId) -> Result<UserSummary, AppError> {
    users::get_user(c, id)?.ok_or_else(user_not_found)
}

fn changed_user(c: &mut PgConnection, id: UserId) -> Result<Performed, AppError> {
    Ok(Performed {
        done: Done::User(user_of(c, id)?),
        touched: Touched::user(id),
    })
}

impl Valid {
    /// The database work, inside the caller's transaction.
    fn apply(self, c: &mut PgConnection, by: Option<UserId>) -> Result<Performed, AppError> {
        match self {
            Valid::GrantRole(user, role, reason) => {
                user_of(c, user)?;
                users::grant_role(c, user, role, &reason, by)?;
                changed_user(c, user)
            }
            Valid::RevokeRole(user, role, reason) => {
                user_of(c, user)?;
                if !users::revoke_role(c, user, role, &reason, by)? {
                    return Err(AppError::client(
                        StatusCode::NOT_FOUND,
                        "The user does not hold this role.",
                    ));
                }
                // The change takes effect on the user's next console request too.
                users::end_console_sessions(c, user)?;
                changed_user(c, user)
            }
            Valid::CareTeam {
                user,
                patient,
                reason,
                add,
            } => {
                if !users::patient_exists(c, patient)? {
                    return Err(AppError::client(
                        StatusCode::NOT_FOUND,
                        "The patient was not found.",
                    ));
                }
                user_of(c, user)?;
                if add {
                    users::add_to_care_team(c, patient, user, &reason, by)?;
                } else if !users::remove_from_care_team(c, patient, user, &reason, by)? {
                    return Err(AppError::client(
                        StatusCode::NOT_FOUND,
                        "The user is not on this patient's care team.",
                    ));
                }
                Ok(Performed {
                    done: Done::CareTeam {
                        patient,
                        user,
                        member: add,
                    },
                    touched: Touched {
                        resource_id: Some(user.into()),
                        patients: vec![patient],
                    },
                })
            }
            Valid::SetFacility(user, facility, reason) => {
                user_of(c, user)?;
                if !users::facility_exists(c, facility)? {
                    return Err(unknown_facility());
                }
                users::move_to_facility(c, user, facility, &reason, by)?;
                changed_user(c, user)
            }
            Valid::SetDisabled {
                user,
                disabled,
                reason,
                only_clients,
            } => {
                let target = user_of(c, user)?;
                if only_clients && target.kind != UserKind::Service {
                    return Err(AppError::client(
                        StatusCode::NOT_FOUND,
                        "The service client was not found.",
                    ));
                }
                users::set_disabled(c, user, disabled, &reason, by)?;
                if disabled {
                    users::end_console_sessions(c, user)?;
                }
                changed_user(c, user)
            }
            Valid::RevokeSessions(user) => {
                user_of(c, user)?;
                users::end_console_sessions(c, user)?;
                Ok(Performed {
                    done: Done::Nothing,
                    touched: Touched::user(user),
                })
            }
            Valid::ResetTotp(user) => {
                user_of(c, user)?;
                users::forget_authenticator(c, user)?;
                // Sessions that passed the old authenticator end with it.
                users::end_console_sessions(c, user)?;
                Ok(Performed {
                    done: Done::Nothing,
                    touched: Touched::user(user),
                })
            }
            Valid::CreateClient {
                client_id,
                facility,
                roles,
                reason,
                issuer,
            } => {
                if !users::facility_exists(c, facility)? {
                    return Err(unknown_facility());
                }
                match users::kind_of(c, &issuer, &client_id)? {
                    None => {}
                    Some(UserKind::Service) => {
                        return Err(AppError::client(
                            StatusCode::CONFLICT,
                            "A service client with this client id already exists.",
                        ));
                    }
                    Some(UserKind::Person) => {
                        return Err(AppError::client(
                            StatusCode::CONFLICT,
                            "This client id is already used by a person at this issuer.",
                        ));
                    }
                }
                let user = users::user_for(c, &issuer, &client_id, UserKind::Service)?;
                users::set_facility(c, user.id, Some(facility))?;
                for role in roles {
                    users::grant_role(c, user.id, role, &reason, by)?;
                }
                changed_user(c, user.id)
            }
            Valid::CreateFacility(name) => {
                let id = crate::db::phi::insert_facility(c, &name)?;
                Ok(Performed {
                    done: Done::Facility { id, name },
                    touched: Touched::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded() {
        assert!(check_reason(None).is_err());
        assert!(check_reason(Some("  ab ")).is_err());
        assert!(check_reason(Some(&"x".repeat(501))).is_err());
        assert!(check_reason(Some("bad\u{0}")).is_err());
        assert_eq!(check_reason(Some(" new hire ")).unwrap(), "new hire");
        let err = check_reason(None).unwrap_err().to_string();
        assert!(err.contains("'reason'"), "{err}");
    }

    #[test]
    fn setting_a_facility_changes_access_so_it_takes_a_reason() {
        let op = Op::SetFacility {
            user: UserId::new(),
            facility: FacilityId::new(),
            reason: None,
        };
        assert_eq!(op.reason_rule(), ReasonRule::Required);
        let err = op.validate(None, None).err().unwrap().to_string();
        assert!(err.contains("'reason'"), "{err}");
        assert!(
            Op::SetFacility {
                user: UserId::new(),
                facility: FacilityId::new(),
                reason: Some("moved to the north clinic".into()),
            }
            .needs_step_up()
        );
    }

    #[test]
    fn own_admin_role_and_own_account_are_refused_before_any_database_work() {
        let me = UserId::new();
        let revoke = Op::RevokeRole {
            user: me,
            role: "admin".into(),
            reason: Some("stepping down".into()),
        };
        let err = revoke.validate(Some(me), None).err().unwrap();
        assert!(matches!(err, AppError::Client { status, .. } if status == StatusCode::CONFLICT));
        let disable = Op::Disable {
            user: me,
            reason: Some("leaving".into()),
        };
        assert!(disable.validate(Some(me), None).is_err());
        let other = Op::Disable {
            user: UserId::new(),
            reason: Some("leaving".into()),
        };
        assert!(other.validate(Some(me), None).is_ok());
    }

    #[test]
    fn clients_never_get_admin_privacy_officer_or_patient() {
        for (role, ok) in [
            ("service", true),
            ("clinician", true),
            ("billing", true),
            ("admin", false),
            ("privacy_officer", false),
            ("patient", false),
        ] {
            let op = Op::CreateClient {
                client_id: "lab-feed".into(),
                facility: FacilityId::new(),
                roles: vec![role.into()],
                reason: None,
            };
            assert_eq!(op.validate(None, Some("https://idp")).is_ok(), ok, "{role}");
        }
    }

    #[test]
    fn every_op_has_an_audit_action_and_ops_survive_storage() {
        let user = UserId::new();
        let patient = PatientId::new();
        let op = Op::AddCareTeam {
            user,
            patient,
            reason: Some("cover".into()),
        };
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["user"], user.to_string());
        assert_eq!(json["patient"], patient.to_string());
        assert_eq!(serde_json::from_value::<Op>(json).unwrap(), op);
        assert_eq!(
            op.audit(),
            (
                AuditAction::CareRelationshipChange,
                Some(Kind::CareRelationship)
            )
        );
        // A facility change stored before it took a reason still decodes.
        let old = serde_json::json!({"op": "set_facility", "user": user, "facility": user});
        assert!(matches!(
            serde_json::from_value::<Op>(old).unwrap(),
            Op::SetFacility { reason: None, .. }
        ));
    }

    #[test]
    fn every_admin_route_action_names_a_real_audit_action_and_resource() {
        use crate::policy::admin::AdminAction;
        // (Every route names a real audit action and resource kind by type:
        // `audit::What::from(AdminAction)` is total.)
        // The route's declared action agrees with the operation the route performs.
        let user = UserId::new();
        for (route, op) in [
            (
                AdminAction::ChangeRole,
                Op::GrantRole {
                    user,
                    role: "billing".into(),
                    reason: None,
                },
            ),
            (
                AdminAction::ChangeUser,
                Op::SetFacility {
                    user,
                    facility: FacilityId::new(),
                    reason: None,
                },
            ),
            (
                AdminAction::ChangeCareTeam,
                Op::AddCareTeam {
                    user,
                    patient: PatientId::new(),
                    reason: None,
                },
            ),
            (
                AdminAction::CreateFacility,
                Op::CreateFacility { name: "x".into() },
            ),
            (
                AdminAction::RegisterClient,
                Op::CreateClient {
                    client_id: "c".into(),
                    facility: FacilityId::new(),
                    roles: vec![],
                    reason: None,
                },
            ),
        ] {
            let (action, kind) = op.audit();
            let declared = crate::audit::What::from(route);
            assert_eq!(action, declared.action, "{route:?}");
            assert_eq!(kind, declared.kind, "{route:?}");
        }
    }

    #[test]
    fn descriptions_never_echo_free_text() {
        let op = Op::GrantRole {
            user: UserId(Uuid::nil()),
            role: "<img>".into(),
            reason: Some("<b>".into()),
        };
        let d = op.describe();
        assert!(!d.contains('<'), "{d}");
    }
}
