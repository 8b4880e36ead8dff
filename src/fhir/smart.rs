//! SMART App Launch discovery: `GET /fhir/.well-known/smart-configuration` (and the same at
//! `/.well-known/smart-configuration`), public and without PHI, derived from the configured
//! OpenID provider's discovery document (`auth.issuer`): its issuer, JWKS, authorization
//! and token endpoints, grant types, client authentication methods and PKCE methods; the
//! scopes this server understands ([`crate::auth::scope::vocabulary`]); and only the
//! capabilities that are true of this server with that provider.

use crate::error::AppError;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

/// The provider's URL under `key`, if it is an acceptable provider URL (https, or http on
/// localhost; no credentials): a document naming anything else does not reach clients.
fn provider_url(doc: &Value, key: &str) -> Option<String> {
    let raw = doc[key].as_str()?;
    // Validated, then passed on exactly as the provider wrote it (the issuer must match
    // tokens' `iss` byte for byte).
    crate::auth::config::validate_provider_url("auth.issuer", raw)
        .ok()
        .map(|_| raw.to_string())
}

fn strings(doc: &Value, key: &str) -> Option<Vec<String>> {
    doc[key].as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    })
}

/// The SMART configuration for a provider discovery document; `None` if the provider
/// offers no authorization-code flow with PKCE S256 (then no SMART app can launch).
pub fn configuration(doc: &Value) -> Option<Value> {
    let issuer = provider_url(doc, "issuer")?;
    let authorize = provider_url(doc, "authorization_endpoint")?;
    let token = provider_url(doc, "token_endpoint")?;
    // OpenID Connect Discovery: grant types default to authorization_code and implicit.
    let grants: Vec<String> = strings(doc, "grant_types_supported")
        .unwrap_or_else(|| vec!["authorization_code".into()])
        .into_iter()
        .filter(|g| {
            matches!(
                g.as_str(),
                "authorization_code" | "client_credentials" | "refresh_token"
            )
        })
        .collect();
    if !grants.iter().any(|g| g == "authorization_code") {
        return None;
    }
    // SMART requires S256 and forbids advertising `plain`.
    let pkce: Vec<String> = strings(doc, "code_challenge_methods_supported")
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m == "S256")
        .collect();
    if pkce.is_empty() {
        return None;
    }
    // Client authentication: the provider's list (default client_secret_basic).
    let auth_methods = strings(doc, "token_endpoint_auth_methods_supported")
        .unwrap_or_else(|| vec!["client_secret_basic".into()]);
    let mut capabilities = vec![
        "launch-standalone",
        "permission-v1",
        "permission-v2",
        "permission-user",
        "permission-patient",
    ];
    if auth_methods.iter().any(|m| m == "none") {
        capabilities.push("client-public");
    }
    if auth_methods
        .iter()
        .any(|m| m == "client_secret_basic" || m == "client_secret_post")
    {
        capabilities.push("client-confidential-symmetric");
    }
    if auth_methods.iter().any(|m| m == "private_key_jwt") {
        capabilities.push("client-confidential-asymmetric");
    }
    let provider_scopes = strings(doc, "scopes_supported").unwrap_or_default();
    let openid = provider_scopes.iter().any(|s| s == "openid");
    if openid {
        capabilities.push("sso-openid-connect");
    }
    let mut scopes = crate::auth::scope::vocabulary();
    if openid {
        scopes.insert(0, "openid".into());
    }
    let mut out = json!({
        "issuer": issuer,
        "authorization_endpoint": authorize,
        "token_endpoint": token,
        "grant_types_supported": grants,
        "token_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": pkce,
        "capabilities": capabilities,
    });
    if let Some(jwks) = provider_url(doc, "jwks_uri") {
        out["jwks_uri"] = json!(jwks);
    }
    Some(out)
}

/// The SMART configuration of this server, if bearer tokens are configured and the
/// provider's document allows a SMART launch.
pub async fn current(state: &AppState) -> Result<Option<Value>, AppError> {
    let Some(tokens) = &state.tokens else {
        return Ok(None);
    };
    let doc = tokens.provider_document().await.map_err(|_| {
        AppError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in provider's discovery document is unavailable; try again later.",
        )
    })?;
    Ok(configuration(&doc))
}

pub async fn smart_configuration(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    match current(&state).await? {
        Some(config) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(config.to_string())),
        None => Err(AppError::not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_true_capabilities_and_provider_urls_reach_the_document() {
        let doc = json!({
            "issuer": "https://login.example",
            "authorization_endpoint": "https://login.example/auth",
            "token_endpoint": "https://login.example/token",
            "jwks_uri": "https://login.example/jwks",
            "grant_types_supported": ["authorization_code", "implicit", "password"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        });
        let c = configuration(&doc).unwrap();
        assert_eq!(c["grant_types_supported"], json!(["authorization_code"]));
        assert_eq!(c["code_challenge_methods_supported"], json!(["S256"]));
        let caps = c["capabilities"].as_array().unwrap();
        assert!(caps.contains(&json!("client-confidential-symmetric")));
        assert!(!caps.contains(&json!("client-public")));
        assert!(!caps.contains(&json!("sso-openid-connect")));
        assert!(
            !caps
                .iter()
                .any(|c| c.as_str().unwrap().starts_with("context-"))
        );
        // Every advertised scope is one the parser understands.
        for s in c["scopes_supported"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert!(
                !crate::auth::ScopeSet::parse(s).recognised().is_empty(),
                "{s}"
            );
        }
        // No PKCE S256, no code flow, or a plain-http endpoint: no SMART document.
        let mut no_pkce = doc.clone();
        no_pkce["code_challenge_methods_supported"] = json!(["plain"]);
        assert!(configuration(&no_pkce).is_none());
        let mut no_code = doc.clone();
        no_code["grant_types_supported"] = json!(["client_credentials"]);
        assert!(configuration(&no_code).is_none());
        let mut http = doc.clone();
        http["token_endpoint"] = json!("http://login.example/token");
        assert!(configuration(&http).is_none());
    }
}
