//! The console's ONE audit recorder: every console event (sign-in steps, step-up,
//! sign-out, emergency sign-in, page reads and administration changes) is recorded through
//! a [`ConsoleRecorder`] bound to the request and to who acts, with typed helpers —
//! [`permit`](ConsoleRecorder::permit), [`deny`](ConsoleRecorder::deny),
//! [`error`](ConsoleRecorder::error) and [`session`](ConsoleRecorder::session) — instead of
//! events built by hand. Internal ids only: never names, reasons or codes.

use crate::audit::{
    Actor, AuditAction, AuditContext, AuditWriter, AuthMethod, DenyReason, EventBuilder, Outcome,
    PurposeOfUse, ResourceType as Kind, RoleCode,
};
use crate::db::users::UserRecord;
use crate::error::AppError;
use crate::state::AppState;
use uuid::Uuid;

/// The audit roles of a user (role codes, from our database).
pub fn role_codes(user: &UserRecord) -> Vec<RoleCode> {
    user.roles
        .iter()
        .filter_map(|r| RoleCode::parse(r.as_str()).ok())
        .collect()
}

/// Records this request's console events.
#[derive(Clone)]
pub struct ConsoleRecorder {
    audit: AuditWriter,
    ctx: AuditContext,
    actor: Actor,
}

impl ConsoleRecorder {
    /// Nobody known yet (a failed or refused sign-in before a user was matched).
    pub fn anonymous(state: &AppState, ctx: AuditContext) -> ConsoleRecorder {
        ConsoleRecorder {
            audit: state.audit.clone(),
            ctx,
            actor: Actor::anonymous(),
        }
    }

    /// `user`, authenticated so far by `method`.
    pub fn user(
        state: &AppState,
        ctx: AuditContext,
        user: &UserRecord,
        method: AuthMethod,
    ) -> ConsoleRecorder {
        ConsoleRecorder::user_with_roles(state, ctx, user.id.as_uuid(), role_codes(user), method)
    }

    /// A user whose roles are given (or withheld: an emergency account before its
    /// password and code were accepted).
    pub fn user_with_roles(
        state: &AppState,
        ctx: AuditContext,
        id: Uuid,
        roles: Vec<RoleCode>,
        method: AuthMethod,
    ) -> ConsoleRecorder {
        ConsoleRecorder {
            audit: state.audit.clone(),
            ctx,
            actor: Actor::user(id.into(), roles, method),
        }
    }

    fn event(
        &self,
        action: AuditAction,
        outcome: Outcome,
        resource: Option<(Kind, Option<Uuid>)>,
    ) -> EventBuilder {
        let mut event = self.ctx.event(self.actor.clone(), action, outcome);
        match resource {
            Some((kind, Some(id))) => event = event.resource(kind, id),
            Some((kind, None)) => event = event.resource_type(kind),
            None => {}
        }
        event
    }

    /// An administrative read or change that was permitted.
    pub async fn permit(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<crate::domain::PatientId>,
    ) -> Result<(), AppError> {
        self.admin(action, resource, patients, Outcome::Permit)
            .await
    }

    /// Something refused, with why.
    pub async fn deny(
        &self,
        action: AuditAction,
        reason: DenyReason,
        resource: Option<(Kind, Option<Uuid>)>,
    ) -> Result<(), AppError> {
        let event = self.event(action, Outcome::Deny(reason), resource);
        self.audit.record(event.build()).await
    }

    /// Something that failed.
    pub async fn error(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
    ) -> Result<(), AppError> {
        self.admin(action, resource, Vec::new(), Outcome::Error)
            .await
    }

    /// A session event (sign-in, failed sign-in, step-up, sign-out) on the console
    /// session resource.
    pub async fn session(&self, action: AuditAction, outcome: Outcome) -> Result<(), AppError> {
        let event = self.event(action, outcome, Some((Kind::Session, None)));
        self.audit.record(event.build()).await
    }

    /// An administration event (purpose: system administration) with any outcome.
    pub async fn admin(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<crate::domain::PatientId>,
        outcome: Outcome,
    ) -> Result<(), AppError> {
        let event = self
            .event(action, outcome, resource)
            .patients(patients)
            .purpose(PurposeOfUse::SystemAdministration);
        self.audit.record(event.build()).await
    }
}
