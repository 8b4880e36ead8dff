//! What handlers share: the application state, built once at start-up by [`crate::app`].
//! A leaf of the module graph: it imports the services it holds, never a handler.

use crate::db::Db;
use crate::web::ratelimit;

/// What handlers share.
pub struct AppState {
    pub db: Db,
    /// Seals and opens PHI fields; computes blind indexes (see [`crate::crypto`]).
    pub keyring: std::sync::Arc<crate::crypto::Keyring>,
    /// Bearer-token verification; `None` when `[auth]` is not configured (then every
    /// bearer-protected route answers 401).
    pub tokens: Option<crate::auth::TokenVerifier>,
    /// The group-commit audit writer. Handlers record through their request's
    /// [`crate::audit::Recorder`] (`Pipeline::recorder`: `permit` / `deny` / `error`, or
    /// `commit_with` for a write), never through this field directly.
    pub audit: crate::audit::AuditWriter,
    /// Per-principal request limit (`ratelimit.per_principal_*`), shared by all workers.
    pub principal_limit: Option<std::sync::Arc<ratelimit::RateLimiter>>,
    /// Rate-limited refusals aggregated per source and window before they reach the
    /// audit trail ([`crate::audit::flood`]).
    pub floods: std::sync::Arc<crate::audit::flood::FloodTally>,
    /// Client certificates (SHA-256) that identify service principals (`tls.client_identities`).
    pub client_identities: std::sync::Arc<std::collections::HashMap<[u8; 32], String>>,
    /// Origin of `server.public_url`, accepted as the Origin of console form posts.
    pub public_origin: String,
    /// What everything that decides by time reads (token expiry and age, key refresh,
    /// console sessions, step-up): the system clock except in tests.
    pub clock: crate::domain::SharedClock,
    /// `[break_glass]`: modes, reasons, durations, authentication strength.
    pub break_glass: std::sync::Arc<crate::policy::break_glass::BreakGlassConfig>,
    /// `crypto.export_key`: the pseudonyms of de-identified exports (`None` when unset:
    /// then no pseudonym can be re-identified).
    pub export_key: Option<std::sync::Arc<crate::crypto::ExportKey>>,
    /// `[reidentify]`: the role that may re-identify a pseudonym.
    pub reidentify: std::sync::Arc<crate::policy::reidentify::ReidentifyConfig>,
    /// `webhooks.allow_private_hosts`: whether the SSRF guard lets an endpoint be
    /// registered on an internal address.
    pub allow_private_webhook_hosts: bool,
}
