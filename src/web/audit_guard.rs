//! Exactly one audit event per request to a PHI or admin route. Handlers record the event
//! themselves (with the patients touched); when a request ends without one — refused by an
//! extractor (bad query, bad body), failed in a handler before it audited — this guard
//! records it before the response leaves, failing closed like any audit write.

use crate::audit::{Actor, AuditAction, AuditContext, ClientId, DenyReason, Outcome, PurposeOfUse};
use crate::policy::{Action, Interaction, ResourceType};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, ResponseError, web};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by the guard and the request's [`crate::auth::Caller`].
#[derive(Default)]
pub struct AuditSlot {
    done: AtomicBool,
    who: Mutex<Option<Who>>,
}

/// The authenticated actor, once known.
#[derive(Clone)]
pub struct Who {
    pub actor: Actor,
    pub client_app: Option<ClientId>,
    pub purpose: PurposeOfUse,
}

impl AuditSlot {
    /// The slot of this request, if its route is audited.
    pub fn of(req: &HttpRequest) -> Option<Arc<AuditSlot>> {
        req.extensions().get::<Arc<AuditSlot>>().cloned()
    }

    pub fn mark_done(&self) {
        self.done.store(true, Ordering::SeqCst);
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    pub fn set_who(&self, who: Who) {
        if let Ok(mut w) = self.who.lock() {
            *w = Some(who);
        }
    }

    fn who(&self) -> Option<Who> {
        self.who.lock().ok().and_then(|w| w.clone())
    }
}

/// Does this action's route need an audit event for every request?
pub fn is_audited(action: Action) -> bool {
    matches!(action, Action::Fhir(..) | Action::Admin)
}

fn audit_action(action: Action) -> AuditAction {
    match action {
        Action::Fhir(_, Interaction::Read) => AuditAction::Read,
        Action::Fhir(_, Interaction::Search) => AuditAction::Search,
        Action::Fhir(_, Interaction::Create) => AuditAction::Create,
        Action::Fhir(_, Interaction::Update) => AuditAction::Update,
        Action::Fhir(_, Interaction::Delete) => AuditAction::Delete,
        Action::Admin | Action::Public | Action::ConsoleSignIn | Action::Console => {
            AuditAction::PermissionChange
        }
    }
}

fn resource_type(action: Action) -> Option<crate::audit::ResourceType> {
    match action {
        Action::Fhir(r, _) => crate::audit::ResourceType::from_code(ResourceType::as_str(r)),
        _ => None,
    }
}

fn outcome(status: StatusCode) -> Outcome {
    match status.as_u16() {
        401 => Outcome::Deny(DenyReason::NotAuthenticated),
        403 => Outcome::Deny(DenyReason::Policy),
        429 => Outcome::Deny(DenyReason::RateLimited),
        s if s < 400 => Outcome::Permit,
        _ => Outcome::Error,
    }
}

/// Records the event a request ended without. `Err` carries the response to send instead
/// (503) when the event cannot be committed.
pub async fn ensure_event(
    req: &HttpRequest,
    slot: &AuditSlot,
    action: Action,
    status: StatusCode,
) -> Result<(), actix_web::HttpResponse> {
    if slot.is_done() {
        return Ok(());
    }
    if status.is_success() {
        // A handler released a response without its event: a defect worth shouting about.
        tracing::error!("handler answered without recording its audit event");
    }
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Err(crate::error::AppError::internal("app state missing").error_response());
    };
    let who = slot.who();
    let actor = who
        .as_ref()
        .map(|w| w.actor.clone())
        .unwrap_or_else(Actor::anonymous);
    let mut event =
        AuditContext::from_request(req).event(actor, audit_action(action), outcome(status));
    if let Some(kind) = resource_type(action) {
        event = event.resource_type(kind);
    }
    if let Some(who) = who {
        event = event.purpose(who.purpose);
        if let Some(client) = who.client_app {
            event = event.client_app(client);
        }
    }
    match state.audit.record(event.build()).await {
        Ok(()) => {
            slot.mark_done();
            Ok(())
        }
        Err(e) => Err(e.error_response()),
    }
}
