//! The stored format of one sealed field value and the data key that seals it.
//!
//! ```text
//! byte 0      format version (1)
//! bytes 1..5  data-key version, u32 big-endian
//! bytes 5..17 nonce (96 bits, fresh from the OS RNG for every value)
//! bytes 17..  AES-256-GCM ciphertext followed by the 16-byte tag
//! ```
//!
//! The associated data binds the value to its place and key:
//! `"custodian.field.v1" ‖ format ‖ key version ‖ len(table) ‖ table ‖ len(column) ‖
//! column ‖ row uuid`, so a value copied to another row or column, or relabelled with
//! another key version, fails authentication.

use super::{CryptoError, FieldPlace};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::OsRng;
use std::fmt;
use zeroize::Zeroizing;

pub const FORMAT_V1: u8 = 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const AAD_LABEL: &[u8] = b"custodian.field.v1";

/// A plaintext data-encryption key (AES-256). Lives only in memory; the key bytes and
/// the cipher's round keys are wiped on drop; `Debug` shows the version only.
pub struct DataKey {
    version: i32,
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("version", &self.version)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl DataKey {
    pub fn new(version: i32, key: &Zeroizing<[u8; 32]>) -> DataKey {
        DataKey {
            version,
            cipher: Aes256Gcm::new(key.as_ref().into()),
        }
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    /// Seals `plaintext` for `place` with a fresh random nonce.
    pub fn seal(&self, place: &FieldPlace, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let version = u32::try_from(self.version)
            .map_err(|_| CryptoError::Internal("negative key version"))?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(FORMAT_V1, version, place);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Internal("encryption failed"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens a value sealed by this key for `place`. The caller picked this key from the
    /// version in the header ([`parse_header`]).
    pub fn open(
        &self,
        place: &FieldPlace,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let header = parse_header(place, sealed)?;
        if i64::from(header.key_version) != i64::from(self.version) {
            return Err(CryptoError::Internal(
                "data key does not match the value's key version",
            ));
        }
        let aad = associated_data(FORMAT_V1, header.key_version, place);
        let nonce = Nonce::from_slice(&sealed[5..HEADER_LEN]);
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Authentication {
                table: place.table,
                column: place.column,
                row: place.row,
            })
    }
}

/// What the first bytes of a sealed value say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub format: u8,
    pub key_version: u32,
}

/// Reads the header of a sealed value, refusing unknown formats and short inputs.
pub fn parse_header(place: &FieldPlace, sealed: &[u8]) -> Result<Header, CryptoError> {
    let malformed = |problem: &'static str| CryptoError::Malformed {
        table: place.table,
        column: place.column,
        row: place.row,
        problem,
    };
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(malformed("too short"));
    }
    if sealed[0] != FORMAT_V1 {
        return Err(malformed("unknown format version"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&sealed[1..5]);
    Ok(Header {
        format: sealed[0],
        key_version: u32::from_be_bytes(v),
    })
}

fn associated_data(format: u8, key_version: u32, place: &FieldPlace) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        AAD_LABEL.len() + 1 + 4 + 4 + place.table.len() + place.column.len() + 16,
    );
    aad.extend_from_slice(AAD_LABEL);
    aad.push(format);
    aad.extend_from_slice(&key_version.to_be_bytes());
    for part in [place.table, place.column] {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        aad.extend_from_slice(&(part.len() as u16).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(place.row.as_bytes());
    aad
}
