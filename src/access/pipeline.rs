//! The access pipeline of an API request, in the DESIGN's order:
//!
//! 1. **authenticate** — [`Credentials`] (extractor): bearer token or client
//!    certificate, and the route's policy [`Action`] that the route table's wrapper
//!    inserted ([`super::RouteAction`]). A refusal here is audited as a failed login.
//! 2. **resolve the principal** — [`Credentials::resolve_with`]: our user row and roles
//!    (every request); from here every event names the principal. The per-principal
//!    rate limit, a disabled account, and a scope or role that does not allow the route's
//!    action at all ([`policy::capability`], [`policy::decide_admin`]) are refused before
//!    anything the request names is looked at — so an existing and a missing id get the
//!    same answer — all in one blocking database hop that continues with the handler's
//!    work:
//! 3. **load the policy facts and decide** — [`Pipeline::record_access`] /
//!    [`Pipeline::decide`] ask [`policy::decide`] about *the route's* resource type and
//!    interaction: a handler names neither, so it cannot ask about anything else;
//! 4. **fetch only the permitted view's fields** — the handler's closure, given the view;
//! 5. **record the audit event** — through the request's [`Recorder`] (a denial via
//!    [`Pipeline::settle`], answered by [`super::refusal`]); writes commit with their
//!    event ([`Pipeline::audited`], [`Recorder::commit_with`]);
//! 6. **respond** — the handler shapes the permitted view.
//!
//! A read therefore costs one blocking hop (user, roles, account checks, facts, decision,
//! the view's columns) and one group-committed audit write. A Patient read runs two
//! statements in it: the principal with the patient's facts
//! ([`users::find_with_facts`]), then the view's row.

use super::RouteAction;
use super::guard::AuditSlot;
use super::principal::{self, Principal};
use super::refusal;
use crate::audit::flood::Source;
use crate::audit::{Actor, AuditAction, AuditContext, DenyReason, PurposeOfUse, Recorder, What};
use crate::auth::Bearer;
use crate::db::users::{self, UserKind};
use crate::domain::{GrantId, PatientId, RecordId, UserId};
use crate::error::AppError;
use crate::policy::{
    self, Action, Decision, Interaction, PatientFacts, ResourceType, SearchScope, Target, View,
};
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use std::sync::Arc;

/// One API request after authentication: the [`Principal`], the route's policy action,
/// and the [`Recorder`] bound to both. Handlers receive it (or [`Credentials`]) and ask
/// it for decisions; they never name the resource type or interaction themselves.
pub struct Pipeline {
    pub principal: Principal,
    action: Action,
    /// Records this request's events (the principal as actor, the purpose of use).
    pub recorder: Recorder,
    state: web::Data<AppState>,
}

impl std::ops::Deref for Pipeline {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl Pipeline {
    /// The route's policy action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The resource type and interaction of a FHIR route.
    fn fhir(&self) -> Result<(ResourceType, Interaction), AppError> {
        match self.action {
            Action::Fhir(resource, interaction) => Ok((resource, interaction)),
            _ => Err(AppError::internal("FHIR decision on a non-FHIR route")),
        }
    }

    /// The route's resource type.
    pub fn resource(&self) -> Result<ResourceType, AppError> {
        self.fhir().map(|(r, _)| r)
    }

    /// What this route's events are about, for the record `id` (if one).
    pub fn what(&self, id: Option<RecordId>) -> Result<What, AppError> {
        self.what_as(self.fhir()?.1, id)
    }

    /// What an event of this route's resource type is about when the request performs
    /// another interaction on it (a conditional create's search, or the read of the match).
    pub fn what_as(
        &self,
        interaction: Interaction,
        id: Option<RecordId>,
    ) -> Result<What, AppError> {
        let resource = self.fhir()?.0;
        let what = What::new(AuditAction::from(interaction)).on(resource);
        Ok(match id {
            Some(id) => what.id(id),
            None => what,
        })
    }

    /// Asks the decision point about the route's action on `target`.
    pub fn decide(&self, target: Target) -> Result<Decision, AppError> {
        self.decide_as(self.fhir()?.1, target)
    }

    /// Asks the decision point about another interaction on the route's resource type
    /// (a conditional create searches before it creates).
    pub fn decide_as(
        &self,
        interaction: Interaction,
        target: Target,
    ) -> Result<Decision, AppError> {
        self.decide_on(self.fhir()?.0, interaction, target)
    }

    /// Asks the decision point about an interaction on another resource type (a search's
    /// `_include` reads the Patient resources its matches name).
    pub fn decide_on(
        &self,
        resource: ResourceType,
        interaction: Interaction,
        target: Target,
    ) -> Result<Decision, AppError> {
        let context = self.principal.context();
        let scopes = &self.principal.token.scopes;
        let allows = move |r: ResourceType, i: Interaction| scopes.allows(context, r, i);
        let subject = policy::Subject {
            user_id: self.principal.user.id,
            roles: &self.principal.user.roles,
            scope_allows: &allows,
            facility_id: self.principal.user.facility_id,
            own_patient_id: self.principal.user.patient_id,
            now: self.state.clock.now(),
        };
        Ok(policy::decide(&subject, resource, interaction, target))
    }

    /// Asks the decision point whether this principal may use the administration API
    /// (`admin` role from our database AND `admin` scope on the token).
    pub fn decide_admin(&self) -> Result<(), policy::DenyReason> {
        policy::decide_admin(
            &self.principal.user.roles,
            self.principal.token.scopes.admin(),
        )
    }

    /// Which part of the audit trail this principal may read as `AuditEvent` resources
    /// ([`policy::review::trail_scope`]).
    pub fn trail_scope(&self) -> Result<policy::review::TrailScope, policy::DenyReason> {
        let user = &self.principal.user;
        policy::review::trail_scope(
            &user.roles,
            self.principal.token.scopes.audit_read(),
            user.patient_id,
        )
    }

    /// Whether the principal is refused whatever its request names: over its rate limit,
    /// a disabled account, or without the scope or role for the route's action at all
    /// ([`policy::capability`], [`policy::decide_admin`]).
    fn refusal(&self) -> Option<Refusal> {
        let user = &self.principal.user;
        if let Some(limit) = &self.state.principal_limit
            && let Err(wait) = limit.check(&user.id.to_string())
        {
            return Some(Refusal::RateLimited {
                retry_after_secs: wait.as_secs() + 1,
            });
        }
        if user.disabled {
            return Some(Refusal::Disabled);
        }
        let capable = match self.action {
            Action::Fhir(resource, interaction) => {
                let context = self.principal.context();
                let scopes = &self.principal.token.scopes;
                let allows = move |r: ResourceType, i: Interaction| scopes.allows(context, r, i);
                let subject = policy::Subject {
                    user_id: user.id,
                    roles: &user.roles,
                    scope_allows: &allows,
                    facility_id: user.facility_id,
                    own_patient_id: user.patient_id,
                    now: self.state.clock.now(),
                };
                policy::capability(&subject, resource, interaction)
            }
            Action::Admin(_) => self.decide_admin(),
            Action::BreakGlass(_) => {
                let context = self.principal.context();
                let scopes = &self.principal.token.scopes;
                let allows = move |r: ResourceType, i: Interaction| scopes.allows(context, r, i);
                let subject = policy::Subject {
                    user_id: user.id,
                    roles: &user.roles,
                    scope_allows: &allows,
                    facility_id: user.facility_id,
                    own_patient_id: user.patient_id,
                    now: self.state.clock.now(),
                };
                policy::capability_break_glass(&subject)
            }
            Action::AuditTrail(_) => self.trail_scope().map(|_| ()),
            Action::Export(op) => {
                let context = self.principal.context();
                let scopes = &self.principal.token.scopes;
                let allows = move |r: ResourceType| scopes.allows(context, r, Interaction::Search);
                policy::export::capability(&user.roles, op, &allows)
            }
            Action::Public | Action::ConsoleSignIn | Action::Console => Ok(()),
        };
        capable.err().map(Refusal::Capability)
    }

    /// When this request's access rests on a break-glass grant: raises the grant's
    /// first-use alert (once per grant; later uses find it raised).
    async fn note_grant_use(&self, patient: PatientId) -> Result<(), AppError> {
        let Some(grant) = self.recorder.grant() else {
            return Ok(());
        };
        let ids = (GrantId(grant), self.principal.user.id, patient);
        let now = self.state.clock.now();
        self.state
            .db
            .run(move |c| {
                crate::db::break_glass::raise_alert(
                    c,
                    crate::db::break_glass::AlertKind::FirstUse,
                    ids,
                    now,
                )
            })
            .await?;
        Ok(())
    }

    /// The application state (configuration, clock, database) for the handlers of
    /// operations that are not plain FHIR interactions (break-glass).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Audits `refusal` with the principal as actor and the route's action, and answers
    /// it (a missing capability through [`refusal`]'s mapping).
    async fn refuse(&self, refusal: Refusal) -> AppError {
        // The method matters only on console routes, which have no pipeline.
        let what = super::guard::route_what(self.action, &actix_web::http::Method::GET);
        let recorder = &self.recorder;
        let (recorded, answer) = match refusal {
            Refusal::RateLimited { retry_after_secs } => {
                let source = Source::Principal(self.principal.user_id());
                (
                    recorder
                        .rate_limited(what, &self.state.floods, source)
                        .await,
                    AppError::RateLimited { retry_after_secs },
                )
            }
            Refusal::Disabled => (
                recorder.deny(what, [], DenyReason::Revoked).await,
                AppError::client(
                    StatusCode::FORBIDDEN,
                    "Access denied: this account is disabled.",
                ),
            ),
            Refusal::Capability(reason) => (
                recorder.deny(what, [], reason).await,
                match self.action {
                    Action::Admin(_) => refusal::on_admin(reason),
                    _ => refusal::on_capability(reason),
                },
            ),
        };
        match recorded {
            Ok(()) => answer,
            Err(unavailable) => unavailable,
        }
    }

    /// On one record of a patient: loads the patient's facility and care-team facts and
    /// decides, on a connection the handler already holds (so it can fetch the permitted
    /// columns in the same blocking hop). Nothing is audited here: pass the result to
    /// [`Pipeline::settle`]. `patient_of` finds the record's patient.
    pub fn record_access(
        &self,
        conn: &mut diesel::PgConnection,
        resource_id: RecordId,
        patient_of: PatientOf,
    ) -> Result<RecordAccess, AppError> {
        let now = self.state.clock.now();
        let facts = record_facts(conn, resource_id, self.principal.user_id(), patient_of, now)?;
        self.judge(facts)
    }

    fn judge(&self, facts: Option<PatientFacts>) -> Result<RecordAccess, AppError> {
        let Some(facts) = facts else {
            return Ok(RecordAccess::Missing);
        };
        Ok(match self.decide(Target::Patient(facts))? {
            Decision::Permit { view, basis, .. } => {
                self.recorder.on_basis(basis);
                if let policy::Basis::BreakGlass(grant) = basis {
                    self.recorder.under_grant(grant.as_uuid());
                }
                RecordAccess::Permitted(view, facts)
            }
            Decision::Deny(reason) => RecordAccess::Denied(reason, facts),
        })
    }

    /// Audits a refusal and answers it ([`refusal::on_record`]); a permit passes through
    /// (its event is written by the handler once it has fetched).
    pub async fn settle(
        &self,
        resource_id: RecordId,
        access: RecordAccess,
    ) -> Result<(View, PatientFacts), AppError> {
        let what = self.what(Some(resource_id))?;
        match access {
            RecordAccess::Permitted(view, facts) => {
                self.note_grant_use(facts.patient_id).await?;
                Ok((view, facts))
            }
            RecordAccess::Missing => {
                self.recorder.error(what, []).await?;
                Err(AppError::not_found())
            }
            RecordAccess::Denied(reason, facts) => {
                self.recorder.deny(what, [facts.patient_id], reason).await?;
                Err(refusal::on_record(reason))
            }
        }
    }

    /// [`Pipeline::record_access`] in its own blocking hop, then [`Pipeline::settle`].
    pub async fn authorize_record(
        &self,
        resource_id: RecordId,
        patient_of: PatientOf,
    ) -> Result<(View, PatientFacts), AppError> {
        let user_id = self.principal.user_id();
        let now = self.state.clock.now();
        let facts = self
            .state
            .db
            .run(move |c| record_facts(c, resource_id, user_id, patient_of, now))
            .await?;
        let access = self.judge(facts)?;
        self.settle(resource_id, access).await
    }

    /// The permit to create a record for `patient`. A patient that does not exist and one
    /// the principal may not write for get the same answer ([`refusal::on_create`]).
    pub async fn authorize_create(
        &self,
        patient_field: &'static str,
        patient: PatientId,
    ) -> Result<View, AppError> {
        let user_id = self.principal.user.id;
        let now = self.state.clock.now();
        let facts: Option<PatientFacts> = self
            .state
            .db
            .run(move |c| users::patient_facts(c, patient, user_id, now))
            .await?;
        let requirement = "must reference a patient you may write for";
        let what = self.what(None)?;
        let Some(facts) = facts else {
            self.recorder.error(what, []).await?;
            return Err(refusal::on_create(
                policy::DenyReason::NoRelationship,
                patient_field,
                requirement,
            ));
        };
        self.authorize_new(
            Target::Patient(facts),
            [patient],
            patient_field,
            requirement,
        )
        .await
    }

    /// The permit to create on `target` (already loaded); a denial is audited and
    /// answered by [`refusal::on_create`] on `field`.
    pub async fn authorize_new(
        &self,
        target: Target,
        patients: impl IntoIterator<Item = PatientId>,
        field: &'static str,
        requirement: &'static str,
    ) -> Result<View, AppError> {
        match self.decide(target)? {
            Decision::Permit { view, basis, .. } => {
                self.recorder.on_basis(basis);
                if let policy::Basis::BreakGlass(grant) = basis {
                    self.recorder.under_grant(grant.as_uuid());
                    if let Some(patient) = patients.into_iter().next() {
                        self.note_grant_use(patient).await?;
                    }
                }
                Ok(view)
            }
            Decision::Deny(reason) => {
                self.recorder
                    .deny(self.what(None)?, patients, reason)
                    .await?;
                Err(refusal::on_create(reason, field, requirement))
            }
        }
    }

    /// The permit to search, with the rows it may return; a denial is audited and
    /// answered by [`refusal::on_search`].
    pub async fn authorize_search(&self) -> Result<(View, SearchScope), AppError> {
        match self.decide(Target::Search)? {
            Decision::Permit {
                view,
                search: Some(scope),
                basis,
            } => {
                self.recorder.on_basis(basis);
                Ok((view, scope))
            }
            Decision::Permit { search: None, .. } => {
                Err(AppError::internal("search permit without scope"))
            }
            Decision::Deny(reason) => {
                self.recorder.deny(self.what(None)?, [], reason).await?;
                Err(refusal::on_search(reason))
            }
        }
    }

    /// The permit event(s) of this route's search that returned `patients`: each patient
    /// the caller holds an active grant for (`held`, from [`Pipeline::held_in_scope`] when
    /// the scope includes the caller's break-glass grants) is recorded in an event of its
    /// own under that grant (its id, purpose BTG); the others in the search's event.
    pub async fn permit_search(
        &self,
        held: Vec<(GrantId, PatientId)>,
        patients: Vec<PatientId>,
    ) -> Result<(), AppError> {
        if held.is_empty() {
            return self.permit(None, patients).await;
        }
        let rest: Vec<PatientId> = patients
            .into_iter()
            .filter(|p| !held.iter().any(|(_, h)| h == p))
            .collect();
        self.permit(None, rest).await?;
        for (grant, patient) in held {
            let event = self
                .recorder
                .event(self.what(None)?, [patient], crate::audit::Outcome::Permit)
                .break_glass(grant.as_uuid())
                .purpose(PurposeOfUse::BreakTheGlass)
                .build();
            self.recorder.record(event).await?;
        }
        Ok(())
    }

    /// Of the `patients` a search under `scope` returned, those the caller holds an
    /// active break-glass grant for, with the grant ([`Pipeline::permit_search`] records
    /// them under it). Runs on the search's connection, in its blocking hop.
    pub fn held_in_scope(
        conn: &mut diesel::PgConnection,
        scope: SearchScope,
        patients: &[PatientId],
    ) -> Result<Vec<(GrantId, PatientId)>, AppError> {
        match scope {
            SearchScope::CareTeamAndGrants(user, at) if !patients.is_empty() => {
                crate::db::break_glass::held_among(conn, user, patients, at)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The permit event of this route for record `id` (if one) and `patients`.
    pub async fn permit(
        &self,
        id: Option<RecordId>,
        patients: impl IntoIterator<Item = PatientId>,
    ) -> Result<(), AppError> {
        self.recorder.permit(self.what(id)?, patients).await
    }

    /// The error event of this route for record `id` (if one) and `patients`.
    pub async fn error(
        &self,
        id: Option<RecordId>,
        patients: impl IntoIterator<Item = PatientId>,
    ) -> Result<(), AppError> {
        self.recorder.error(self.what(id)?, patients).await
    }

    /// Runs the data change `write` of this route in one transaction with its permit
    /// event ([`Recorder::commit_with`]).
    pub async fn commit_with<T, W>(
        &self,
        id: Option<RecordId>,
        patients: impl IntoIterator<Item = PatientId>,
        write: W,
        complete: Option<fn(&T, &mut crate::audit::AuditEvent)>,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        W: FnOnce(&mut diesel::PgConnection) -> Result<T, AppError> + Send + 'static,
    {
        let what = self.what(id)?;
        self.recorder
            .commit_with(what, patients, write, complete)
            .await
    }

    /// The update or delete `write` of record `id` of `patient`, committed with its event:
    /// `Some` is a permit; `None` (the row was gone, or its version had moved) is audited
    /// as an error and answered with `missing()`.
    pub async fn audited<T, W>(
        &self,
        id: RecordId,
        patient: PatientId,
        write: W,
        missing: fn() -> AppError,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        W: FnOnce(&mut diesel::PgConnection) -> Result<Option<T>, AppError> + Send + 'static,
    {
        let write = move |c: &mut diesel::PgConnection| write(c)?.ok_or_else(missing);
        self.commit_with(Some(id), [patient], write, None).await
    }
}

/// The decision on one record of a patient, taken before any PHI column is fetched.
pub enum RecordAccess {
    /// No such live record (or patient).
    Missing,
    Denied(policy::DenyReason, PatientFacts),
    Permitted(View, PatientFacts),
}

impl RecordAccess {
    /// The permitted view, if any.
    pub fn view(&self) -> Option<View> {
        match self {
            RecordAccess::Permitted(view, _) => Some(*view),
            _ => None,
        }
    }
}

/// Finds the patient a record belongs to (`None`: no such live record).
pub type PatientOf = fn(&mut diesel::PgConnection, RecordId) -> Result<Option<PatientId>, AppError>;

/// The facility and care-team facts of the patient record `resource_id` belongs to.
fn record_facts(
    conn: &mut diesel::PgConnection,
    resource_id: RecordId,
    user_id: UserId,
    patient_of: PatientOf,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<PatientFacts>, AppError> {
    match patient_of(conn, resource_id)? {
        Some(patient) => users::patient_facts(conn, patient, user_id, now),
        None => Ok(None),
    }
}

/// Records a refusal before a principal exists (bad or missing credentials) as a failed
/// login by an anonymous actor, then answers `err`.
async fn refuse(recorder: Recorder, reason: DenyReason, err: AppError) -> AppError {
    let what = What::new(AuditAction::LoginFailed);
    match recorder.deny(what, [], reason).await {
        Ok(()) => err,
        Err(audit_err) => audit_err,
    }
}

/// A request's verified credentials (bearer token or client certificate) and its route's
/// action, before the user is loaded. [`Credentials::resolve_with`] loads the principal
/// and runs the handler's database work in the same blocking hop; a handler that needs
/// no database work first takes [`Pipeline`] instead.
pub struct Credentials {
    token: crate::auth::VerifiedToken,
    action: Action,
    audit: AuditContext,
    /// Parsed up front, refused only after the account checks.
    purpose: Result<PurposeOfUse, AppError>,
    state: web::Data<AppState>,
    slot: Option<Arc<AuditSlot>>,
}

/// What the blocking part of [`Credentials::resolve_with`] ends with.
enum Loaded<T> {
    /// The pipeline and the handler's value.
    Ready(Box<Pipeline>, T),
    /// Refused after authentication, before anything the request names was looked at:
    /// audited with the principal as actor ([`Pipeline::refuse`]).
    Refused(Box<Pipeline>, Refusal),
}

/// Why an authenticated principal is refused before its request is looked at.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// Over the per-principal rate limit (aggregated in the trail, see `audit::flood`).
    RateLimited { retry_after_secs: u64 },
    /// The account is disabled.
    Disabled,
    /// The token's scopes or the user's roles do not allow the route's action at all.
    Capability(policy::DenyReason),
}

/// An anonymous recorder for this request (refusals before a principal exists).
fn anonymous(state: &AppState, audit: &AuditContext, slot: Option<&AuditSlot>) -> Recorder {
    let recorder = Recorder::new(state.audit.clone(), audit.clone(), Actor::anonymous());
    match slot {
        Some(slot) => recorder.marking(slot.flag()),
        None => recorder,
    }
}

impl Credentials {
    /// Loads the user (our roles, never the token's); refuses a principal over its rate
    /// limit, a disabled account, or a principal without the scope or role for the
    /// route's action — all audited with the principal as actor, before anything the
    /// request names is looked at — then a bad purpose-of-use header; then runs `then`
    /// with the [`Pipeline`] on the same connection, in one blocking hop. The request's
    /// audit guard knows the principal (its recorder) from the moment it is loaded.
    pub async fn resolve_with<T, F>(self, then: F) -> Result<(Pipeline, T), AppError>
    where
        F: FnOnce(&mut diesel::PgConnection, &Pipeline) -> Result<T, AppError> + Send + 'static,
        T: Send + 'static,
    {
        self.resolve_prefetching(None, move |c, p, _| then(c, p))
            .await
    }

    /// [`Credentials::resolve_with`], loading the policy facts of `patient` (if given) in
    /// the same statement as the user and roles ([`users::find_with_facts`]): one round
    /// trip instead of two. The facts are not consulted before the account checks, so
    /// the principal's refusals still answer alike whatever the request names; `then`
    /// gets them (`None` inside: no such live patient).
    async fn resolve_prefetching<T, F>(
        self,
        patient: Option<PatientId>,
        then: F,
    ) -> Result<(Pipeline, T), AppError>
    where
        F: FnOnce(
                &mut diesel::PgConnection,
                &Pipeline,
                Option<Option<PatientFacts>>,
            ) -> Result<T, AppError>
            + Send
            + 'static,
        T: Send + 'static,
    {
        let Credentials {
            token,
            action,
            audit,
            purpose,
            state,
            slot,
        } = self;
        let kind = match token.grant {
            crate::auth::Grant::ClientCredentials => UserKind::Service,
            crate::auth::Grant::User => UserKind::Person,
        };
        let shared = state.clone();
        // The provider's family name, as its blind index only (same-family-name detector).
        let family_index = token
            .family_name
            .as_ref()
            .filter(|_| kind == UserKind::Person)
            .and_then(|n| {
                state
                    .keyring
                    .blind_index(crate::crypto::BlindKind::Family, n.expose())
                    .ok()
            });
        let now = state.clock.now();
        let loaded = state
            .db
            .run(move |conn| {
                let found =
                    users::find_with_facts(conn, &token.issuer, &token.subject, patient, now)?;
                let (user, stored_family, prefetched) = match found {
                    Some((user, family, facts)) => (user, Some(family), facts),
                    // First sight of this principal: created with no roles (default deny).
                    None => {
                        let user = users::user_for(conn, &token.issuer, &token.subject, kind)?;
                        let facts = match patient {
                            Some(p) => users::patient_facts(conn, p, user.id, now)?,
                            None => None,
                        };
                        (user, None, facts)
                    }
                };
                if let Some(index) = &family_index
                    && stored_family
                        .as_ref()
                        .is_none_or(|stored| users::family_index_changes(stored, index))
                {
                    users::set_family_index(conn, user.id, index, users::FamilySource::Provider)?;
                }
                let prefetched = patient.map(|_| prefetched);
                // Authentication succeeded: from here on every event names the actor.
                let valid_purpose = purpose.as_ref().ok().copied();
                let principal = Principal {
                    user,
                    token,
                    purpose: valid_purpose.unwrap_or(PurposeOfUse::Treatment),
                };
                let recorded_purpose = match action {
                    Action::Admin(_) => Some(PurposeOfUse::SystemAdministration),
                    // Reviewing the trail is compliance work; a patient reading their own
                    // accounting of access asked for it.
                    Action::AuditTrail(_) if principal.user.roles == [policy::Role::Patient] => {
                        Some(PurposeOfUse::PatientRequest)
                    }
                    Action::AuditTrail(_) => Some(PurposeOfUse::Compliance),
                    _ => valid_purpose,
                };
                let mut recorder = Recorder::new(shared.audit.clone(), audit, principal.actor())
                    .with_client_app(principal.client_app());
                if let Some(purpose) = recorded_purpose {
                    recorder = recorder.with_purpose(purpose);
                }
                if let Some(slot) = &slot {
                    recorder = recorder.marking(slot.flag());
                    slot.set_recorder(recorder.clone());
                }
                let pipeline = Pipeline {
                    principal,
                    action,
                    recorder,
                    state: shared,
                };
                // The principal's own refusals, before anything the request names (an id,
                // a patient, a body, a header) is looked at or looked up.
                if let Some(refusal) = pipeline.refusal() {
                    return Ok(Loaded::Refused(Box::new(pipeline), refusal));
                }
                purpose?;
                let value = then(conn, &pipeline, prefetched)?;
                Ok(Loaded::Ready(Box::new(pipeline), value))
            })
            .await?;
        match loaded {
            Loaded::Ready(pipeline, value) => Ok((*pipeline, value)),
            Loaded::Refused(pipeline, refusal) => Err(pipeline.refuse(refusal).await),
        }
    }

    /// A read of one record in ONE blocking hop: the principal (user, roles, account
    /// checks), the subject patient's facts, the decision on the route's action, and
    /// only if permitted `get`, which fetches (and decrypts) the permitted view's fields.
    /// Input errors (`id`, `input`) are raised after the account checks. Every outcome is
    /// audited; a record whose subject is not the patient the decision was about is
    /// treated as missing. `get` returns the record's subject patient with the record.
    pub async fn read_one<I, T, G>(
        self,
        id: Result<RecordId, AppError>,
        input: Result<I, AppError>,
        patient_of: PatientOf,
        get: G,
    ) -> Result<(Pipeline, T, I), AppError>
    where
        I: Send + 'static,
        T: Send + 'static,
        G: FnOnce(
                &mut diesel::PgConnection,
                View,
                RecordId,
                &I,
            ) -> Result<Option<(PatientId, T)>, AppError>
            + Send
            + 'static,
    {
        // A Patient record is its own subject: its facts load with the principal.
        let subject = match (self.action, &id) {
            (Action::Fhir(ResourceType::Patient, _), Ok(id)) => Some(PatientId(id.0)),
            _ => None,
        };
        let (pipeline, (id, access, found, input)) = self
            .resolve_prefetching(subject, move |c, pipeline, prefetched| {
                let id = id?;
                let input = input?;
                let access = match (subject, prefetched) {
                    // Only when the record's patient is the one prefetched.
                    (Some(p), Some(facts)) if patient_of(c, id)? == Some(p) => {
                        pipeline.judge(facts)?
                    }
                    _ => pipeline.record_access(c, id, patient_of)?,
                };
                let found = match access.view() {
                    Some(view) => get(c, view, id, &input)?,
                    None => None,
                };
                Ok((id, access, found, input))
            })
            .await?;
        let (_, facts) = pipeline.settle(id, access).await?;
        let patient = facts.patient_id;
        let Some((_, record)) = found.filter(|(subject, _)| *subject == patient) else {
            pipeline.error(Some(id), []).await?;
            return Err(AppError::not_found());
        };
        pipeline.permit(Some(id), [patient]).await?;
        Ok((pipeline, record, input))
    }

    /// The [`Pipeline`], with no further database work.
    pub async fn resolve(self) -> Result<Pipeline, AppError> {
        self.resolve_with(|_, _| Ok(()))
            .await
            .map(|(pipeline, ())| pipeline)
    }
}

impl FromRequest for Credentials {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let certified = principal::certified_client(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let verifier = state.as_ref().and_then(|s| s.tokens.clone());
        let raw = crate::auth::extract::raw_token(req);
        let action = RouteAction::of(req);
        let audit = AuditContext::from_request(req);
        let purpose = principal::parse_purpose(req);
        let slot = AuditSlot::of(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| AppError::internal("app state missing"))?;
            // Fail closed: a handler reached without the route table's wrapper has no
            // declared action to decide on.
            let action = action.ok_or_else(|| AppError::internal("route without an action"))?;
            let bearer = match certified {
                Some(client) => Ok(Bearer(principal::certificate_token(client))),
                None => principal::verify_bearer(verifier, raw).await,
            };
            let token = match bearer {
                Ok(Bearer(token)) => token,
                // Keys unavailable is our fault, not a failed login.
                Err(AppError::Unavailable) => return Err(AppError::Unavailable),
                Err(e) => {
                    let recorder = anonymous(&state, &audit, slot.as_deref());
                    return Err(refuse(recorder, DenyReason::InvalidCredentials, e).await);
                }
            };
            Ok(Credentials {
                token,
                action,
                audit,
                purpose,
                state,
                slot,
            })
        })
    }
}

impl FromRequest for Pipeline {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let credentials = Credentials::from_request(req, payload);
        Box::pin(async move { credentials.await?.resolve().await })
    }
}
