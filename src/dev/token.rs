//! Development-only access tokens. `custodian dev` generates an Ed25519 signing key in
//! `.custodian/dev/keys/`, serves its public half at `GET /dev/jwks.json` (registered only
//! by `custodian dev`, never by `serve`) and configures `auth.issuer`, `auth.audience` and
//! `auth.jwks_url` to match. `custodian dev-token --sub dr.demo` prints a short-lived token
//! signed with that key. Nothing here is used in production: `serve` never loads the key
//! and never registers the route.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use sha2::Digest;
use std::path::{Path, PathBuf};

/// The issuer of development tokens (`auth.issuer` under `custodian dev`).
pub const DEV_ISSUER: &str = "https://localhost:8443/dev-idp";
/// The audience of development tokens (`auth.audience` under `custodian dev`).
pub const DEV_AUDIENCE: &str = "https://localhost:8443/fhir";
/// The path the development JWKS is served at.
pub const DEV_JWKS_PATH: &str = "/dev/jwks.json";
/// The `client_id` claim of development tokens.
pub const DEV_CLIENT_ID: &str = "custodian-dev-token";
/// Scopes of a development token unless `--scope` says otherwise. Scopes only narrow:
/// what the person may do still comes from their roles in the database.
pub const DEFAULT_SCOPE: &str = "user/*.cruds patient/*.rs admin audit.read";
/// Longest lifetime `dev-token` will mint.
pub const MAX_TTL_SECS: u64 = 8 * 3600;
const KEY_FILE: &str = "dev-token-signing-key";

/// The development signing key.
pub struct DevSigningKey {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for DevSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The serve-side of development tokens: the JWKS document `GET /dev/jwks.json` answers
/// with, and a certificate the token verifier trusts when fetching it from this very
/// server (the dev certificate is self-signed).
#[derive(Clone, Debug)]
pub struct DevJwks {
    pub document: std::sync::Arc<String>,
    pub trust_root_pem: Option<String>,
}

fn key_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join(KEY_FILE)
}

impl DevSigningKey {
    fn from_seed(seed: [u8; 32]) -> DevSigningKey {
        let key = SigningKey::from_bytes(&seed);
        let digest = sha2::Sha256::digest(key.verifying_key().as_bytes());
        let kid = format!("dev-{}", hex::encode(&digest[..8]));
        DevSigningKey { key, kid }
    }

    /// Creates the key in `keys_dir` (file 0600) on first use; loads it afterwards.
    pub fn ensure(keys_dir: &Path) -> anyhow::Result<DevSigningKey> {
        let path = key_path(keys_dir);
        if !path.is_file() {
            use rand::RngCore;
            std::fs::create_dir_all(keys_dir)?;
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(seed.as_mut());
            let encoded = zeroize::Zeroizing::new(STANDARD.encode(seed.as_ref()));
            super::write_private(&path, format!("{}\n", encoded.as_str()).as_bytes())?;
        }
        Self::load(keys_dir)
    }

    /// Loads the key; refuses when `custodian dev` has not created it.
    pub fn load(keys_dir: &Path) -> anyhow::Result<DevSigningKey> {
        let path = key_path(keys_dir);
        if !keys_dir.is_dir() || !path.is_file() {
            bail!(
                "no development signing key at {}: run `custodian dev` first (dev tokens exist only for local development)",
                path.display()
            );
        }
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        let bytes = zeroize::Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .with_context(|| format!("{} is not base64", path.display()))?,
        );
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .with_context(|| format!("{} must hold 32 bytes", path.display()))?;
        Ok(Self::from_seed(seed))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        let x = URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes());
        serde_json::json!({
            "keys": [{
                "kty": "OKP", "crv": "Ed25519", "x": x,
                "kid": self.kid, "alg": "EdDSA", "use": "sig",
            }]
        })
        .to_string()
    }

    /// A signed access token (`typ: at+jwt`, EdDSA) for `sub`.
    pub fn mint(
        &self,
        issuer: &str,
        audience: &str,
        sub: &str,
        scope: &str,
        ttl_secs: u64,
        now: i64,
    ) -> String {
        self.mint_with(
            issuer,
            audience,
            sub,
            scope,
            ttl_secs,
            now,
            DevAuthentication::default(),
        )
    }

    /// [`DevSigningKey::mint`] with the person's sign-in claims (`auth_time`, and for a
    /// multi-factor sign-in `acr` and `amr`), for trying break-glass.
    #[allow(clippy::too_many_arguments)]
    pub fn mint_with(
        &self,
        issuer: &str,
        audience: &str,
        sub: &str,
        scope: &str,
        ttl_secs: u64,
        now: i64,
        auth: DevAuthentication,
    ) -> String {
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": self.kid });
        let mut claims = serde_json::json!({
            "iss": issuer, "aud": audience, "sub": sub,
            "iat": now, "nbf": now, "exp": now + ttl_secs as i64,
            "jti": uuid::Uuid::new_v4().to_string(),
            "client_id": DEV_CLIENT_ID, "scope": scope,
        });
        if let Some(age) = auth.auth_age_secs {
            claims["auth_time"] = serde_json::json!(now - age as i64);
            claims["amr"] = if auth.mfa {
                serde_json::json!(["pwd", "otp", "mfa"])
            } else {
                serde_json::json!(["pwd"])
            };
            if auth.mfa {
                claims["acr"] = serde_json::json!(crate::policy::break_glass::MFA_ACR);
            }
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// The sign-in claims of a development token.
#[derive(Clone, Copy, Debug, Default)]
pub struct DevAuthentication {
    /// `auth_time` this many seconds before the token's `iat` (`None`: no sign-in claims).
    pub auth_age_secs: Option<u64>,
    /// A multi-factor sign-in (`amr` with `mfa`, the multi-factor `acr`).
    pub mfa: bool,
}

/// The issuer and audience of this dev folder's tokens: those of the configuration
/// `custodian dev` wrote there (they follow its port), else the defaults.
pub fn issuer_and_audience(dev_dir: &Path) -> (String, String) {
    let table: Option<toml::Table> = std::fs::read_to_string(dev_dir.join(super::CONFIG_FILE))
        .ok()
        .and_then(|t| t.parse().ok());
    let auth = |key: &str, default: &str| {
        table
            .as_ref()
            .and_then(|t| t.get("auth"))
            .and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_string()
    };
    (auth("issuer", DEV_ISSUER), auth("audience", DEV_AUDIENCE))
}

/// `custodian dev-token`: prints a development token on stdout (and what it is on stderr).
pub fn run(
    dev_dir: &Path,
    sub: &str,
    scope: &str,
    ttl_secs: u64,
    auth: DevAuthentication,
) -> anyhow::Result<()> {
    let keys_dir = &dev_dir.join("keys");
    use std::io::Write;
    if sub.is_empty() || sub.len() > 255 || !sub.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("--sub must be 1 to 255 printable characters without spaces");
    }
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        bail!("--ttl-secs must be between 1 and {MAX_TTL_SECS}");
    }
    let key = DevSigningKey::load(keys_dir)?;
    let now = chrono::Utc::now().timestamp();
    let (issuer, audience) = issuer_and_audience(dev_dir);
    let token = key.mint_with(&issuer, &audience, sub, scope, ttl_secs, now, auth);
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "DEVELOPMENT TOKEN for sub={sub} (scope \"{scope}\"), valid {} min, signed with the dev key in {}.",
        ttl_secs / 60,
        keys_dir.display()
    );
    let _ = writeln!(
        err,
        "It is accepted only by `custodian dev` (issuer {issuer}); never use dev keys or tokens in production."
    );
    writeln!(std::io::stdout(), "{token}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_refused_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        assert!(DevSigningKey::load(&keys).is_err());
        let a = DevSigningKey::ensure(&keys).unwrap();
        let b = DevSigningKey::ensure(&keys).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert!(a.jwks().contains(a.kid()));
        let token = a.mint(DEV_ISSUER, DEV_AUDIENCE, "dr.demo", "admin", 3600, 1000);
        assert_eq!(token.split('.').count(), 3);
        assert!(!format!("{a:?}").contains(&a.jwks()));
    }
}
