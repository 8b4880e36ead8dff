//! The bearer token of a request ([`raw_token`]) and the answers to a refused one. The
//! verified token is a [`Bearer`]; `crate::access` verifies it for every API request.
//!
//! - The token is read from exactly one `Authorization: Bearer <token>` header (scheme
//!   case-insensitive). Two `Authorization` headers, or an `access_token` query
//!   parameter, are refused with 401 and `error="invalid_request"` (RFC 6750 §3.1
//!   suggests 400; we keep every authentication failure a 401): a token in a URL ends
//!   up in logs and browser history, so it is never accepted there.
//! - Failures answer 401 with `WWW-Authenticate: Bearer error="invalid_token"` and a
//!   fixed body (rendered by the edge, an `OperationOutcome` under `/fhir`); why the token
//!   was refused is logged as a reason code, never sent, and the token is never logged.
//! - No token at all: 401 with `WWW-Authenticate: Bearer` (no error code, §3.1).
//! - When the provider's keys cannot be had (never fetched, or older than
//!   `auth.jwks_max_staleness_secs`), 503: the fault is ours, not the caller's.

use super::token::{AuthError, VerifiedToken};
use crate::error::AppError;
use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;

/// A verified bearer token.
#[derive(Clone, Debug)]
pub struct Bearer(pub VerifiedToken);

impl std::ops::Deref for Bearer {
    type Target = VerifiedToken;
    fn deref(&self) -> &VerifiedToken {
        &self.0
    }
}

const CHALLENGE: &str = "Bearer";
const CHALLENGE_INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
const CHALLENGE_INVALID_REQUEST: &str = "Bearer error=\"invalid_request\"";

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> AppError {
        match e {
            AuthError::Missing | AuthError::NotConfigured => AppError::Unauthenticated {
                challenge: CHALLENGE,
            },
            AuthError::BadRequest => AppError::Unauthenticated {
                challenge: CHALLENGE_INVALID_REQUEST,
            },
            AuthError::KeysUnavailable => AppError::Unavailable,
            _ => AppError::Unauthenticated {
                challenge: CHALLENGE_INVALID_TOKEN,
            },
        }
    }
}

/// The raw token from the request, or why there is none.
pub fn raw_token(req: &HttpRequest) -> Result<String, AuthError> {
    if query_has_access_token(req.query_string()) {
        return Err(AuthError::BadRequest);
    }
    let mut values = req.headers().get_all(AUTHORIZATION);
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::BadRequest);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, DPoP, …) is not a bearer token.
        return Err(AuthError::Missing);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(token.to_string())
}

fn query_has_access_token(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("access_token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn reads_one_bearer_header_with_any_scheme_case() {
        for h in ["Bearer a.b.c", "bearer a.b.c", "BEARER  a.b.c"] {
            let req = TestRequest::default()
                .insert_header((AUTHORIZATION, h))
                .to_http_request();
            assert_eq!(raw_token(&req).unwrap(), "a.b.c", "{h}");
        }
    }

    #[test]
    fn refuses_query_tokens_duplicates_and_other_schemes() {
        let req = TestRequest::with_uri("/fhir/Patient?access_token=a.b.c").to_http_request();
        assert_eq!(raw_token(&req), Err(AuthError::BadRequest));
        let req = TestRequest::default()
            .append_header((AUTHORIZATION, "Bearer a.b.c"))
            .append_header((AUTHORIZATION, "Bearer d.e.f"))
            .to_http_request();
        assert_eq!(raw_token(&req), Err(AuthError::BadRequest));
        let req = TestRequest::default()
            .insert_header((AUTHORIZATION, "Basic dXNlcjpwdw=="))
            .to_http_request();
        assert_eq!(raw_token(&req), Err(AuthError::Missing));
        let req = TestRequest::default()
            .insert_header((AUTHORIZATION, "Bearer a b"))
            .to_http_request();
        assert_eq!(raw_token(&req), Err(AuthError::Malformed));
        let req = TestRequest::default().to_http_request();
        assert_eq!(raw_token(&req), Err(AuthError::Missing));
    }

    #[test]
    fn refusals_carry_fixed_challenges() {
        use actix_web::ResponseError;
        let res = AppError::from(AuthError::Expired).error_response();
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers().get("www-authenticate").unwrap(),
            "Bearer error=\"invalid_token\""
        );
        let res = AppError::from(AuthError::Missing).error_response();
        assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
        let res = AppError::from(AuthError::KeysUnavailable).error_response();
        assert_eq!(res.status(), 503);
    }
}
