//! [`Recorder`]: the one way a request (or a console session, or a CLI command) records
//! its audit events. It is bound to one actor — the API principal, a console user, the
//! operator of a command — and to the request's context (request id, address, agent), so
//! a call site names only *what* happened: [`Recorder::permit`], [`Recorder::deny`],
//! [`Recorder::error`], or [`Recorder::commit_with`] for a data change that must commit
//! in the same transaction as its event.
//!
//! Events carry internal ids only (user, client, resource and patient UUIDs, coded
//! values): never names, identifiers, query strings or bodies.
//!
//! Build one with [`Recorder::new`] from the actor's [`Actor`]; the API pipeline does this
//! in `crate::access`, the console and the CLI can do the same from their own actor.

use super::context::{AuditContext, EventBuilder};
use super::event::{
    Actor, AuditAction, AuditEvent, ClientId, DenyReason, Outcome, PurposeOfUse, ResourceType,
};
use super::writer::{AuditWriter, WriteJob};
use crate::domain::PatientId;
use crate::error::AppError;
use crate::policy::admin::AdminAction;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// What an event is about: the action, and the resource kind and id when there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct What {
    pub action: AuditAction,
    pub kind: Option<ResourceType>,
    pub id: Option<Uuid>,
}

impl What {
    pub fn new(action: AuditAction) -> Self {
        Self {
            action,
            kind: None,
            id: None,
        }
    }

    /// The kind of resource acted on (a search, a create before its id exists).
    pub fn on(self, kind: impl Into<ResourceType>) -> Self {
        Self {
            kind: Some(kind.into()),
            ..self
        }
    }

    /// The internal id of the one resource acted on.
    pub fn id(self, id: impl Into<Uuid>) -> Self {
        Self {
            id: Some(id.into()),
            ..self
        }
    }
}

/// The audit action of an administration route's events: total and typed, so a route's
/// declared [`AdminAction`] always names its real action (no string look-up, no
/// fallback).
impl From<AdminAction> for AuditAction {
    fn from(a: AdminAction) -> Self {
        match a {
            AdminAction::ListUsers | AdminAction::ListFacilities => AuditAction::Search,
            AdminAction::ReadUser => AuditAction::Read,
            AdminAction::CreateFacility => AuditAction::Create,
            AdminAction::ChangeCareTeam => AuditAction::CareRelationshipChange,
            AdminAction::ChangeRole | AdminAction::ChangeUser | AdminAction::RegisterClient => {
                AuditAction::PermissionChange
            }
            AdminAction::SetConfidentiality => AuditAction::ConfidentialityChange,
            AdminAction::ReadConfidentiality => AuditAction::Read,
            AdminAction::RevokeBreakGlass => AuditAction::BreakGlassEnd,
            AdminAction::CreateWebhookEndpoint => AuditAction::Create,
            AdminAction::ChangeWebhookEndpoint | AdminAction::RedeliverWebhook => {
                AuditAction::Update
            }
        }
    }
}

/// What an administration route's events are about: its action and, when it has one,
/// the kind of resource it acts on.
impl From<AdminAction> for What {
    fn from(a: AdminAction) -> Self {
        let kind = match a {
            AdminAction::ListUsers | AdminAction::ReadUser | AdminAction::ChangeUser => {
                Some(ResourceType::User)
            }
            AdminAction::ChangeRole => Some(ResourceType::RoleAssignment),
            AdminAction::ChangeCareTeam => Some(ResourceType::CareRelationship),
            AdminAction::RegisterClient => Some(ResourceType::Client),
            AdminAction::SetConfidentiality | AdminAction::ReadConfidentiality => {
                Some(ResourceType::Patient)
            }
            AdminAction::RevokeBreakGlass => Some(ResourceType::BreakGlassGrant),
            AdminAction::CreateWebhookEndpoint | AdminAction::ChangeWebhookEndpoint => {
                Some(ResourceType::WebhookEndpoint)
            }
            AdminAction::RedeliverWebhook => Some(ResourceType::WebhookDelivery),
            AdminAction::ListFacilities | AdminAction::CreateFacility => None,
        };
        What {
            action: AuditAction::from(a),
            kind,
            id: None,
        }
    }
}

/// Records the events of one actor in one request (or command).
#[derive(Clone)]
pub struct Recorder {
    writer: AuditWriter,
    context: AuditContext,
    actor: Actor,
    client_app: Option<ClientId>,
    purpose: Option<PurposeOfUse>,
    /// Set once an event of this request committed (read by the API's audit guard, which
    /// records a fallback event for a request that ended without one).
    recorded: Option<Arc<AtomicBool>>,
    /// The break-glass grant this request's access rests on, once the decision point said
    /// so: from then on every event of the request (clones included) carries the grant id
    /// and the purpose of use BTG.
    grant: Arc<std::sync::OnceLock<Uuid>>,
    /// Why the decision point permitted this request's access, once it said so: every
    /// event from then on (clones included) records it.
    basis: Arc<std::sync::OnceLock<super::event::AccessBasis>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(writer: AuditWriter, context: AuditContext, actor: Actor) -> Self {
        Self {
            writer,
            context,
            actor,
            client_app: None,
            purpose: None,
            recorded: None,
            grant: Arc::default(),
            basis: Arc::default(),
        }
    }

    /// Marks the basis the decision point permitted this request's access on.
    pub fn on_basis(&self, basis: impl Into<super::event::AccessBasis>) {
        // The first decision of a request is the one its events record.
        let _ = self.basis.set(basis.into());
    }

    /// Marks this request as access under break-glass grant `grant` (every event from
    /// now on, of this recorder and its clones, carries it and the purpose BTG).
    pub fn under_grant(&self, grant: Uuid) {
        // A request decides on one patient: a second, different grant cannot occur; the
        // first one stays.
        let _ = self.grant.set(grant);
    }

    /// The grant this request's access rests on, if any.
    pub fn grant(&self) -> Option<Uuid> {
        self.grant.get().copied()
    }

    /// The client application the actor came through (token `client_id`/`azp`).
    pub fn with_client_app(mut self, client: Option<ClientId>) -> Self {
        self.client_app = client;
        self
    }

    /// The purpose of use recorded with every event.
    pub fn with_purpose(mut self, purpose: PurposeOfUse) -> Self {
        self.purpose = Some(purpose);
        self
    }

    /// A flag this recorder sets once one of its events has committed.
    pub fn marking(mut self, recorded: Arc<AtomicBool>) -> Self {
        self.recorded = Some(recorded);
        self
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// An event of this actor with an arbitrary outcome, for the rare call site the typed
    /// helpers do not cover; record it with [`Recorder::record`].
    pub fn event(
        &self,
        what: What,
        patients: impl IntoIterator<Item = PatientId>,
        outcome: Outcome,
    ) -> EventBuilder {
        let mut event = self
            .context
            .event(self.actor.clone(), what.action, outcome)
            .patients(patients);
        match (what.kind, what.id) {
            (Some(kind), Some(id)) => event = event.resource(kind, id),
            (Some(kind), None) => event = event.resource_type(kind),
            _ => {}
        }
        if let Some(purpose) = self.purpose {
            event = event.purpose(purpose);
        }
        if let Some(grant) = self.grant.get() {
            event = event
                .break_glass(*grant)
                .purpose(PurposeOfUse::BreakTheGlass);
        }
        if let Some(client) = &self.client_app {
            event = event.client_app(client.clone());
        }
        if let Some(basis) = self.basis.get() {
            event = event.basis(*basis);
        }
        event
    }

    /// Commits `event`; returns only once it is durable (503 otherwise: fail closed, the
    /// caller must not release what the event records).
    pub async fn record(&self, event: AuditEvent) -> Result<(), AppError> {
        self.writer.record(event).await?;
        self.mark();
        Ok(())
    }

    /// Access was granted and happened (`patients`: every patient touched).
    pub async fn permit(
        &self,
        what: What,
        patients: impl IntoIterator<Item = PatientId>,
    ) -> Result<(), AppError> {
        self.record(self.event(what, patients, Outcome::Permit).build())
            .await
    }

    /// Access was refused for `reason`.
    pub async fn deny(
        &self,
        what: What,
        patients: impl IntoIterator<Item = PatientId>,
        reason: impl Into<DenyReason>,
    ) -> Result<(), AppError> {
        let outcome = Outcome::Deny(reason.into());
        self.record(self.event(what, patients, outcome).build())
            .await
    }

    /// Refused by a rate limit: aggregated per `source` and window ([`super::flood`]), so
    /// the event is recorded at once only when it opens a window; either way this
    /// request's audit obligation is met.
    pub async fn rate_limited(
        &self,
        what: What,
        tally: &super::flood::FloodTally,
        source: super::flood::Source,
    ) -> Result<(), AppError> {
        let outcome = Outcome::Deny(DenyReason::RateLimited);
        tally
            .refused(source, self.event(what, [], outcome).build())
            .await?;
        self.mark();
        Ok(())
    }

    /// The request failed (missing record, bad input, conflict) after authentication.
    pub async fn error(
        &self,
        what: What,
        patients: impl IntoIterator<Item = PatientId>,
    ) -> Result<(), AppError> {
        self.record(self.event(what, patients, Outcome::Error).build())
            .await
    }

    /// **Write with its event.** Runs the data change `write` and records this request's
    /// permit event in ONE database transaction, on the audit writer's connection
    /// ([`AuditWriter::record_write`]): both commit or neither does (503). If `write`
    /// fails, its changes are rolled back, the event is recorded as an error instead and
    /// `write`'s error is returned. `complete` fills in what only the write knows (the id
    /// of the record a create made).
    ///
    /// This is a deliberate coupling: every PHI create, update and delete runs inside the
    /// audit writer's group-commit batch, so no change can land without its audit event.
    pub async fn commit_with<T, W>(
        &self,
        what: What,
        patients: impl IntoIterator<Item = PatientId>,
        write: W,
        complete: Option<fn(&T, &mut AuditEvent)>,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        W: FnOnce(&mut diesel::PgConnection) -> Result<T, AppError> + Send + 'static,
    {
        let event = self.event(what, patients, Outcome::Permit).build();
        let slot: Arc<std::sync::Mutex<Option<Result<T, AppError>>>> = Arc::default();
        let out = slot.clone();
        let job: WriteJob = Box::new(move |conn, event| {
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
        self.writer.record_write(event, job).await?;
        self.mark();
        let result = slot.lock().ok().and_then(|mut s| s.take());
        result.unwrap_or_else(|| Err(AppError::internal("audited write did not run")))
    }

    fn mark(&self) {
        if let Some(flag) = &self.recorded {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_route_names_its_audit_action_and_resource() {
        assert_eq!(
            AuditAction::from(AdminAction::ListUsers),
            AuditAction::Search
        );
        assert_eq!(AuditAction::from(AdminAction::ReadUser), AuditAction::Read);
        assert_eq!(
            AuditAction::from(AdminAction::ChangeCareTeam),
            AuditAction::CareRelationshipChange
        );
        assert_eq!(
            What::from(AdminAction::ChangeRole),
            What::new(AuditAction::PermissionChange).on(ResourceType::RoleAssignment)
        );
        assert_eq!(
            What::from(AdminAction::CreateFacility),
            What::new(AuditAction::Create)
        );
        for a in AdminAction::ALL {
            assert_eq!(What::from(a).action, AuditAction::from(a), "{a:?}");
            assert_eq!(What::from(a).id, None, "{a:?}");
        }
    }
}
