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
use crate::db::pending::{self, Decision};
use crate::db::users::{self, UserKind, UserSummary};
use crate::domain::{
    FacilityId, GrantId, PatientId, PendingChangeId, UserId, WebhookDeliveryId, WebhookEndpointId,
};
use crate::error::AppError;
use crate::policy::Role;
use crate::policy::admin::{self as rules, AccessChange, SelfChange, Verdict};
use crate::secret::Secret;
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
    /// Approve a change waiting in the approval queue (a second administrator).
    ApproveChange {
        change: PendingChangeId,
        reason: Option<String>,
    },
    /// Deny a change waiting in the approval queue.
    DenyChange {
        change: PendingChangeId,
        reason: Option<String>,
    },
    /// Set a patient record's confidentiality (N, R, V).
    SetConfidentiality {
        patient: PatientId,
        level: String,
        reason: Option<String>,
    },
    /// End a break-glass grant early (an administrator or a privacy officer).
    RevokeBreakGlass {
        grant: GrantId,
        reason: Option<String>,
    },
    /// Register a webhook endpoint (HTTPS URL); its signing secret is made here and shown
    /// once.
    CreateWebhookEndpoint {
        url: String,
    },
    /// Stop delivering to a webhook endpoint.
    DisableWebhookEndpoint {
        endpoint: WebhookEndpointId,
    },
    /// Replace a webhook endpoint's signing secret (the new one is shown once).
    RotateWebhookSecret {
        endpoint: WebhookEndpointId,
    },
    /// Queue a webhook delivery again (after a dead letter, or to resend).
    RedeliverWebhook {
        delivery: WebhookDeliveryId,
    },
    /// Set (or, with `None`, clear) a person's family name for the same-family-name
    /// detector. It travels as its blind index ([`FamilyIndex::of`]): the name itself is
    /// never stored, not even in a change waiting for a step-up.
    SetFamilyName {
        user: UserId,
        family_index: Option<FamilyIndex>,
        reason: Option<String>,
    },
}

/// Longest accepted family name (characters, after trimming).
pub const FAMILY_NAME_MAX: usize = 100;

/// A person's family name as its blind index (hex of the 32 bytes; the patients' key,
/// domain and normalisation), so that it can be compared with the patients' without the
/// name being kept anywhere.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FamilyIndex(String);

impl std::fmt::Debug for FamilyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FamilyIndex(..)")
    }
}

impl FamilyIndex {
    /// The index of `name` (1 to [`FAMILY_NAME_MAX`] characters, no control characters);
    /// a fixed 422 otherwise, never echoing the name.
    pub fn of(keyring: &crate::crypto::Keyring, name: &str) -> Result<FamilyIndex, AppError> {
        let name = name.trim();
        let n = name.chars().count();
        let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
        if !(1..=FAMILY_NAME_MAX).contains(&n) || name.chars().any(breaks) {
            return Err(AppError::unprocessable(
                "The field 'family_name' must be 1 to 100 characters without control characters, or null to clear it.",
            ));
        }
        let index = keyring
            .blind_index(crate::crypto::BlindKind::Family, name)
            .map_err(|_| AppError::internal("family-name index not computed"))?;
        Ok(FamilyIndex(hex::encode(index)))
    }

    fn bytes(&self) -> Result<Vec<u8>, AppError> {
        hex::decode(&self.0)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| AppError::unprocessable("The field 'family_name' is not valid."))
    }
}

/// Longest accepted webhook endpoint URL (characters).
pub const WEBHOOK_URL_MAX: usize = 2000;

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
    /// The change needs a second administrator: it waits in the approval queue.
    Pending(PendingChangeId),
    /// A waiting change was approved (and performed) or denied.
    Decided {
        change: PendingChangeId,
        approved: bool,
    },
    /// A patient's confidentiality after the change.
    Confidentiality {
        patient: PatientId,
        level: crate::policy::Confidentiality,
    },
    /// A break-glass grant was ended.
    GrantRevoked { grant: GrantId },
    /// A webhook endpoint's new signing secret: shown once, never stored in clear.
    WebhookSecret {
        endpoint: WebhookEndpointId,
        secret: Secret<String>,
    },
}

/// What a change touched, for its audit event (internal ids only).
#[derive(Default)]
pub struct Touched {
    pub resource_id: Option<Uuid>,
    pub patients: Vec<PatientId>,
    /// The event is recorded as this instead of the operation's own action (a change kept
    /// for approval is recorded as `change-requested` on the pending change).
    pub recorded_as: Option<(AuditAction, Option<Kind>)>,
    /// A second event for what the change did besides (an approval performs the approved
    /// change: `change-approved` on the request, then the change's own event).
    pub effect: Option<Box<Effect>>,
}

/// The event of a change performed on approval.
pub struct Effect {
    pub action: AuditAction,
    pub kind: Option<Kind>,
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
    /// The time a change happens at: the application's (injectable) clock where the actor
    /// has one (the approval of a break-glass request starts the grant's clock then).
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
    /// The keyring, for the operations that seal a secret (webhook endpoints); an actor
    /// without one cannot perform them.
    fn keyring(&self) -> Option<std::sync::Arc<crate::crypto::Keyring>> {
        None
    }
    /// Whether webhook endpoints may be on internal addresses
    /// (`webhooks.allow_private_hosts`); off, [`run`] refuses them at registration.
    fn allow_private_webhook_hosts(&self) -> bool {
        false
    }
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
            let (action, kind) = touched.recorded_as.unwrap_or((action, kind));
            who.record(
                action,
                kind.map(|k| (k, touched.resource_id)),
                touched.patients,
                Outcome::Permit,
            )
            .await?;
            if let Some(e) = touched.effect {
                who.record(
                    e.action,
                    e.kind.map(|k| (k, e.resource_id)),
                    e.patients,
                    Outcome::Permit,
                )
                .await?;
            }
            Ok(value)
        }
        Err(err) => {
            who.record(action, kind.map(|k| (k, None)), Vec::new(), Outcome::Error)
                .await?;
            Err(err)
        }
    }
}

/// Performs `op` for `who` and records its audit event (permit or error; a change kept
/// for approval as `change-requested`, an approval also with the approved change's own
/// event). A change the separation-of-duties rules refuse outright (one's own access,
/// one's own request) is recorded as a denial (`separation-of-duties`) and answered 403.
pub async fn run<A: AdminActor>(
    op: Op,
    who: &A,
    db: &Db,
    client_issuer: Option<&str>,
) -> Result<Done, AppError> {
    check_separation(&op, who, db).await?;
    let (action, kind) = op.audit();
    let by = who.user_id();
    let work = async {
        // The SSRF guard at registration (a name resolved here; every delivery checks
        // the addresses again): refused with a fixed message, recorded as an error.
        if let Op::CreateWebhookEndpoint { url } = &op
            && !who.allow_private_webhook_hosts()
        {
            let url = webhook_url(url)?;
            crate::webhooks::guard::check_url(&url)
                .await
                .map_err(|why| AppError::unprocessable(why.message()))?;
        }
        let p = op
            .perform_with(db, Some(by), client_issuer, who.now(), who.keyring())
            .await?;
        Ok((p.done, p.touched))
    };
    audited(who, action, kind, work).await
}

/// The separation-of-duties refusals that need no look at the target's roles (one's own
/// access, one's own request), checked before anything is performed or kept for a
/// step-up: a refusal is recorded as a denial (`separation-of-duties`) and answered 403.
/// [`run`] checks it; the console also checks it before asking for a code.
pub async fn check_separation<A: AdminActor>(op: &Op, who: &A, db: &Db) -> Result<(), AppError> {
    let Err(why) = op.separation(who.user_id(), db).await? else {
        return Ok(());
    };
    let (action, kind) = op.audit();
    who.record(
        action,
        kind.map(|k| (k, op.resource_id())),
        Vec::new(),
        Outcome::Deny(crate::audit::DenyReason::SeparationOfDuties),
    )
    .await?;
    Err(refused(why))
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

/// A separation-of-duties refusal: 403 with a fixed message.
fn refused(why: SelfChange) -> AppError {
    let message = match why {
        SelfChange::OwnAccess => {
            "You cannot change your own access (roles, care teams, facility, account); ask another administrator."
        }
        SelfChange::OwnApproval => {
            "You cannot approve or deny a change you requested or one to your own access; another administrator must."
        }
    };
    AppError::client(StatusCode::FORBIDDEN, message)
}

fn cli_needs_approval() -> AppError {
    AppError::client(
        StatusCode::FORBIDDEN,
        "This change would give a holder of admin or privacy_officer access to PHI: it needs a second administrator's approval. Request it in the console or the administration API.",
    )
}

fn no_such_grant() -> AppError {
    AppError::client(
        StatusCode::NOT_FOUND,
        "The break-glass grant was not found or is not active.",
    )
}

fn no_such_request() -> AppError {
    AppError::client(
        StatusCode::NOT_FOUND,
        "The pending change was not found or was already decided.",
    )
}

/// What a validated operation does to a person's access (for the separation-of-duties
/// rules), if anything.
fn access_change(valid: &Valid) -> Option<(UserId, AccessChange)> {
    Some(match valid {
        Valid::GrantRole(user, role, _) => (*user, AccessChange::GrantRole(*role)),
        Valid::RevokeRole(user, role, _) => (*user, AccessChange::RevokeRole(*role)),
        Valid::CareTeam { user, add, .. } => (
            *user,
            if *add {
                AccessChange::AddCareTeam
            } else {
                AccessChange::RemoveCareTeam
            },
        ),
        Valid::SetFacility(user, _, _) => (*user, AccessChange::SetFacility),
        Valid::SetDisabled { user, disabled, .. } => (*user, AccessChange::SetDisabled(*disabled)),
        Valid::RevokeSessions(_)
        | Valid::ResetTotp(_)
        | Valid::CreateClient { .. }
        | Valid::CreateFacility(_)
        | Valid::Decide { .. }
        | Valid::SetConfidentiality(..)
        | Valid::RevokeBreakGlass(..)
        | Valid::SetFamily(..)
        | Valid::Webhook(_) => return None,
    })
}

/// How a validated operation is carried out with respect to the approval queue.
enum Gate {
    /// Requested now: a change that needs a second administrator is kept (as this JSON,
    /// the operation exactly as submitted) instead of performed; without a requester (the
    /// CLI) it is refused.
    Request(serde_json::Value),
    /// Approved by a second administrator: performed.
    Approved,
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
    Decide {
        change: PendingChangeId,
        reason: String,
        approve: bool,
    },
    SetConfidentiality(PatientId, crate::policy::Confidentiality, String),
    RevokeBreakGlass(GrantId, String),
    Webhook(WebhookChange),
    /// The person, the family-name index (`None` clears it), the reason.
    SetFamily(UserId, Option<Vec<u8>>, String),
}

/// A webhook change whose input passed validation.
enum WebhookChange {
    Create(url::Url),
    Disable(WebhookEndpointId),
    Rotate(WebhookEndpointId),
    Redeliver(WebhookDeliveryId),
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
            Op::ApproveChange { .. } => (AuditAction::ChangeApproved, Kind::PendingChange),
            Op::DenyChange { .. } => (AuditAction::ChangeDenied, Kind::PendingChange),
            Op::SetConfidentiality { .. } => (AuditAction::ConfidentialityChange, Kind::Patient),
            Op::RevokeBreakGlass { .. } => (AuditAction::BreakGlassEnd, Kind::BreakGlassGrant),
            Op::CreateWebhookEndpoint { .. } => (AuditAction::Create, Kind::WebhookEndpoint),
            Op::DisableWebhookEndpoint { .. } => (AuditAction::Update, Kind::WebhookEndpoint),
            Op::RotateWebhookSecret { .. } => (AuditAction::KeyRotation, Kind::WebhookEndpoint),
            Op::RedeliverWebhook { .. } => (AuditAction::Update, Kind::WebhookDelivery),
            Op::SetFamilyName { .. } => (AuditAction::Update, Kind::User),
        };
        (action, Some(kind))
    }

    /// Sensitive changes need a TOTP code entered within `console.step_up_secs` when
    /// made in the console. Creating a facility grants nobody anything.
    pub fn needs_step_up(&self) -> bool {
        // Ending a break-glass grant only takes access away, and must be quick; a
        // redelivery resends ids to an endpoint that already had them.
        !matches!(
            self,
            Op::CreateFacility { .. } | Op::RevokeBreakGlass { .. } | Op::RedeliverWebhook { .. }
        )
    }

    /// Deciding a waiting change always asks for a TOTP code in the console, however
    /// recent the last one (the approval is the second person's act of its own).
    pub fn needs_fresh_code(&self) -> bool {
        matches!(self, Op::ApproveChange { .. } | Op::DenyChange { .. })
    }

    /// The id an event about this operation names before it ran: the person whose
    /// access it changes, or the pending change it decides.
    fn resource_id(&self) -> Option<Uuid> {
        match self {
            Op::GrantRole { user, .. }
            | Op::RevokeRole { user, .. }
            | Op::AddCareTeam { user, .. }
            | Op::RemoveCareTeam { user, .. }
            | Op::SetFacility { user, .. }
            | Op::Disable { user, .. }
            | Op::Enable { user, .. }
            | Op::RevokeSessions { user }
            | Op::ResetTotp { user }
            | Op::DisableClient { user, .. }
            | Op::SetFamilyName { user, .. } => Some(user.as_uuid()),
            Op::ApproveChange { change, .. } | Op::DenyChange { change, .. } => {
                Some(change.as_uuid())
            }
            Op::SetConfidentiality { patient, .. } => Some(patient.as_uuid()),
            Op::RevokeBreakGlass { grant, .. } => Some(grant.as_uuid()),
            Op::DisableWebhookEndpoint { endpoint } | Op::RotateWebhookSecret { endpoint } => {
                Some(endpoint.as_uuid())
            }
            Op::RedeliverWebhook { delivery } => Some(delivery.as_uuid()),
            Op::CreateClient { .. }
            | Op::CreateFacility { .. }
            | Op::CreateWebhookEndpoint { .. } => None,
        }
    }

    /// The separation-of-duties refusals that need no decision about the target's roles:
    /// a change to one's own access ([`rules::judge_change`]), and a decision on one's own
    /// request or on a change to oneself ([`rules::may_decide`], which reads the request).
    /// Checked before anything is performed so that the refusal is audited as a denial.
    async fn separation(&self, by: UserId, db: &Db) -> Result<Result<(), SelfChange>, AppError> {
        let target = match self {
            Op::ApproveChange { change, .. } | Op::DenyChange { change, .. } => {
                let id = *change;
                let Some(request) = db.run(move |c| pending::get(c, id)).await? else {
                    return Ok(Ok(()));
                };
                return Ok(rules::may_decide(
                    by,
                    request.requested_by,
                    request.target_user_id,
                ));
            }
            Op::GrantRole { user, .. }
            | Op::RevokeRole { user, .. }
            | Op::AddCareTeam { user, .. }
            | Op::RemoveCareTeam { user, .. }
            | Op::SetFacility { user, .. }
            | Op::Disable { user, .. }
            | Op::Enable { user, .. }
            | Op::DisableClient { user, .. }
            // One's own family name decides whether one's own look-ups alert.
            | Op::SetFamilyName { user, .. } => *user,
            Op::RevokeSessions { .. }
            | Op::ResetTotp { .. }
            | Op::CreateClient { .. }
            | Op::CreateFacility { .. }
            | Op::SetConfidentiality { .. }
            | Op::RevokeBreakGlass { .. }
            | Op::CreateWebhookEndpoint { .. }
            | Op::DisableWebhookEndpoint { .. }
            | Op::RotateWebhookSecret { .. }
            | Op::RedeliverWebhook { .. } => return Ok(Ok(())),
        };
        // Whatever the change, the verdict on one's own access does not depend on it.
        Ok(
            match rules::judge_change(Some(by), target, &[], AccessChange::SetDisabled(true)) {
                Verdict::Refused(why) => Err(why),
                Verdict::Allowed | Verdict::NeedsApproval => Ok(()),
            },
        )
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
            | Op::DisableClient { .. }
            | Op::ApproveChange { .. }
            | Op::DenyChange { .. }
            | Op::SetConfidentiality { .. }
            | Op::RevokeBreakGlass { .. }
            | Op::SetFamilyName { .. } => ReasonRule::Required,
            Op::CreateClient { .. } => {
                ReasonRule::Optional("service client registered through the admin API")
            }
            Op::RevokeSessions { .. }
            | Op::ResetTotp { .. }
            | Op::CreateFacility { .. }
            | Op::CreateWebhookEndpoint { .. }
            | Op::DisableWebhookEndpoint { .. }
            | Op::RotateWebhookSecret { .. }
            | Op::RedeliverWebhook { .. } => ReasonRule::None,
        }
    }

    /// The reason the requester gave, as submitted (shown in the approval queue).
    pub fn reason_given(&self) -> Option<String> {
        match self {
            Op::GrantRole { reason, .. }
            | Op::RevokeRole { reason, .. }
            | Op::AddCareTeam { reason, .. }
            | Op::RemoveCareTeam { reason, .. }
            | Op::SetFacility { reason, .. }
            | Op::Disable { reason, .. }
            | Op::Enable { reason, .. }
            | Op::DisableClient { reason, .. }
            | Op::CreateClient { reason, .. }
            | Op::ApproveChange { reason, .. }
            | Op::DenyChange { reason, .. }
            | Op::SetConfidentiality { reason, .. }
            | Op::RevokeBreakGlass { reason, .. }
            | Op::SetFamilyName { reason, .. } => reason.clone(),
            Op::RevokeSessions { .. }
            | Op::ResetTotp { .. }
            | Op::CreateFacility { .. }
            | Op::CreateWebhookEndpoint { .. }
            | Op::DisableWebhookEndpoint { .. }
            | Op::RotateWebhookSecret { .. }
            | Op::RedeliverWebhook { .. } => None,
        }
    }

    fn reason(&self) -> Result<String, AppError> {
        let given = self.reason_given();
        match (self.reason_rule(), given.as_deref()) {
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
            Op::ApproveChange { change, .. } => format!("Approve the pending change {change}"),
            Op::DenyChange { change, .. } => format!("Deny the pending change {change}"),
            Op::SetConfidentiality { patient, level, .. } => {
                let level = crate::policy::Confidentiality::from_code(level)
                    .map(crate::policy::Confidentiality::code)
                    .unwrap_or("(unknown level)");
                format!("Set the confidentiality of patient {patient} to {level}")
            }
            Op::RevokeBreakGlass { grant, .. } => format!("End the break-glass grant {grant}"),
            Op::CreateWebhookEndpoint { .. } => "Register a webhook endpoint".to_string(),
            Op::DisableWebhookEndpoint { endpoint } => {
                format!("Disable the webhook endpoint {endpoint}")
            }
            Op::RotateWebhookSecret { endpoint } => {
                format!("Replace the signing secret of the webhook endpoint {endpoint}")
            }
            Op::RedeliverWebhook { delivery } => {
                format!("Redeliver the webhook delivery {delivery}")
            }
            Op::SetFamilyName {
                user,
                family_index: Some(_),
                ..
            } => format!("Set the family name of user {user}"),
            Op::SetFamilyName {
                user,
                family_index: None,
                ..
            } => format!("Clear the family name of user {user}"),
        }
    }

    /// Checks the input without touching the database: role names, the reason rule,
    /// client ids and facility names. (The separation-of-duties rules need the target's
    /// roles: [`Valid::apply`] asks them inside the change's transaction.)
    fn validate(self, client_issuer: Option<&str>) -> Result<Valid, AppError> {
        let reason = self.reason()?;
        Ok(match self {
            Op::GrantRole { user, role, .. } => {
                Valid::GrantRole(user, parse_role("role", &role)?, reason)
            }
            Op::RevokeRole { user, role, .. } => {
                Valid::RevokeRole(user, parse_role("role", &role)?, reason)
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
            Op::ApproveChange { change, .. } => Valid::Decide {
                change,
                reason,
                approve: true,
            },
            Op::DenyChange { change, .. } => Valid::Decide {
                change,
                reason,
                approve: false,
            },
            Op::SetConfidentiality { patient, level, .. } => {
                let level = crate::policy::Confidentiality::from_code(&level).ok_or_else(|| {
                    AppError::unprocessable("The field 'confidentiality' must be one of: N, R, V.")
                })?;
                Valid::SetConfidentiality(patient, level, reason)
            }
            Op::RevokeBreakGlass { grant, .. } => Valid::RevokeBreakGlass(grant, reason),
            Op::CreateWebhookEndpoint { url } => {
                Valid::Webhook(WebhookChange::Create(webhook_url(&url)?))
            }
            Op::DisableWebhookEndpoint { endpoint } => {
                Valid::Webhook(WebhookChange::Disable(endpoint))
            }
            Op::RotateWebhookSecret { endpoint } => Valid::Webhook(WebhookChange::Rotate(endpoint)),
            Op::RedeliverWebhook { delivery } => Valid::Webhook(WebhookChange::Redeliver(delivery)),
            Op::SetFamilyName {
                user, family_index, ..
            } => Valid::SetFamily(
                user,
                family_index.as_ref().map(FamilyIndex::bytes).transpose()?,
                reason,
            ),
        })
    }

    fn payload(&self) -> Result<serde_json::Value, AppError> {
        serde_json::to_value(self)
            .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending change")))
    }

    /// Validates, then performs the operation in one transaction on the database (or, if
    /// it needs a second administrator, keeps it in the approval queue).
    pub async fn perform(
        self,
        db: &Db,
        by: Option<UserId>,
        client_issuer: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Performed, AppError> {
        self.perform_with(db, by, client_issuer, now, None).await
    }

    /// [`Op::perform`] with the keyring the operations that seal a secret need.
    pub async fn perform_with(
        self,
        db: &Db,
        by: Option<UserId>,
        client_issuer: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
        keyring: Option<std::sync::Arc<crate::crypto::Keyring>>,
    ) -> Result<Performed, AppError> {
        let gate = Gate::Request(self.payload()?);
        let valid = self.validate(client_issuer)?;
        db.run(move |c| c.transaction(|c| valid.apply(c, by, gate, now, keyring.as_deref())))
            .await
    }

    /// Validates, then performs the operation in one transaction on `conn` (for the CLI,
    /// which holds its own connection and acts for no account: a change that needs a
    /// second administrator is refused there).
    pub fn apply(
        self,
        conn: &mut PgConnection,
        by: Option<UserId>,
        client_issuer: Option<&str>,
    ) -> Result<Performed, AppError> {
        let gate = Gate::Request(self.payload()?);
        let valid = self.validate(client_issuer)?;
        let now = chrono::Utc::now();
        conn.transaction(|c| valid.apply(c, by, gate, now, None))
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

/// Decides the waiting change `change` for `by`: approved, it is performed as submitted
/// (validated again) and then marked approved, in the caller's transaction.
fn decide(
    c: &mut PgConnection,
    by: Option<UserId>,
    change: PendingChangeId,
    reason: &str,
    approve: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Performed, AppError> {
    let by = by.ok_or_else(|| AppError::internal("a pending change decided without an actor"))?;
    let request = pending::open_for_update(c, change)?.ok_or_else(no_such_request)?;
    rules::may_decide(by, request.requested_by, request.target_user_id).map_err(refused)?;
    if request.kind == crate::db::break_glass::KIND_BREAK_GLASS {
        return decide_break_glass(c, by, change, reason, approve, now);
    }
    if request.kind != pending::KIND_ADMIN_CHANGE {
        return Err(no_such_request());
    }
    let mut touched = Touched {
        resource_id: Some(change.as_uuid()),
        ..Touched::default()
    };
    if approve {
        let op: Op = serde_json::from_value(request.payload)
            .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("pending change")))?;
        let (action, kind) = op.audit();
        let done = op
            .validate(None)?
            .apply(c, Some(by), Gate::Approved, now, None)?;
        touched.patients = done.touched.patients.clone();
        touched.effect = Some(Box::new(Effect {
            action,
            kind,
            resource_id: done.touched.resource_id,
            patients: done.touched.patients,
        }));
    }
    let decision = if approve {
        Decision::Approved
    } else {
        Decision::Denied
    };
    if !pending::decide(c, change, decision, by, reason)? {
        return Err(no_such_request());
    }
    Ok(Performed {
        done: Done::Decided {
            change,
            approved: approve,
        },
        touched,
    })
}

/// Decides a waiting break-glass request (the caller holds its queue row locked and has
/// checked that `by` is neither the requester nor the person it is about): approved, the
/// grant becomes active and its clock starts now; denied, it never opens anything.
fn decide_break_glass(
    c: &mut PgConnection,
    by: UserId,
    change: PendingChangeId,
    reason: &str,
    approve: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Performed, AppError> {
    use crate::db::break_glass as grants;
    let grant = grants::for_pending(c, change)?.ok_or_else(no_such_request)?;
    if !grants::decide(c, grant.id, approve, grant.minutes, now)? {
        return Err(no_such_request());
    }
    if approve {
        let ids = (grant.id, grant.user_id, grant.patient_id);
        grants::raise_alert(c, grants::AlertKind::Approval, ids, now)?;
    }
    let decision = if approve {
        Decision::Approved
    } else {
        Decision::Denied
    };
    if !pending::decide(c, change, decision, by, reason)? {
        return Err(no_such_request());
    }
    Ok(Performed {
        done: Done::Decided {
            change,
            approved: approve,
        },
        touched: Touched {
            resource_id: Some(grant.id.as_uuid()),
            patients: vec![grant.patient_id],
            recorded_as: Some((AuditAction::BreakGlassDecision, Some(Kind::BreakGlassGrant))),
            effect: approve.then(|| {
                Box::new(Effect {
                    action: AuditAction::BreakGlassStart,
                    kind: Some(Kind::BreakGlassGrant),
                    resource_id: Some(grant.id.as_uuid()),
                    patients: vec![grant.patient_id],
                })
            }),
        },
    })
}

impl Valid {
    /// The database work, inside the caller's transaction: first the separation-of-duties
    /// rules on the target's roles as they are now (row locked), then the change — or,
    /// when it needs a second administrator and is not yet approved, its request.
    fn apply(
        self,
        c: &mut PgConnection,
        by: Option<UserId>,
        gate: Gate,
        now: chrono::DateTime<chrono::Utc>,
        keyring: Option<&crate::crypto::Keyring>,
    ) -> Result<Performed, AppError> {
        if let Some((target, change)) = access_change(&self) {
            let roles = users::roles_locked(c, target)?.ok_or_else(user_not_found)?;
            match (rules::judge_change(by, target, &roles, change), gate) {
                (Verdict::Refused(why), _) => return Err(refused(why)),
                (Verdict::Allowed, _) | (Verdict::NeedsApproval, Gate::Approved) => {}
                (Verdict::NeedsApproval, Gate::Request(payload)) => {
                    let by = by.ok_or_else(cli_needs_approval)?;
                    let patients = match &self {
                        Valid::CareTeam { patient, .. } => {
                            if !users::patient_exists(c, *patient)? {
                                return Err(AppError::client(
                                    StatusCode::NOT_FOUND,
                                    "The patient was not found.",
                                ));
                            }
                            vec![*patient]
                        }
                        _ => Vec::new(),
                    };
                    if let Valid::SetFacility(_, facility, _) = &self
                        && !users::facility_exists(c, *facility)?
                    {
                        return Err(unknown_facility());
                    }
                    let id = pending::request(
                        c,
                        pending::KIND_ADMIN_CHANGE,
                        &payload,
                        Some(target),
                        by,
                    )?;
                    return Ok(Performed {
                        done: Done::Pending(id),
                        touched: Touched {
                            resource_id: Some(id.as_uuid()),
                            patients,
                            recorded_as: Some((
                                AuditAction::ChangeRequested,
                                Some(Kind::PendingChange),
                            )),
                            effect: None,
                        },
                    });
                }
            }
        }
        match self {
            Valid::Webhook(change) => webhook_change(c, change, by, now, keyring),
            Valid::SetFamily(user, index, reason) => {
                user_of(c, user)?;
                users::admin_family_index(c, user, index.as_deref(), &reason, by)?;
                changed_user(c, user)
            }
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
                        ..Touched::default()
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
            Valid::Decide {
                change,
                reason,
                approve,
            } => decide(c, by, change, &reason, approve, now),
            Valid::SetConfidentiality(patient, level, reason) => {
                if crate::db::break_glass::set_confidentiality(c, patient, level, &reason, by)?
                    .is_none()
                {
                    return Err(AppError::client(
                        StatusCode::NOT_FOUND,
                        "The patient was not found.",
                    ));
                }
                Ok(Performed {
                    done: Done::Confidentiality { patient, level },
                    touched: Touched {
                        resource_id: Some(patient.as_uuid()),
                        patients: vec![patient],
                        ..Touched::default()
                    },
                })
            }
            Valid::RevokeBreakGlass(grant, reason) => {
                let by =
                    by.ok_or_else(|| AppError::internal("a grant revoked without an actor"))?;
                let found = crate::db::break_glass::get_for_update(c, grant)?;
                let Some(found) = found else {
                    return Err(no_such_grant());
                };
                if !crate::db::break_glass::revoke_with_reason(c, grant, by, &reason, now)? {
                    return Err(no_such_grant());
                }
                Ok(Performed {
                    done: Done::GrantRevoked { grant },
                    touched: Touched {
                        resource_id: Some(grant.as_uuid()),
                        patients: vec![found.patient_id],
                        ..Touched::default()
                    },
                })
            }
        }
    }
}

/// A webhook endpoint's URL: absolute https with a host, no credentials, no fragment,
/// at most [`WEBHOOK_URL_MAX`] characters.
fn webhook_url(text: &str) -> Result<url::Url, AppError> {
    let bad = || {
        AppError::unprocessable(
            "The field 'url' must be an https:// URL with a host, without credentials or fragment, at most 2000 characters.",
        )
    };
    let text = text.trim();
    if text.chars().count() > WEBHOOK_URL_MAX {
        return Err(bad());
    }
    let url = url::Url::parse(text).map_err(|_| bad())?;
    if url.scheme() != "https"
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(url)
}

fn no_such_endpoint() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The webhook endpoint was not found.")
}

/// Performs a webhook change in the caller's transaction.
fn webhook_change(
    c: &mut PgConnection,
    change: WebhookChange,
    by: Option<UserId>,
    now: chrono::DateTime<chrono::Utc>,
    keyring: Option<&crate::crypto::Keyring>,
) -> Result<Performed, AppError> {
    use crate::db::webhooks as hooks;
    // Sealing a secret needs the keyring; the command line does not load one for this.
    let sealing = || keyring.ok_or_else(|| AppError::internal("webhook secret without a keyring"));
    let touched = |id: Uuid| Touched {
        resource_id: Some(id),
        ..Touched::default()
    };
    match change {
        WebhookChange::Create(url) => {
            let by = by.ok_or_else(|| AppError::internal("a webhook endpoint without an actor"))?;
            let (endpoint, secret) = hooks::create_endpoint(c, sealing()?, url.as_str(), by, now)?;
            Ok(Performed {
                done: Done::WebhookSecret { endpoint, secret },
                touched: touched(endpoint.as_uuid()),
            })
        }
        WebhookChange::Rotate(endpoint) => {
            let secret =
                hooks::rotate_secret(c, sealing()?, endpoint, now)?.ok_or_else(no_such_endpoint)?;
            Ok(Performed {
                done: Done::WebhookSecret { endpoint, secret },
                touched: touched(endpoint.as_uuid()),
            })
        }
        WebhookChange::Disable(endpoint) => {
            if !hooks::disable(c, endpoint, now)? {
                return Err(no_such_endpoint());
            }
            Ok(Performed {
                done: Done::Nothing,
                touched: touched(endpoint.as_uuid()),
            })
        }
        WebhookChange::Redeliver(delivery) => {
            if !hooks::redeliver(c, delivery, now)? {
                return Err(AppError::client(
                    StatusCode::NOT_FOUND,
                    "The webhook delivery was not found.",
                ));
            }
            Ok(Performed {
                done: Done::Nothing,
                touched: touched(delivery.as_uuid()),
            })
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
        let err = op.validate(None).err().unwrap().to_string();
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
    fn every_access_changing_op_is_judged_on_its_target_and_others_are_not() {
        let (user, patient, facility) = (UserId::new(), PatientId::new(), FacilityId::new());
        let reason = || Some("covering ward 3".to_string());
        let cases = [
            (
                Op::GrantRole {
                    user,
                    role: "clinician".into(),
                    reason: reason(),
                },
                Some(AccessChange::GrantRole(Role::Clinician)),
            ),
            (
                Op::RevokeRole {
                    user,
                    role: "admin".into(),
                    reason: reason(),
                },
                Some(AccessChange::RevokeRole(Role::Admin)),
            ),
            (
                Op::AddCareTeam {
                    user,
                    patient,
                    reason: reason(),
                },
                Some(AccessChange::AddCareTeam),
            ),
            (
                Op::RemoveCareTeam {
                    user,
                    patient,
                    reason: reason(),
                },
                Some(AccessChange::RemoveCareTeam),
            ),
            (
                Op::SetFacility {
                    user,
                    facility,
                    reason: reason(),
                },
                Some(AccessChange::SetFacility),
            ),
            (
                Op::Disable {
                    user,
                    reason: reason(),
                },
                Some(AccessChange::SetDisabled(true)),
            ),
            (
                Op::Enable {
                    user,
                    reason: reason(),
                },
                Some(AccessChange::SetDisabled(false)),
            ),
            (
                Op::DisableClient {
                    user,
                    reason: reason(),
                },
                Some(AccessChange::SetDisabled(true)),
            ),
            (Op::RevokeSessions { user }, None),
            (Op::ResetTotp { user }, None),
            (
                Op::CreateFacility {
                    name: "North".into(),
                },
                None,
            ),
            (
                Op::ApproveChange {
                    change: PendingChangeId::new(),
                    reason: reason(),
                },
                None,
            ),
        ];
        for (op, expected) in cases {
            let valid = op.clone().validate(None).unwrap();
            assert_eq!(access_change(&valid), expected.map(|c| (user, c)), "{op:?}");
        }
    }

    #[test]
    fn deciding_a_waiting_change_takes_a_reason_and_always_a_fresh_code() {
        for op in [
            Op::ApproveChange {
                change: PendingChangeId::new(),
                reason: None,
            },
            Op::DenyChange {
                change: PendingChangeId::new(),
                reason: None,
            },
        ] {
            assert_eq!(op.reason_rule(), ReasonRule::Required);
            assert!(op.needs_step_up() && op.needs_fresh_code());
            let err = op.clone().validate(None).err().unwrap().to_string();
            assert!(err.contains("'reason'"), "{err}");
            assert_eq!(op.audit().1, Some(Kind::PendingChange));
        }
        assert!(
            !Op::ResetTotp {
                user: UserId::new()
            }
            .needs_fresh_code()
        );
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
            assert_eq!(op.validate(Some("https://idp")).is_ok(), ok, "{role}");
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
