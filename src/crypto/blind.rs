//! Blind indexes: a keyed HMAC-SHA256 over a normalised value, stored beside the
//! ciphertext so that equality search works without any plaintext in the database.
//!
//! The key (`crypto.blind_index_key`) is separate from the key-encryption key: whoever
//! can compute indexes cannot decrypt, and the reverse.
//!
//! Normalisation (documented in docs/encryption.md, tested below):
//! - **MRN** ([`BlindKind::Mrn`]): ASCII only; spaces, tabs and dashes are removed, letters
//!   uppercased; what remains must be 1–64 ASCII letters or digits.
//!   `" ab-12 34 "` → `"AB1234"`.
//! - **SSN** ([`BlindKind::Ssn`]): spaces and dashes removed; exactly nine ASCII digits.
//!   `"123 45-6789"` → `"123456789"`.
//! - **Names** ([`BlindKind::Family`], [`BlindKind::Given`]): trimmed, inner whitespace
//!   runs collapsed to one space, lowercased (Unicode lowercase; no NFKC folding).
//!   `"  O'Brien   Smith "` → `"o'brien smith"`.
//! - **Birth date** ([`BlindKind::BirthDate`]): ISO `YYYY-MM-DD`.
//!
//! Each kind has its own HMAC domain label, so equal strings in different fields give
//! different indexes. The index is the full 32-byte tag (MRN is unique, so no truncation).

use super::CryptoError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlindKind {
    Mrn,
    Ssn,
    Family,
    Given,
    BirthDate,
}

impl BlindKind {
    fn label(self) -> &'static [u8] {
        match self {
            BlindKind::Mrn => b"custodian.blind.v1.mrn",
            BlindKind::Ssn => b"custodian.blind.v1.ssn",
            BlindKind::Family => b"custodian.blind.v1.family",
            BlindKind::Given => b"custodian.blind.v1.given",
            BlindKind::BirthDate => b"custodian.blind.v1.birth_date",
        }
    }

    /// The normal form the index is computed over. Rejects values that cannot be the
    /// identifier in question (the error never repeats the value).
    pub fn normalise(self, raw: &str) -> Result<Zeroizing<String>, CryptoError> {
        match self {
            BlindKind::Mrn => {
                let s = strip_separators(raw);
                if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(CryptoError::InvalidIdentifier(
                        "MRN must be 1-64 ASCII letters or digits (spaces and dashes are ignored)",
                    ));
                }
                Ok(Zeroizing::new(s.to_ascii_uppercase()))
            }
            BlindKind::Ssn => {
                let s = strip_separators(raw);
                if s.len() != 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CryptoError::InvalidIdentifier(
                        "SSN must be nine digits (spaces and dashes are ignored)",
                    ));
                }
                Ok(s)
            }
            BlindKind::Family | BlindKind::Given => {
                let s: Vec<&str> = raw.split_whitespace().collect();
                if s.is_empty() {
                    return Err(CryptoError::InvalidIdentifier("name must not be empty"));
                }
                Ok(Zeroizing::new(s.join(" ").to_lowercase()))
            }
            BlindKind::BirthDate => {
                let d = chrono::NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
                    .map_err(|_| CryptoError::InvalidIdentifier("birth date must be YYYY-MM-DD"))?;
                Ok(Zeroizing::new(d.format("%Y-%m-%d").to_string()))
            }
        }
    }
}

fn strip_separators(raw: &str) -> Zeroizing<String> {
    Zeroizing::new(
        raw.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
    )
}

/// The blind-index key (`crypto.blind_index_key`). `Debug` is redacted.
pub struct BlindIndexKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey([redacted])")
    }
}

impl BlindIndexKey {
    pub fn new(key: Zeroizing<[u8; 32]>) -> BlindIndexKey {
        BlindIndexKey { key }
    }

    /// Normalises `raw` for `kind` and returns its 32-byte index.
    pub fn index(&self, kind: BlindKind, raw: &str) -> Result<Vec<u8>, CryptoError> {
        let normal = kind.normalise(raw)?;
        Ok(self.index_normalised(kind, &normal))
    }

    /// The index of a value already in normal form.
    pub fn index_normalised(&self, kind: BlindKind, normal: &str) -> Vec<u8> {
        // HMAC accepts keys of any length; this cannot fail for a 32-byte key.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()) {
            Ok(m) => m,
            Err(_) => return Vec::new(),
        };
        let label = kind.label();
        mac.update(&(label.len() as u32).to_be_bytes());
        mac.update(label);
        mac.update(normal.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> BlindIndexKey {
        BlindIndexKey::new(Zeroizing::new([b; 32]))
    }

    #[test]
    fn mrn_normalisation_ignores_case_spaces_and_dashes() {
        assert_eq!(
            BlindKind::Mrn.normalise(" ab-12 34 ").unwrap().as_str(),
            "AB1234"
        );
        let k = key(1);
        let a = k.index(BlindKind::Mrn, "mrn-0042-x").unwrap();
        assert_eq!(a, k.index(BlindKind::Mrn, "MRN 0042 X").unwrap());
        assert_eq!(a, k.index(BlindKind::Mrn, "MRN0042X").unwrap());
        assert_ne!(a, k.index(BlindKind::Mrn, "MRN0042Y").unwrap());
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn mrn_rejects_non_ascii_and_empty() {
        assert!(BlindKind::Mrn.normalise(" - ").is_err());
        assert!(BlindKind::Mrn.normalise("MRN/1").is_err());
        assert!(BlindKind::Mrn.normalise("ÄBC1").is_err());
    }

    #[test]
    fn ssn_normalisation_requires_nine_digits() {
        assert_eq!(
            BlindKind::Ssn.normalise("123-45-6789").unwrap().as_str(),
            "123456789"
        );
        assert_eq!(
            BlindKind::Ssn.normalise(" 123 45 6789 ").unwrap().as_str(),
            "123456789"
        );
        assert!(BlindKind::Ssn.normalise("123-45-678").is_err());
        assert!(BlindKind::Ssn.normalise("12a-45-6789").is_err());
        let err = BlindKind::Ssn
            .normalise("999-99-999")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("999"), "{err}");
    }

    #[test]
    fn names_are_trimmed_collapsed_and_lowercased() {
        assert_eq!(
            BlindKind::Family
                .normalise("  O'Brien   Smith ")
                .unwrap()
                .as_str(),
            "o'brien smith"
        );
        let k = key(2);
        assert_eq!(
            k.index(BlindKind::Family, "MÜLLER").unwrap(),
            k.index(BlindKind::Family, " müller").unwrap()
        );
    }

    #[test]
    fn kinds_and_keys_are_separate_domains() {
        let k = key(3);
        assert_ne!(
            k.index(BlindKind::Family, "smith").unwrap(),
            k.index(BlindKind::Given, "smith").unwrap()
        );
        assert_ne!(
            k.index(BlindKind::Mrn, "A1").unwrap(),
            key(4).index(BlindKind::Mrn, "A1").unwrap()
        );
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key(5)), "BlindIndexKey([redacted])");
    }
}
