//! The console's OpenID Connect relying party: authorization code flow with PKCE (S256),
//! state and nonce kept server-side; the provider's metadata is discovered on first use
//! and cached (a failed discovery is retried on the next sign-in).

use crate::console::config::ConsoleConfig;
use crate::error::AppError;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, TokenResponse,
};

/// The discovery fields beyond OpenID Connect Discovery that the console reads.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct ExtraMetadata {
    /// RFC 9207: the provider puts `iss` in every authorization response, so a callback
    /// without it did not come from the provider as it is.
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

/// The provider's metadata with [`ExtraMetadata`].
type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

pub struct Oidc {
    config: ConsoleConfig,
    http: reqwest::Client,
    metadata: tokio::sync::OnceCell<Metadata>,
}

/// Where to send the browser, and what to remember until the callback.
pub struct Start {
    pub url: url::Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The verified identity from the ID token.
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    /// The `family_name` claim, when sent: only ever turned into a blind index.
    pub family_name: Option<crate::secret::Secret<String>>,
}

impl Oidc {
    pub fn new(config: ConsoleConfig) -> Result<Oidc, AppError> {
        let http = http_client(None)?;
        Ok(Oidc {
            config,
            http,
            metadata: tokio::sync::OnceCell::new(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Must the callback carry `iss` (the provider advertises RFC 9207 support)?
    pub async fn iss_required(&self) -> Result<bool, AppError> {
        Ok(self
            .metadata()
            .await?
            .additional_metadata()
            .authorization_response_iss_parameter_supported)
    }

    async fn metadata(&self) -> Result<&Metadata, AppError> {
        self.metadata
            .get_or_try_init(|| async {
                let issuer = IssuerUrl::new(self.config.issuer.clone())
                    .map_err(|_| AppError::internal("console.issuer is not a URL"))?;
                Metadata::discover_async(issuer, &self.http)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "OIDC discovery failed");
                        AppError::Unavailable
                    })
            })
            .await
    }

    async fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        AppError,
    > {
        let metadata = self.metadata().await?.clone();
        let redirect = RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|_| AppError::internal("console.redirect_url is not a URL"))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().clone(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// A fresh authorization request (new state, nonce and PKCE verifier).
    pub async fn start(&self) -> Result<Start, AppError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = super::session::random_token();
        let nonce = super::session::random_token();
        let (s, n) = (state.clone(), nonce.clone());
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(s),
                move || Nonce::new(n),
            )
            // No add_scope: the library always sends `openid` (adding it again sent
            // `scope=openid openid`), and the console needs no other claim.
            .set_pkce_challenge(challenge)
            .url();
        Ok(Start {
            url,
            state,
            nonce,
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code and verifies the ID token (signature, issuer, audience, expiry,
    /// nonce). Any failure is a client error with a fixed message.
    pub async fn finish(
        &self,
        code: String,
        nonce: String,
        pkce_verifier: String,
    ) -> Result<Identity, AppError> {
        let client = self.client().await?;
        let failed = || {
            AppError::client(
                actix_web::http::StatusCode::BAD_REQUEST,
                super::SIGN_IN_FAILED,
            )
        };
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|_| AppError::internal("provider has no token endpoint"))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "OIDC code exchange failed");
                failed()
            })?;
        let id_token = token.id_token().ok_or_else(failed)?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(nonce))
            .map_err(|e| {
                tracing::warn!(error = %e, "ID token rejected");
                failed()
            })?;
        Ok(Identity {
            issuer: claims.issuer().as_str().to_string(),
            subject: claims.subject().as_str().to_string(),
            family_name: claims
                .family_name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string())
                .filter(|n| !n.trim().is_empty() && n.len() <= 200)
                .map(crate::secret::Secret::new),
        })
    }
}

/// The HTTP client that talks to the provider; `extra_root` only under `custodian dev`.
fn http_client(extra_root: Option<reqwest::Certificate>) -> Result<reqwest::Client, AppError> {
    let mut builder = reqwest::Client::builder()
        // Following redirects from the token endpoint invites SSRF.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10));
    if let Some(root) = extra_root {
        builder = builder.add_root_certificate(root);
    }
    builder
        .build()
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("OIDC HTTP client")))
}

// ---- Development only ------------------------------------------------------------------
// `custodian dev` serves its development sign-in provider itself, under its self-signed
// certificate; `app::startup` calls this only when `custodian dev` started it (never
// under `serve`). Nothing else about the sign-in changes.
impl Oidc {
    /// Also trusts `root_pem` (the dev instance's own certificate) when talking to the
    /// provider.
    pub fn trust_dev_root(&mut self, root_pem: &str) -> Result<(), AppError> {
        let root = reqwest::Certificate::from_pem(root_pem.as_bytes())
            .map_err(|_| AppError::internal("dev certificate is not PEM"))?;
        self.http = http_client(Some(root))?;
        Ok(())
    }
}
