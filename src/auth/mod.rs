//! API authentication: OAuth 2.0 bearer access tokens (JWT) from the organisation's
//! OpenID Connect provider, verified against the provider's published keys.
//!
//! - [`token`]: [`TokenVerifier::verify`] and the rules every token must pass.
//! - [`jwks`]: where keys come from (configuration only), caching and refresh.
//! - [`scope`]: SMART scopes and the hardening-guide aliases, as a [`ScopeSet`].
//! - [`extract`]: reading the one `Authorization: Bearer` header ([`Bearer`], and the
//!   401 challenges a refusal answers with).
//!
//! Authentication only: who the token belongs to in our database (the principal), what
//! it may do and the audit trail are in [`crate::access`], which calls into this module.
//!
//! Tokens are never logged, echoed or stored: only a fixed reason code is logged when
//! one is refused.

pub mod config;
pub mod extract;
pub mod jwks;
pub mod scope;
pub mod token;

pub use extract::Bearer;
pub use scope::{Context, Interaction, ResourceType, ScopeSet};
pub use token::{AuthError, Grant, TokenVerifier, VerifiedToken};
