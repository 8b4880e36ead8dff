//! How the console records its audit events: through the ONE [`Recorder`] of
//! [`crate::audit`], built here for whoever acts at each step — nobody yet
//! ([`anonymous`]: a refused sign-in before a user was matched), a console user
//! ([`user`]), or an emergency account whose roles are withheld until its password and
//! code were accepted ([`user_with_roles`]).
//!
//! The only console-specific part is [`ConsoleEvents`], sugar over the recorder's typed
//! helpers: [`session`](ConsoleEvents::session) for sign-in, failed sign-in, step-up and
//! sign-out events (on the console session resource), and [`admin`](ConsoleEvents::admin)
//! for administration events (purpose: system administration). Refusals without a
//! resource use the recorder's own [`Recorder::deny`]. Internal ids only: never names,
//! reasons or codes.

use crate::access::guard::AuditSlot;
use crate::audit::{
    Actor, AuditAction, AuditContext, AuthMethod, Outcome, PurposeOfUse, Recorder,
    ResourceType as Kind, RoleCode, What,
};
use crate::db::users::UserRecord;
use crate::error::AppError;
use crate::state::AppState;
use actix_web::HttpRequest;
use uuid::Uuid;

/// The audit roles of a user (role codes, from our database).
pub fn role_codes(user: &UserRecord) -> Vec<RoleCode> {
    user.roles
        .iter()
        .filter_map(|r| RoleCode::parse(r.as_str()).ok())
        .collect()
}

/// The request's recorder for `actor`, tied to the request's audit slot: an event it
/// commits counts as the request's event, and for a known actor the guard's fallback
/// event of a refused or failed request (CSRF, bad form, handler error) names them too.
fn for_request(state: &AppState, req: &HttpRequest, actor: Actor) -> Recorder {
    let known = actor.user_id.is_some();
    let recorder = Recorder::new(state.audit.clone(), AuditContext::from_request(req), actor);
    match AuditSlot::of(req) {
        Some(slot) => {
            let recorder = recorder.marking(slot.flag());
            if known {
                slot.set_recorder(recorder.clone());
            }
            recorder
        }
        None => recorder,
    }
}

/// Nobody known yet (a failed or refused sign-in before a user was matched).
pub fn anonymous(state: &AppState, req: &HttpRequest) -> Recorder {
    for_request(state, req, Actor::anonymous())
}

/// `user`, authenticated so far by `method`.
pub fn user(
    state: &AppState,
    req: &HttpRequest,
    user: &UserRecord,
    method: AuthMethod,
) -> Recorder {
    user_with_roles(state, req, user.id, role_codes(user), method)
}

/// A user whose roles are given (or withheld: an emergency account before its password
/// and code were accepted).
pub fn user_with_roles(
    state: &AppState,
    req: &HttpRequest,
    id: crate::domain::UserId,
    roles: Vec<RoleCode>,
    method: AuthMethod,
) -> Recorder {
    for_request(state, req, Actor::user(id, roles, method))
}

/// What an event is about, from the console's `(kind, id)` pair.
fn what(action: AuditAction, resource: Option<(Kind, Option<Uuid>)>) -> What {
    match resource {
        Some((kind, Some(id))) => What::new(action).on(kind).id(id),
        Some((kind, None)) => What::new(action).on(kind),
        None => What::new(action),
    }
}

/// The console's events, as sugar over the [`Recorder`].
pub trait ConsoleEvents {
    /// A session event (sign-in, failed sign-in, step-up, sign-out) on the console
    /// session resource.
    fn session(
        &self,
        action: AuditAction,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), AppError>>;

    /// An administration event (purpose: system administration) with any outcome.
    fn admin(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<crate::domain::PatientId>,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), AppError>>;
}

impl ConsoleEvents for Recorder {
    async fn session(&self, action: AuditAction, outcome: Outcome) -> Result<(), AppError> {
        let what = What::new(action).on(Kind::Session);
        self.record(self.event(what, [], outcome).build()).await
    }

    async fn admin(
        &self,
        action: AuditAction,
        resource: Option<(Kind, Option<Uuid>)>,
        patients: Vec<crate::domain::PatientId>,
        outcome: Outcome,
    ) -> Result<(), AppError> {
        let event = self
            .event(what(action, resource), patients, outcome)
            .purpose(PurposeOfUse::SystemAdministration);
        self.record(event.build()).await
    }
}
