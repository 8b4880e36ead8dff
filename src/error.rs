//! The one error type. Client errors carry a status and a fixed, safe message; internal
//! errors are logged with their cause chain and the client sees only a generic body and
//! the request id (the body itself is rendered by [`crate::web::edge`]).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A problem with the request. The message is ours, never the caller's input.
    #[error("{message}")]
    Client {
        status: StatusCode,
        message: Cow<'static, str>,
    },
    /// Over a rate limit; retry after the given number of seconds.
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// No acceptable credentials (401). `challenge` is the whole `WWW-Authenticate`
    /// value (RFC 6750), fixed by us; it never carries detail about the token.
    #[error("authentication required")]
    Unauthenticated { challenge: &'static str },
    /// The token is valid but the person's authentication is not recent or strong enough
    /// for what they ask (401 with an RFC 9470 step-up challenge: `error=
    /// "insufficient_user_authentication"`, `max_age`, `acr_values`). The challenge is
    /// built from our configuration only.
    #[error("step-up authentication required")]
    InsufficientAuthentication { challenge: String },
    /// A dependency (database, audit writer) is not available right now.
    #[error("service unavailable")]
    Unavailable,
    /// Stored data failed its integrity check: a sealed value that cannot be opened
    /// (tampered, corrupted, or sealed with a key this instance does not have). The
    /// whole response fails (500, [`INTEGRITY_MESSAGE`]) rather than leave a record out
    /// of a result unnoticed. The cause names where (table, column, row id — never a
    /// value) and is logged, never sent.
    #[error("stored data failed its integrity check: {0}")]
    Integrity(anyhow::Error),
    /// Anything else: logged in full, answered with a generic 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The safe message an error response carries; read by the edge middleware when it
/// renders the body in the caller's format.
#[derive(Clone, Debug)]
pub struct SafeMessage(pub Cow<'static, str>);

pub const UNAVAILABLE_MESSAGE: &str =
    "The service is temporarily unavailable. Please retry shortly.";
pub const UNAUTHENTICATED_MESSAGE: &str = "Authentication is required: send a valid access token.";
pub const STEP_UP_MESSAGE: &str = "Recent multi-factor authentication is required: sign in again \
with multi-factor authentication (see the WWW-Authenticate header) and retry with the new token.";
pub const INTEGRITY_MESSAGE: &str = "A stored record in this result could not be decrypted \
(integrity check failed), so nothing was returned. This is logged; quote the request id when \
reporting it.";
pub const INTERNAL_MESSAGE: &str =
    "An internal error occurred. Quote the request id when reporting it.";

impl AppError {
    pub fn client(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Client {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn not_found() -> Self {
        Self::client(
            StatusCode::NOT_FOUND,
            "The requested resource was not found.",
        )
    }

    pub fn internal(context: &'static str) -> Self {
        Self::Internal(anyhow::anyhow!(context))
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::Client { status, .. } => *status,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unauthenticated { .. } | AppError::InsufficientAuthentication { .. } => {
                StatusCode::UNAUTHORIZED
            }
            AppError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Integrity(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            AppError::Client { message, .. } => message.clone(),
            AppError::RateLimited { .. } => Cow::Borrowed("Too many requests. Retry later."),
            AppError::Unauthenticated { .. } => Cow::Borrowed(UNAUTHENTICATED_MESSAGE),
            AppError::InsufficientAuthentication { .. } => Cow::Borrowed(STEP_UP_MESSAGE),
            AppError::Unavailable => Cow::Borrowed(UNAVAILABLE_MESSAGE),
            AppError::Integrity(e) => {
                tracing::error!(error = %format!("{e:#}"), "stored data failed its integrity check");
                Cow::Borrowed(INTEGRITY_MESSAGE)
            }
            AppError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                Cow::Borrowed(INTERNAL_MESSAGE)
            }
        };
        let mut res = HttpResponse::new(self.status_code());
        res.extensions_mut().insert(SafeMessage(message));
        if let AppError::Unauthenticated { challenge } = self {
            res.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static(challenge),
            );
        }
        if let AppError::InsufficientAuthentication { challenge } = self
            && let Ok(value) = actix_web::http::header::HeaderValue::from_str(challenge)
        {
            res.headers_mut()
                .insert(actix_web::http::header::WWW_AUTHENTICATE, value);
        }
        let retry_after = match self {
            AppError::Unavailable => Some(5),
            AppError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            _ => None,
        };
        if let Some(secs) = retry_after {
            res.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(secs),
            );
        }
        res
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => AppError::Unavailable,
            // Not found is a decision for the caller (`.optional()`), never a side effect
            // of a failing query.
            other => AppError::Internal(anyhow::Error::new(other).context("database query failed")),
        }
    }
}

impl From<diesel::r2d2::PoolError> for AppError {
    fn from(_: diesel::r2d2::PoolError) -> Self {
        AppError::Unavailable
    }
}

/// A configuration problem, always naming the setting it is about.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}
