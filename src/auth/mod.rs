//! API authentication: OAuth 2.0 bearer access tokens (JWT) from the organisation's
//! OpenID Connect provider, verified against the provider's published keys.
//!
//! - [`token`]: [`TokenVerifier::verify`] and the rules every token must pass.
//! - [`jwks`]: where keys come from (configuration only), caching and refresh.
//! - [`scope`]: SMART scopes and the hardening-guide aliases, as a [`ScopeSet`].
//! - [`extract`]: the [`Bearer`] extractor for handlers.
//!
//! Tokens are never logged, echoed or stored: only a fixed reason code is logged when
//! one is refused.

pub mod caller;
pub mod config;
pub mod extract;
pub mod jwks;
pub mod scope;
pub mod token;

pub use caller::{Caller, Principal};
pub use extract::Bearer;
pub use scope::{Context, Interaction, ResourceType, ScopeSet};
pub use token::{AuthError, Grant, TokenVerifier, VerifiedToken};
