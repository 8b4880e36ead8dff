//! The one policy decision point. Every route declares the action it performs; a route
//! cannot be registered without one (see [`crate::web::routes`]).

/// What a route does, in policy terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No authentication and no PHI: health, readiness, metadata, static assets.
    Public,
}
