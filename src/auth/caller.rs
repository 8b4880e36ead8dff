//! [`Caller`]: the authenticated principal of an API request — a verified bearer token
//! mapped to our user row, with roles from our database (never from the token), the
//! per-principal rate limit applied, and the request's audit context and purpose of use.
//! A request refused here is audited (login-failed, without any token content).

use super::scope::Context;
use super::token::Grant;
use super::{Bearer, VerifiedToken};
use crate::audit::{
    Actor, AuditAction, AuditContext, AuthMethod, ClientId, DenyReason, Outcome, PurposeOfUse,
    RoleCode,
};
use crate::db::users::{self, UserKind, UserRecord};
use crate::error::AppError;
use crate::policy::{self, Interaction, ResourceType, Role};
use crate::state::AppState;
use crate::web::audit_guard::{AuditSlot, Who};
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use std::sync::Arc;
use uuid::Uuid;

pub const PURPOSE_HEADER: &str = "x-purpose-of-use";

pub struct Caller {
    pub user: UserRecord,
    pub token: VerifiedToken,
    pub audit: AuditContext,
    pub purpose: PurposeOfUse,
    state: web::Data<AppState>,
    /// Marks this request's audit obligation as met (see `web::audit_guard`).
    slot: Option<Arc<AuditSlot>>,
}

impl Caller {
    /// The actor recorded in audit events.
    pub fn actor(&self) -> Actor {
        let roles = self
            .user
            .roles
            .iter()
            .filter_map(|r| RoleCode::parse(r.as_str()).ok())
            .collect();
        let service = self.token.grant == Grant::ClientCredentials;
        Actor {
            user_id: Some(self.user.id),
            client_id: if service { self.client_app() } else { None },
            roles,
            auth_method: if service {
                AuthMethod::ClientCredentials
            } else {
                AuthMethod::Bearer
            },
        }
    }

    /// The client application named by the token (`client_id`/`azp`).
    fn client_app(&self) -> Option<ClientId> {
        self.token
            .client_id
            .as_deref()
            .and_then(|c| ClientId::parse(c).ok())
    }

    fn context(&self) -> Context {
        match self.token.grant {
            Grant::ClientCredentials => Context::System,
            Grant::User if self.user.roles == [Role::Patient] => Context::Patient,
            Grant::User => Context::User,
        }
    }

    /// Asks the decision point.
    pub fn decide(
        &self,
        resource: ResourceType,
        interaction: Interaction,
        target: policy::Target,
    ) -> policy::Decision {
        let context = self.context();
        let scopes = &self.token.scopes;
        let allows = move |r: ResourceType, i: Interaction| scopes.allows(context, r, i);
        let subject = policy::Subject {
            user_id: self.user.id,
            roles: &self.user.roles,
            scope_allows: &allows,
            facility_id: self.user.facility_id,
            own_patient_id: self.user.patient_id,
        };
        policy::decide(&subject, resource, interaction, target)
    }

    /// Asks the decision point whether this principal may use the administration API
    /// (`admin` role from our database AND `admin` scope on the token).
    pub fn decide_admin(&self) -> Result<(), policy::DenyReason> {
        policy::decide_admin(&self.user.roles, self.token.scopes.admin())
    }

    /// Records one audit event of the administration API (no PHI: internal ids only).
    pub async fn audit_admin(
        &self,
        action: AuditAction,
        resource: Option<(crate::audit::ResourceType, Option<Uuid>)>,
        patients: impl IntoIterator<Item = Uuid>,
        outcome: Outcome,
    ) -> Result<(), AppError> {
        let mut event = self
            .audit
            .event(self.actor(), action, outcome)
            .patients(patients)
            .purpose(PurposeOfUse::SystemAdministration);
        match resource {
            Some((kind, Some(id))) => event = event.resource(kind, id),
            Some((kind, None)) => event = event.resource_type(kind),
            None => {}
        }
        if let Some(client) = self.client_app() {
            event = event.client_app(client);
        }
        self.record(event.build()).await
    }

    /// Commits this request's event and marks its audit obligation as met.
    async fn record(&self, event: crate::audit::AuditEvent) -> Result<(), AppError> {
        self.state.audit.record(event).await?;
        self.mark_audited();
        Ok(())
    }

    fn mark_audited(&self) {
        if let Some(slot) = &self.slot {
            slot.mark_done();
        }
    }

    fn event(
        &self,
        action: AuditAction,
        resource: ResourceType,
        resource_id: Option<Uuid>,
        patients: impl IntoIterator<Item = Uuid>,
        outcome: Outcome,
    ) -> Result<crate::audit::AuditEvent, AppError> {
        let kind = crate::audit::ResourceType::from_code(resource.as_str())
            .ok_or_else(|| AppError::internal("resource type without audit code"))?;
        let mut event = self
            .audit
            .event(self.actor(), action, outcome)
            .resource_type(kind)
            .patients(patients)
            .purpose(self.purpose);
        if let Some(id) = resource_id {
            event = event.resource(kind, id);
        }
        if let Some(client) = self.client_app() {
            event = event.client_app(client);
        }
        Ok(event.build())
    }

    /// Records one audit event for this request; the caller returns PHI only if this
    /// succeeded (fail closed).
    pub async fn audit(
        &self,
        action: AuditAction,
        resource: ResourceType,
        resource_id: Option<Uuid>,
        patients: impl IntoIterator<Item = Uuid>,
        outcome: Outcome,
    ) -> Result<(), AppError> {
        let event = self.event(action, resource, resource_id, patients, outcome)?;
        self.record(event).await
    }

    /// Runs the data change `write` and records this request's event in ONE transaction
    /// of the audit writer: both commit or neither does (503). The event is a permit when
    /// `write` succeeds and an error when it fails (its changes are then rolled back and
    /// its error is returned). `complete` fills in what only the write knows (the id
    /// of the record a create made).
    pub async fn audited_write<T, W>(
        &self,
        action: AuditAction,
        resource: ResourceType,
        resource_id: Option<Uuid>,
        patients: impl IntoIterator<Item = Uuid>,
        write: W,
        complete: Option<fn(&T, &mut crate::audit::AuditEvent)>,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        W: FnOnce(&mut diesel::PgConnection) -> Result<T, AppError> + Send + 'static,
    {
        let event = self.event(action, resource, resource_id, patients, Outcome::Permit)?;
        let slot: Arc<std::sync::Mutex<Option<Result<T, AppError>>>> = Arc::default();
        let out = slot.clone();
        let job: crate::audit::WriteJob = Box::new(move |conn, event| {
            let result = write(conn);
            if let (Ok(value), Some(complete)) = (&result, complete) {
                complete(value, event);
            }
            let ok = result.is_ok();
            if let Ok(mut out) = out.lock() {
                *out = Some(result);
            }
            ok
        });
        self.state.audit.record_write(event, job).await?;
        self.mark_audited();
        let result = slot.lock().ok().and_then(|mut s| s.take());
        result.unwrap_or_else(|| Err(AppError::internal("audited write did not run")))
    }
}

/// The decision on one record of a patient, taken before any PHI column is fetched.
pub enum RecordAccess {
    /// No such live record (or patient).
    Missing,
    Denied(policy::DenyReason, policy::PatientFacts),
    Permitted(policy::View, policy::PatientFacts),
}

impl RecordAccess {
    /// The permitted view, if any.
    pub fn view(&self) -> Option<policy::View> {
        match self {
            RecordAccess::Permitted(view, _) => Some(*view),
            _ => None,
        }
    }
}

/// The facility and care-team facts of the patient record `resource_id` belongs to.
fn record_facts(
    conn: &mut diesel::PgConnection,
    resource_id: Uuid,
    user_id: Uuid,
    patient_of: PatientOf,
) -> Result<Option<policy::PatientFacts>, AppError> {
    match patient_of(conn, resource_id)? {
        Some(patient) => users::patient_facts(conn, patient, user_id),
        None => Ok(None),
    }
}

impl Caller {
    /// For a request on one record of a patient: loads the patient's facility and
    /// care-team facts and asks the decision point, on a connection the caller already
    /// holds (so a handler can fetch the permitted columns in the same blocking hop).
    /// Nothing is audited here: pass the result to [`Caller::settle`].
    ///
    /// `patient_of` finds the record's patient (for a Patient, the record itself).
    pub fn record_access(
        &self,
        conn: &mut diesel::PgConnection,
        resource: ResourceType,
        interaction: Interaction,
        resource_id: Uuid,
        patient_of: PatientOf,
    ) -> Result<RecordAccess, AppError> {
        let facts = record_facts(conn, resource_id, self.user.id, patient_of)?;
        Ok(self.judge(resource, interaction, facts))
    }

    fn judge(
        &self,
        resource: ResourceType,
        interaction: Interaction,
        facts: Option<policy::PatientFacts>,
    ) -> RecordAccess {
        let Some(facts) = facts else {
            return RecordAccess::Missing;
        };
        match self.decide(resource, interaction, policy::Target::Patient(facts)) {
            policy::Decision::Permit { view, .. } => RecordAccess::Permitted(view, facts),
            policy::Decision::Deny(reason) => RecordAccess::Denied(reason, facts),
        }
    }

    /// Audits a refusal and answers it: a missing patient or a missing relationship
    /// answers 404 (existence is not revealed); a missing scope or role answers 403 with
    /// the capability that is missing. A permit passes through (its event is written by
    /// the handler once it has fetched).
    pub async fn settle(
        &self,
        action: AuditAction,
        resource: ResourceType,
        resource_id: Uuid,
        access: RecordAccess,
    ) -> Result<(policy::View, policy::PatientFacts), AppError> {
        match access {
            RecordAccess::Permitted(view, facts) => Ok((view, facts)),
            RecordAccess::Missing => {
                self.audit(action, resource, Some(resource_id), [], Outcome::Error)
                    .await?;
                Err(AppError::not_found())
            }
            RecordAccess::Denied(reason, facts) => {
                let outcome = Outcome::Deny(audit_reason(reason));
                let patient = facts.patient_id;
                self.audit(action, resource, Some(resource_id), [patient], outcome)
                    .await?;
                Err(refusal(reason))
            }
        }
    }

    /// [`Caller::record_access`] in its own blocking hop, then [`Caller::settle`].
    pub async fn authorize_record(
        &self,
        action: AuditAction,
        resource: ResourceType,
        interaction: Interaction,
        resource_id: Uuid,
        patient_of: PatientOf,
    ) -> Result<(policy::View, policy::PatientFacts), AppError> {
        let user_id = self.user.id;
        let facts = self
            .state
            .db
            .run(move |c| record_facts(c, resource_id, user_id, patient_of))
            .await?;
        let access = self.judge(resource, interaction, facts);
        self.settle(action, resource, resource_id, access).await
    }
}

/// The issuer recorded for services authenticated by a client certificate.
pub const MTLS_ISSUER: &str = "mtls";

/// A service identified by its verified client certificate (`tls.client_identities`),
/// when the request carries no `Authorization` header (a token always takes precedence).
fn certified_client(req: &HttpRequest) -> Option<String> {
    use sha2::Digest;
    if req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION)
    {
        return None;
    }
    let cert = req.conn_data::<crate::tls::ClientCertificate>()?;
    let state = req.app_data::<web::Data<AppState>>()?;
    let digest: [u8; 32] = sha2::Sha256::digest(cert.0.as_ref()).into();
    state.client_identities.get(&digest).cloned()
}

/// A certificate-authenticated service acts like a client-credentials token whose client
/// application may do anything (`system/*.cruds`): what it can actually do is decided by
/// the roles of its service user, as for every principal.
fn certificate_principal(client: String) -> VerifiedToken {
    VerifiedToken {
        issuer: MTLS_ISSUER.to_string(),
        subject: client.clone(),
        scopes: super::ScopeSet::parse("system/*.cruds"),
        client_id: Some(client),
        auth_time: None,
        acr: None,
        jti: None,
        issued_at: None,
        expires_at: i64::MAX,
        grant: Grant::ClientCredentials,
    }
}

/// Finds the patient a record belongs to (`None`: no such live record).
pub type PatientOf = fn(&mut diesel::PgConnection, Uuid) -> Result<Option<Uuid>, AppError>;

/// The answer to a denial: relationship denials look like a missing record.
pub fn refusal(reason: policy::DenyReason) -> AppError {
    match reason {
        policy::DenyReason::NoRelationship => AppError::not_found(),
        other => AppError::client(StatusCode::FORBIDDEN, other.message()),
    }
}

/// Maps the policy's reason to the audit code.
pub fn audit_reason(reason: policy::DenyReason) -> DenyReason {
    match reason {
        policy::DenyReason::ScopeMissing => DenyReason::MissingScope,
        policy::DenyReason::RoleMissing => DenyReason::MissingRole,
        policy::DenyReason::NoRelationship => DenyReason::NoRelationship,
    }
}

fn parse_purpose(req: &HttpRequest) -> Result<PurposeOfUse, AppError> {
    match req.headers().get(PURPOSE_HEADER) {
        None => Ok(PurposeOfUse::Treatment),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(PurposeOfUse::from_code)
            .ok_or_else(|| {
                AppError::bad_request(
                    "Invalid header 'X-Purpose-Of-Use': must be a PurposeOfUse code such as TREAT, ETREAT, HPAYMT or HOPERAT.",
                )
            }),
    }
}

async fn refuse(
    state: &AppState,
    slot: Option<&AuditSlot>,
    ctx: &AuditContext,
    reason: DenyReason,
    err: AppError,
) -> AppError {
    let event = ctx
        .event(
            Actor::anonymous(),
            AuditAction::LoginFailed,
            Outcome::Deny(reason),
        )
        .build();
    match state.audit.record(event).await {
        Ok(()) => {
            if let Some(slot) = slot {
                slot.mark_done();
            }
            err
        }
        Err(audit_err) => audit_err,
    }
}

/// A request's verified credentials (bearer token or client certificate) before its user
/// is loaded. [`Principal::resolve_with`] loads the user, applies the checks the
/// [`Caller`] extractor applies, and runs the handler's database work in the same
/// blocking hop; a handler that needs no database work takes [`Caller`] instead.
pub struct Principal {
    token: VerifiedToken,
    audit: AuditContext,
    /// Parsed up front, refused only after the account checks (as for [`Caller`]).
    purpose: Result<PurposeOfUse, AppError>,
    state: web::Data<AppState>,
    slot: Option<Arc<AuditSlot>>,
}

/// What the blocking part of [`Principal::resolve_with`] ends with.
enum Loaded<T> {
    Ready(Box<Caller>, T),
    /// A disabled account or a principal over its rate limit: audited as a failed login.
    Refused {
        reason: DenyReason,
        err: AppError,
        audit: AuditContext,
        slot: Option<Arc<AuditSlot>>,
    },
}

impl Principal {
    /// Loads the user (our roles, never the token's) and refuses a disabled account or a
    /// principal over its rate limit (audited) or a bad purpose-of-use header; then runs
    /// `then` with the [`Caller`] on the same connection, in one blocking hop. The caller
    /// is known to the request's audit guard before `then` runs.
    pub async fn resolve_with<T, F>(self, then: F) -> Result<(Caller, T), AppError>
    where
        F: FnOnce(&mut diesel::PgConnection, &Caller) -> Result<T, AppError> + Send + 'static,
        T: Send + 'static,
    {
        let Principal {
            token,
            audit,
            purpose,
            state,
            slot,
        } = self;
        let kind = match token.grant {
            Grant::ClientCredentials => UserKind::Service,
            Grant::User => UserKind::Person,
        };
        let shared = state.clone();
        let loaded = state
            .db
            .run(move |conn| {
                let user = users::user_for(conn, &token.issuer, &token.subject, kind)?;
                let refusal = if user.disabled {
                    let err = AppError::client(
                        StatusCode::FORBIDDEN,
                        "Access denied: this account is disabled.",
                    );
                    Some((DenyReason::Revoked, err))
                } else if let Some(limit) = &shared.principal_limit
                    && let Err(wait) = limit.check(&user.id.to_string())
                {
                    let err = AppError::RateLimited {
                        retry_after_secs: wait.as_secs() + 1,
                    };
                    Some((DenyReason::RateLimited, err))
                } else {
                    None
                };
                if let Some((reason, err)) = refusal {
                    return Ok(Loaded::Refused {
                        reason,
                        err,
                        audit,
                        slot,
                    });
                }
                let caller = Caller {
                    user,
                    token,
                    audit,
                    purpose: purpose?,
                    state: shared,
                    slot,
                };
                if let Some(slot) = &caller.slot {
                    slot.set_who(Who {
                        actor: caller.actor(),
                        client_app: caller.client_app(),
                        purpose: caller.purpose,
                    });
                }
                let value = then(conn, &caller)?;
                Ok(Loaded::Ready(Box::new(caller), value))
            })
            .await?;
        match loaded {
            Loaded::Ready(caller, value) => Ok((*caller, value)),
            Loaded::Refused {
                reason,
                err,
                audit,
                slot,
            } => Err(refuse(&state, slot.as_deref(), &audit, reason, err).await),
        }
    }

    /// The [`Caller`], with no further database work.
    pub async fn resolve(self) -> Result<Caller, AppError> {
        self.resolve_with(|_, _| Ok(()))
            .await
            .map(|(caller, ())| caller)
    }
}

impl FromRequest for Principal {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let certified = certified_client(req);
        let bearer = Bearer::from_request(req, payload);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let audit = AuditContext::from_request(req);
        let purpose = parse_purpose(req);
        let slot = AuditSlot::of(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| AppError::internal("app state missing"))?;
            let bearer = match certified {
                Some(client) => Ok(Bearer(certificate_principal(client))),
                None => bearer.await,
            };
            let token = match bearer {
                Ok(Bearer(token)) => token,
                Err(e) => {
                    // Keys unavailable is our fault, not a failed login.
                    if matches!(e, AppError::Unavailable) {
                        return Err(e);
                    }
                    let reason = DenyReason::InvalidCredentials;
                    return Err(refuse(&state, slot.as_deref(), &audit, reason, e).await);
                }
            };
            Ok(Principal {
                token,
                audit,
                purpose,
                state,
                slot,
            })
        })
    }
}

impl FromRequest for Caller {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let principal = Principal::from_request(req, payload);
        Box::pin(async move { principal.await?.resolve().await })
    }
}
