//! Key-encryption keys behind a [`KeyProvider`], so that a cloud KMS or an HSM can wrap
//! and unwrap data keys without any caller changing. [`LocalKek`] is the built-in
//! provider: a 256-bit key from configuration (`crypto.kek`).

use super::CryptoError;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::rngs::OsRng;
use sha2::Digest;
use std::fmt;
use zeroize::Zeroizing;

/// Wraps and unwraps data keys. Implementations must authenticate `context` (the data
/// key's version label) so a wrapped key cannot be swapped for another version's.
pub trait KeyProvider: Send + Sync {
    /// A stable, non-secret identifier of the key-encryption key, stored with every data
    /// key it wraps (so a wrong KEK is recognised before anything is decrypted).
    fn key_id(&self) -> &str;
    /// The configuration setting (or KMS resource) this key comes from, for errors.
    fn source(&self) -> &str;
    fn wrap_key(&self, key: &Zeroizing<[u8; 32]>, context: &[u8]) -> Result<Vec<u8>, CryptoError>;
    fn unwrap_key(
        &self,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError>;
}

/// A key-encryption key held in process memory (from `crypto.kek` or
/// `crypto.rotation_kek`). Wrapped format: nonce (12) ‖ AES-256-GCM(key) ‖ tag (16).
pub struct LocalKek {
    id: String,
    source: &'static str,
    cipher: Aes256Gcm,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Decodes a base64 setting into exactly 32 bytes; the error names the setting and
/// never repeats the value.
pub fn decode_key(setting: &'static str, b64: &str) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| CryptoError::Config {
                setting,
                problem:
                    "is not valid base64 (generate one with `head -c32 /dev/urandom | base64`)"
                        .into(),
            })?,
    );
    if bytes.len() != 32 {
        return Err(CryptoError::Config {
            setting,
            problem: "must be exactly 32 bytes, base64-encoded (`head -c32 /dev/urandom | base64`)"
                .into(),
        });
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

impl LocalKek {
    pub fn new(source: &'static str, key: &Zeroizing<[u8; 32]>) -> LocalKek {
        let digest = sha2::Sha256::new()
            .chain_update(b"custodian.kek-id.v1")
            .chain_update(key.as_ref())
            .finalize();
        LocalKek {
            id: format!("local:{}", hex::encode(&digest[..8])),
            source,
            cipher: Aes256Gcm::new(key.as_ref().into()),
        }
    }

    pub fn from_base64(setting: &'static str, b64: &str) -> Result<LocalKek, CryptoError> {
        Ok(LocalKek::new(setting, &decode_key(setting, b64)?))
    }
}

const WRAP_LABEL: &[u8] = b"custodian.dek-wrap.v1";

impl KeyProvider for LocalKek {
    fn key_id(&self) -> &str {
        &self.id
    }

    fn source(&self) -> &str {
        self.source
    }

    fn wrap_key(&self, key: &Zeroizing<[u8; 32]>, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = [WRAP_LABEL, context].concat();
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: key.as_ref(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Internal("key wrapping failed"))?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn unwrap_key(
        &self,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        if wrapped.len() != 12 + 32 + 16 {
            return Err(CryptoError::Unwrap);
        }
        let aad = [WRAP_LABEL, context].concat();
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(&wrapped[..12]),
                    Payload {
                        msg: &wrapped[12..],
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Unwrap)?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&plain);
        Ok(key)
    }
}
