//! Request-level wiring: where a request came from, captured once and stamped on every
//! event of that request. Handlers do not build events from it themselves: they record
//! through the request's [`crate::audit::Recorder`] (bound to the principal and this
//! context), whose `permit` / `deny` / `error` / `commit_with` helpers fill in the rest.
//!
//! Only the request id, the peer address and the *class* of the User-Agent (browser,
//! command-line tool, library, other — never the header's text) are taken from the
//! request: never its path, query string, other headers or body.

use super::event::{
    Actor, AuditAction, AuditEvent, ClientId, Outcome, PurposeOfUse, ResourceType, UserAgent,
};
use crate::domain::{PatientId, RequestId};
use actix_web::HttpMessage;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use std::future::{Ready, ready};
use std::net::IpAddr;
use uuid::Uuid;

/// Where a request came from, captured once per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditContext {
    pub request_id: Option<RequestId>,
    /// The TCP peer address. Forwarding headers are not trusted (they are caller
    /// controlled); behind a proxy this is the proxy's address.
    pub source_ip: Option<IpAddr>,
    pub user_agent: Option<UserAgent>,
}

impl AuditContext {
    pub fn from_request(req: &HttpRequest) -> Self {
        let request_id = req.extensions().get::<RequestId>().cloned();
        let source_ip = req.peer_addr().map(|a| a.ip());
        let user_agent = req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| UserAgent::classify(&String::from_utf8_lossy(v.as_bytes())));
        Self {
            request_id,
            source_ip,
            user_agent,
        }
    }

    /// Starts an event for this request.
    pub fn event(&self, actor: Actor, action: AuditAction, outcome: Outcome) -> EventBuilder {
        let mut event = AuditEvent::new(actor, action, outcome);
        event.request_id = self.request_id.clone();
        event.source_ip = self.source_ip;
        event.user_agent = self.user_agent;
        EventBuilder(event)
    }
}

impl FromRequest for AuditContext {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(AuditContext::from_request(req)))
    }
}

/// Fills the rest of an event.
#[derive(Clone, Debug)]
pub struct EventBuilder(AuditEvent);

impl EventBuilder {
    /// A builder without request context (background jobs, commands).
    pub fn new(actor: Actor, action: AuditAction, outcome: Outcome) -> Self {
        Self(AuditEvent::new(actor, action, outcome))
    }

    pub fn client_app(mut self, client: ClientId) -> Self {
        self.0.client_app = Some(client);
        self
    }

    /// The resource acted on, by internal id.
    pub fn resource(mut self, kind: ResourceType, id: Uuid) -> Self {
        self.0.resource_type = Some(kind);
        self.0.resource_id = Some(id);
        self
    }

    /// The kind of resource, without an id (searches, exports).
    pub fn resource_type(mut self, kind: ResourceType) -> Self {
        self.0.resource_type = Some(kind);
        self
    }

    /// Every patient touched (for a search: every patient in the results).
    pub fn patients(mut self, ids: impl IntoIterator<Item = PatientId>) -> Self {
        self.0.patient_ids.extend(ids);
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.0.outcome = outcome;
        self
    }

    pub fn purpose(mut self, purpose: PurposeOfUse) -> Self {
        self.0.purpose_of_use = Some(purpose);
        self
    }

    pub fn basis(mut self, basis: super::event::AccessBasis) -> Self {
        self.0.basis = Some(basis);
        self
    }

    pub fn break_glass(mut self, grant_id: Uuid) -> Self {
        self.0.break_glass_grant_id = Some(grant_id);
        self
    }

    pub fn build(self) -> AuditEvent {
        self.0
    }
}
