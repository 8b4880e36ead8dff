//! `[crypto]`: encryption-at-rest settings (owned here; `config` aggregates it).

use crate::error::ConfigError;
use crate::secret::Secret;
use serde::Deserialize;

/// Keys for encryption at rest, split by duty: `kek` (normal operation), `rotation_kek`
/// (the next KEK, for `keys rotate --kek`), `blind_index_key` (equality search),
/// `export_key` (pseudonyms of de-identified exports, [`super::pseudonym`]). Each
/// is 32 random bytes, base64; each may come from `<NAME>_FILE`. Required ones are
/// checked when the keyring is built (serving, `keys`), so `migrate` needs no key.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    pub kek: Option<Secret<String>>,
    pub rotation_kek: Option<Secret<String>>,
    pub blind_index_key: Option<Secret<String>>,
    pub export_key: Option<Secret<String>>,
}

impl CryptoConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("crypto.kek", &self.kek),
            ("crypto.rotation_kek", &self.rotation_kek),
            ("crypto.blind_index_key", &self.blind_index_key),
            ("crypto.export_key", &self.export_key),
        ];
        let mut seen: Vec<(&str, zeroize::Zeroizing<[u8; 32]>)> = Vec::new();
        for (setting, value) in fields {
            let Some(value) = value.as_ref().filter(|v| !v.expose().trim().is_empty()) else {
                continue;
            };
            let key = super::provider::decode_key(setting, value.expose())
                .map_err(|e| ConfigError::new(setting, crypto_problem(e)))?;
            if let Some((other, _)) = seen.iter().find(|(_, k)| k.as_ref() == key.as_ref()) {
                return Err(ConfigError::new(
                    setting,
                    format!("must differ from {other} (each duty has its own key)"),
                ));
            }
            seen.push((setting, key));
        }
        Ok(())
    }
}

fn crypto_problem(e: super::CryptoError) -> String {
    match e {
        super::CryptoError::Config { problem, .. } => problem,
        other => other.to_string(),
    }
}
