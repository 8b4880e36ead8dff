//! Access to the API: the one pipeline every `/fhir` and `/api` request goes through,
//! driven by the route table.
//!
//! - [`guard`]: the wrapper of every route: inserts the route's declared [`Action`]
//!   ([`RouteAction`]), contains panics, and records the fallback audit event.
//! - [`principal`]: the [`Principal`], the resolved identity (our user and roles, the
//!   verified token, the purpose of use).
//! - [`pipeline`]: authenticate → principal → facts → `policy::decide` on the route's
//!   action → fetch the permitted view → audit → respond ([`Credentials`], [`Pipeline`]).
//! - [`refusal`]: the one mapping from a policy denial to an HTTP answer.
//! - [`expiry`]: the background sweeper that records break-glass grants' expiry.

pub mod expiry;
pub mod guard;
pub mod pipeline;
pub mod principal;
pub mod refusal;

pub use pipeline::{Credentials, PatientOf, Pipeline, RecordAccess};
pub use principal::Principal;

use crate::policy::Action;
use actix_web::{HttpMessage, HttpRequest};

/// The policy action the route table declared for the request's route, inserted by
/// [`guard::contain`]. The pipeline decides on this action and no other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteAction(pub Action);

impl RouteAction {
    pub fn of(req: &HttpRequest) -> Option<Action> {
        req.extensions().get::<RouteAction>().map(|a| a.0)
    }
}
