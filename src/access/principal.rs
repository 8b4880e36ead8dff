//! The [`Principal`]: the resolved identity of an API request, as the DESIGN names it —
//! our user row (roles from our database, never from the token, loaded on every
//! request), the verified token (issuer, subject, scopes, client, auth time), and the
//! purpose of use the request declared.
//!
//! Also here: how a request's credentials are found before the user is loaded (a bearer
//! token, or a verified client certificate when there is no `Authorization` header).

use crate::audit::{Actor, AuthMethod, ClientId, PurposeOfUse, RoleCode};
use crate::auth::{AuthError, Bearer, Grant, ScopeSet, VerifiedToken};
use crate::db::users::{UserKind, UserRecord};
use crate::domain::ids::UserId;
use crate::error::AppError;
use crate::policy::{self, Context};
use crate::state::AppState;
use actix_web::{HttpRequest, web};

pub const PURPOSE_HEADER: &str = "x-purpose-of-use";

/// The issuer recorded for services authenticated by a client certificate.
pub const MTLS_ISSUER: &str = "mtls";

/// Who is acting, resolved: see the module documentation.
pub struct Principal {
    pub user: UserRecord,
    pub token: VerifiedToken,
    pub purpose: PurposeOfUse,
}

impl Principal {
    pub fn user_id(&self) -> UserId {
        self.user.id
    }

    /// A service client, by the account's kind in our database — never by the token's
    /// shape: a service's subject in a user-shaped token (another `client_id`) is still
    /// the service, read in system context.
    pub fn is_service(&self) -> bool {
        self.user.kind == UserKind::Service
    }

    /// The actor recorded in audit events (internal ids and role codes only).
    pub fn actor(&self) -> Actor {
        let roles = self
            .user
            .roles
            .iter()
            .copied()
            .map(RoleCode::from)
            .collect();
        let service = self.is_service();
        Actor {
            user_id: Some(self.user.id),
            client_id: if service { self.client_app() } else { None },
            roles,
            auth_method: if service {
                AuthMethod::ClientCredentials
            } else {
                AuthMethod::Bearer
            },
        }
    }

    /// The client application named by the token (`client_id`/`azp`).
    pub fn client_app(&self) -> Option<ClientId> {
        self.token
            .client_id
            .as_deref()
            .and_then(|c| ClientId::parse(c).ok())
    }

    /// The SMART context this principal's scopes are read in ([`policy::smart_context`]).
    pub fn context(&self) -> Context {
        policy::smart_context(self.is_service(), &self.user.roles)
    }
}

/// A service identified by its verified client certificate (`tls.client_identities`),
/// when the request carries no `Authorization` header (a token always takes precedence).
pub(super) fn certified_client(req: &HttpRequest) -> Option<String> {
    use sha2::Digest;
    if req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION)
    {
        return None;
    }
    let cert = req.conn_data::<crate::tls::ClientCertificate>()?;
    let state = req.app_data::<web::Data<AppState>>()?;
    let digest: [u8; 32] = sha2::Sha256::digest(cert.0.as_ref()).into();
    state.client_identities.get(&digest).cloned()
}

/// A certificate-authenticated service acts like a client-credentials token whose client
/// application may do anything (`system/*.cruds`): what it can actually do is decided by
/// the roles of its service user, as for every principal.
pub(super) fn certificate_token(client: String) -> VerifiedToken {
    VerifiedToken {
        issuer: MTLS_ISSUER.to_string(),
        subject: client.clone(),
        scopes: ScopeSet::parse("system/*.cruds"),
        client_id: Some(client),
        auth_time: None,
        acr: None,
        amr: Vec::new(),
        jti: None,
        issued_at: None,
        expires_at: i64::MAX,
        grant: Grant::ClientCredentials,
        family_name: None,
    }
}

/// Verifies the request's bearer token with the application's verifier. Failures are
/// logged as a reason code only (never the token) and answered as
/// [`crate::auth::extract`] documents.
pub(super) async fn verify_bearer(
    verifier: Option<crate::auth::TokenVerifier>,
    raw: Result<String, AuthError>,
) -> Result<Bearer, AppError> {
    let result = match (verifier, raw) {
        (_, Err(e)) => Err(e),
        (None, Ok(_)) => Err(AuthError::NotConfigured),
        (Some(v), Ok(raw)) => v.verify(&raw).await,
    };
    match result {
        Ok(token) => Ok(Bearer(token)),
        Err(e) => {
            if e == AuthError::NotConfigured || e == AuthError::KeysUnavailable {
                tracing::warn!(target: "custodian::auth", reason = e.code(), "bearer token not verifiable");
            } else {
                tracing::info!(target: "custodian::auth", reason = e.code(), "bearer token refused");
            }
            Err(AppError::from(e))
        }
    }
}

/// The declared purpose of use (`X-Purpose-Of-Use`, default treatment).
pub(super) fn parse_purpose(req: &HttpRequest) -> Result<PurposeOfUse, AppError> {
    match req.headers().get(PURPOSE_HEADER) {
        None => Ok(PurposeOfUse::Treatment),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(PurposeOfUse::from_code)
            // Only the pipeline says that an access is under a break-glass grant.
            .filter(|p| *p != PurposeOfUse::BreakTheGlass)
            .ok_or_else(|| {
                AppError::bad_request(
                    "Invalid header 'X-Purpose-Of-Use': must be a PurposeOfUse code such as TREAT, ETREAT, HPAYMT or HOPERAT.",
                )
            }),
    }
}

/// A handler (or test route) that takes [`Bearer`] runs only for a request with a valid
/// access token; it does not load a principal and decides nothing (the FHIR and admin
/// routes take [`super::Credentials`] or [`super::Pipeline`]).
impl actix_web::FromRequest for Bearer {
    type Error = AppError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let verifier = req
            .app_data::<web::Data<AppState>>()
            .and_then(|s| s.tokens.clone());
        let raw = crate::auth::extract::raw_token(req);
        Box::pin(verify_bearer(verifier, raw))
    }
}
