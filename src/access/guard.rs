//! The wrapper every route of the table runs in ([`contain`], registered per resource by
//! [`crate::app::routes`]): it hands the route's declared policy action to the request
//! ([`RouteAction`], the action the pipeline decides on), contains handler errors and
//! panics, and keeps the audit obligation ([`Obligation`]) — exactly one audit event per
//! request to a PHI or admin route, and at least one for every refused or failed console
//! request (the console records its own successes). Handlers record the event themselves through the request's
//! [`Recorder`] (with the patients touched); when a request ends without one — refused
//! by an extractor (bad query, bad body), failed in a handler before it audited — the
//! guard records it before the response leaves, failing closed like any audit write.

use super::{Pipeline, RouteAction};
use crate::audit::flood::Source;
use crate::audit::{Actor, AuditAction, AuditContext, DenyReason, Recorder, What};
use crate::policy::Action;
use crate::state::AppState;
use crate::web::edge::EdgeRefusal;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::Payload;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by the guard and the request's [`Recorder`].
#[derive(Default)]
pub struct AuditSlot {
    done: Arc<AtomicBool>,
    recorder: Mutex<Option<Recorder>>,
}

impl AuditSlot {
    /// The slot of this request, if its route is audited.
    pub fn of(req: &HttpRequest) -> Option<Arc<AuditSlot>> {
        req.extensions().get::<Arc<AuditSlot>>().cloned()
    }

    /// The flag a recorder sets once it committed an event of this request.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.done.clone()
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The principal's recorder, once the principal is known.
    pub fn set_recorder(&self, recorder: Recorder) {
        if let Ok(mut r) = self.recorder.lock() {
            *r = Some(recorder);
        }
    }

    fn recorder(&self) -> Option<Recorder> {
        self.recorder.lock().ok().and_then(|r| r.clone())
    }
}

/// Which requests of a route must leave an audit event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obligation {
    /// Every request (PHI and administration API routes).
    Every,
    /// Every request answered with a 4xx or 5xx status (console routes: a refused or
    /// failed sign-in step, page or form; the console records its successes itself).
    Refused,
}

/// The audit obligation of a route's action (`None`: public routes).
pub fn obligation(action: Action) -> Option<Obligation> {
    match action {
        Action::Fhir(..)
        | Action::Admin(_)
        | Action::BreakGlass(_)
        | Action::AuditTrail(_)
        | Action::Export(_) => Some(Obligation::Every),
        Action::ConsoleSignIn | Action::Console => Some(Obligation::Refused),
        Action::Public => None,
    }
}

/// Does this action's route need an audit event for every request?
pub fn is_audited(action: Action) -> bool {
    obligation(action) == Some(Obligation::Every)
}

/// The route's action for the request's method, from the table's per-path list.
fn action_for(actions: &[(Method, Action)], method: &Method) -> Option<Action> {
    actions.iter().find(|(m, _)| m == method).map(|(_, a)| *a)
}

/// Wraps every resource (inside routing, where the request may be shared): inserts the
/// route's action; turns a handler error or panic into a response, so the worker keeps
/// serving and the edge can still add its headers; and records the one audit event of an
/// audited route if the handler did not.
pub async fn contain(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    actions: std::rc::Rc<Vec<(Method, Action)>>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let http_req = req.request().clone();
    let action = action_for(&actions, req.method());
    if let Some(action) = action {
        req.extensions_mut().insert(RouteAction(action));
    }
    let slot = action.and_then(obligation).map(|_| {
        let slot = Arc::new(AuditSlot::default());
        req.extensions_mut().insert(slot.clone());
        slot
    });
    // A refusal the edge decided before routing: answered here, without the handler.
    let edge_refusal = req.extensions_mut().remove::<EdgeRefusal>();
    let res = if let Some(refusal) = edge_refusal {
        let response = match (action, &slot) {
            (Some(action), Some(slot)) => {
                answer_edge_refusal(&http_req, slot, action, refusal).await
            }
            _ => refusal.response(),
        };
        ServiceResponse::new(http_req.clone(), response)
    } else {
        match AssertUnwindSafe(next.call(req)).catch_unwind().await {
            Ok(Ok(res)) => res.map_into_boxed_body(),
            Ok(Err(err)) => ServiceResponse::new(http_req.clone(), err.error_response()),
            Err(_) => {
                // The panic payload may hold request data; it is not logged.
                tracing::error!("request handler panicked");
                ServiceResponse::new(
                    http_req.clone(),
                    crate::error::AppError::internal("handler panicked").error_response(),
                )
            }
        }
    };
    if let (Some(action), Some(slot)) = (action, slot)
        && (is_audited(action) || res.status().as_u16() >= 400)
        && let Err(unavailable) = ensure_event(&http_req, &slot, action, res.status()).await
    {
        return Ok(ServiceResponse::new(http_req, unavailable));
    }
    Ok(res)
}

/// Audits and answers a refusal of the edge on an audited route:
/// - over the per-address limit: before authentication on purpose (a flood must stay
///   cheap: no token check, no database), aggregated per address and window
///   ([`crate::audit::flood`]), anonymous;
/// - a declared body over the limit: authenticated first like every other input error
///   (401 without valid credentials, the principal's own refusals next), then 413 with the
///   principal as actor — the body is never read.
async fn answer_edge_refusal(
    req: &HttpRequest,
    slot: &Arc<AuditSlot>,
    action: Action,
    refusal: EdgeRefusal,
) -> actix_web::HttpResponse {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return crate::error::AppError::internal("app state missing").error_response();
    };
    match refusal {
        EdgeRefusal::RateLimited { .. } => {
            let recorder = Recorder::new(
                state.audit.clone(),
                AuditContext::from_request(req),
                Actor::anonymous(),
            )
            .marking(slot.flag());
            let source = match req.peer_addr() {
                Some(peer) => Source::Address(peer.ip()),
                None => Source::Overflow,
            };
            match recorder
                .rate_limited(route_what(action, req.method()), &state.floods, source)
                .await
            {
                Ok(()) => refusal.response(),
                Err(unavailable) => unavailable.error_response(),
            }
        }
        EdgeRefusal::TooLarge => {
            // No payload: the pipeline reads headers only. Its refusals are audited by
            // itself; otherwise the guard's event below names the principal.
            match Pipeline::from_request(req, &mut Payload::None).await {
                Ok(_) => refusal.response(),
                Err(e) => e.error_response(),
            }
        }
    }
}

/// What the events of a route are about when nothing more specific is known (the guard's
/// fallback, refusals before the handler): its action, and its resource kind.
pub(super) fn route_what(action: Action, method: &Method) -> What {
    match action {
        Action::Fhir(resource, interaction) => {
            What::new(AuditAction::from(interaction)).on(resource)
        }
        Action::Admin(a) => What::from(a),
        Action::BreakGlass(op) => {
            use crate::policy::break_glass::Operation;
            let action = match op {
                Operation::Request => AuditAction::BreakGlassRequest,
                Operation::Status => AuditAction::Read,
                Operation::End => AuditAction::BreakGlassEnd,
                Operation::Lookup => AuditAction::BreakGlassLookup,
            };
            What::new(action).on(crate::audit::ResourceType::BreakGlassGrant)
        }
        // Reading the trail is an access to it.
        Action::AuditTrail(interaction) => {
            What::new(AuditAction::from(interaction)).on(crate::audit::ResourceType::AuditLog)
        }
        // A kick-off is the export itself; polling and downloading read the job.
        Action::Export(op) => {
            use crate::policy::export::Operation;
            let action = match op {
                Operation::KickOff(_) => AuditAction::Export,
                Operation::Status | Operation::Download => AuditAction::Read,
                Operation::Cancel => AuditAction::Delete,
            };
            What::new(action).on(crate::audit::ResourceType::ExportJob)
        }
        // A sign-in step that did not succeed.
        Action::ConsoleSignIn => {
            What::new(AuditAction::LoginFailed).on(crate::audit::ResourceType::Session)
        }
        // A console page (read) or form (a change).
        Action::Console if *method == Method::GET || *method == Method::HEAD => {
            What::new(AuditAction::Read)
        }
        Action::Public | Action::Console => What::new(AuditAction::PermissionChange),
    }
}

/// Records the event a request ended without. `Err` carries the response to send instead
/// (503) when the event cannot be committed.
async fn ensure_event(
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
    let recorder = slot.recorder().unwrap_or_else(|| {
        Recorder::new(
            state.audit.clone(),
            AuditContext::from_request(req),
            Actor::anonymous(),
        )
    });
    let what = route_what(action, req.method());
    let recorded = match status.as_u16() {
        401 => recorder.deny(what, [], DenyReason::NotAuthenticated).await,
        403 => recorder.deny(what, [], DenyReason::Policy).await,
        429 => recorder.deny(what, [], DenyReason::RateLimited).await,
        s if s < 400 => recorder.permit(what, []).await,
        _ => recorder.error(what, []).await,
    };
    match recorded {
        Ok(()) => {
            slot.done.store(true, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => Err(e.error_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Interaction, ResourceType};

    #[test]
    fn fhir_fallback_events_carry_the_routes_interaction() {
        for i in Interaction::ALL {
            let a = Action::Fhir(ResourceType::Patient, i);
            assert_eq!(route_what(a, &Method::GET).action, AuditAction::from(i));
            assert_eq!(
                route_what(a, &Method::GET).kind,
                Some(crate::audit::ResourceType::Patient)
            );
        }
    }

    #[test]
    fn admin_fallback_events_carry_the_routes_real_action() {
        use crate::policy::admin::AdminAction;
        for a in AdminAction::ALL {
            assert_eq!(
                route_what(Action::Admin(a), &Method::POST),
                What::from(a),
                "{a:?}"
            );
        }
        assert_eq!(
            route_what(Action::Admin(AdminAction::ReadUser), &Method::GET).action,
            AuditAction::Read
        );
    }
}
