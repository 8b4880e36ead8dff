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
//!
//! **Name prefixes** ([`BlindKind::FamilyPrefix`], [`BlindKind::GivenPrefix`]): FHIR's
//! default string search is starts-with, which an equality index cannot answer. For
//! each word start of the normalised name (`"john paul"` → `"john paul"`, `"paul"`), every
//! prefix of [`PREFIX_MIN`]..=[`PREFIX_MAX`] characters gets its own index
//! (`name_prefixes`); a search value of at least [`PREFIX_MIN`] characters is then one
//! equality test. What this leaks is documented in docs/encryption.md.
//!
//! **Name infixes** ([`BlindKind::FamilyInfix`], [`BlindKind::GivenInfix`]): FHIR's
//! `:contains`. For each word of the normalised name, every substring of
//! [`PREFIX_MIN`]..=[`PREFIX_MAX`] characters gets its own index (`name_infixes`), so a
//! value of one word is one equality test too (exact: no post-filter). A value spanning
//! words is not indexed and is refused by the caller.

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
    FamilyPrefix,
    GivenPrefix,
    FamilyInfix,
    GivenInfix,
}

/// The shortest prefix indexed (and searched): shorter ones would group too many names.
pub const PREFIX_MIN: usize = 3;
/// The longest prefix indexed; a starts-with value longer than this is refused.
pub const PREFIX_MAX: usize = 40;

impl BlindKind {
    fn label(self) -> &'static [u8] {
        match self {
            BlindKind::Mrn => b"custodian.blind.v1.mrn",
            BlindKind::Ssn => b"custodian.blind.v1.ssn",
            BlindKind::Family => b"custodian.blind.v1.family",
            BlindKind::Given => b"custodian.blind.v1.given",
            BlindKind::BirthDate => b"custodian.blind.v1.birth_date",
            BlindKind::FamilyPrefix => b"custodian.blind.v1.family_prefix",
            BlindKind::GivenPrefix => b"custodian.blind.v1.given_prefix",
            BlindKind::FamilyInfix => b"custodian.blind.v1.family_infix",
            BlindKind::GivenInfix => b"custodian.blind.v1.given_infix",
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
            BlindKind::Family
            | BlindKind::Given
            | BlindKind::FamilyPrefix
            | BlindKind::GivenPrefix
            | BlindKind::FamilyInfix
            | BlindKind::GivenInfix => {
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

/// Why a starts-with value cannot be searched (fixed messages, never the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixError {
    TooShort,
    TooLong,
}

/// Every prefix of [`PREFIX_MIN`]..=[`PREFIX_MAX`] characters of every word start of a
/// normalised name (a word start is the beginning or the character after a space).
fn word_prefixes(normal: &str) -> Vec<Zeroizing<String>> {
    let chars: Vec<char> = normal.chars().collect();
    let mut out = Vec::new();
    for start in 0..chars.len() {
        if start > 0 && chars[start - 1] != ' ' {
            continue;
        }
        let rest = &chars[start..];
        for len in PREFIX_MIN..=rest.len().min(PREFIX_MAX) {
            out.push(Zeroizing::new(rest[..len].iter().collect::<String>()));
        }
    }
    out
}

/// Every substring of [`PREFIX_MIN`]..=[`PREFIX_MAX`] characters of every word of a
/// normalised name (words never span a space, so a value with a space has no tag).
fn word_infixes(normal: &str) -> Vec<Zeroizing<String>> {
    let mut out = Vec::new();
    for word in normal.split(' ') {
        let chars: Vec<char> = word.chars().collect();
        for start in 0..chars.len() {
            let rest = &chars[start..];
            for len in PREFIX_MIN..=rest.len().min(PREFIX_MAX) {
                out.push(Zeroizing::new(rest[..len].iter().collect::<String>()));
            }
        }
    }
    out
}

/// Why a `:contains` value cannot be searched (fixed messages, never the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfixError {
    /// Fewer than [`PREFIX_MIN`] or more than [`PREFIX_MAX`] characters.
    Length,
    /// Spans more than one word: only substrings of single words are indexed.
    SeveralWords,
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

    /// The indexes of every word-start prefix of a family and a given name (see the
    /// module docs), sorted and without duplicates: what a row stores for starts-with.
    pub fn name_prefixes(&self, family: &str, given: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (kind, raw) in [
            (BlindKind::FamilyPrefix, family),
            (BlindKind::GivenPrefix, given),
        ] {
            let Ok(normal) = kind.normalise(raw) else {
                continue;
            };
            for p in word_prefixes(&normal) {
                out.push(self.index_normalised(kind, &p));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The indexes of every substring (3–40 characters) of every word of a family and a
    /// given name, sorted and without duplicates: what a row stores for `:contains`.
    pub fn name_infixes(&self, family: &str, given: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (kind, raw) in [
            (BlindKind::FamilyInfix, family),
            (BlindKind::GivenInfix, given),
        ] {
            let Ok(normal) = kind.normalise(raw) else {
                continue;
            };
            for p in word_infixes(&normal) {
                out.push(self.index_normalised(kind, &p));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The index a `:contains` search for `raw` tests, or why it cannot be searched.
    pub fn infix_query(&self, kind: BlindKind, raw: &str) -> Result<Vec<u8>, InfixError> {
        let normal = kind.normalise(raw).map_err(|_| InfixError::Length)?;
        if normal.contains(' ') {
            return Err(InfixError::SeveralWords);
        }
        match normal.chars().count() {
            n if !(PREFIX_MIN..=PREFIX_MAX).contains(&n) => Err(InfixError::Length),
            _ => Ok(self.index_normalised(kind, &normal)),
        }
    }

    /// The index a starts-with search for `raw` tests, or why it cannot be searched.
    pub fn prefix_query(&self, kind: BlindKind, raw: &str) -> Result<Vec<u8>, PrefixError> {
        let normal = kind.normalise(raw).map_err(|_| PrefixError::TooShort)?;
        match normal.chars().count() {
            n if n < PREFIX_MIN => Err(PrefixError::TooShort),
            n if n > PREFIX_MAX => Err(PrefixError::TooLong),
            _ => Ok(self.index_normalised(kind, &normal)),
        }
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
    fn name_prefixes_cover_every_word_start_from_three_characters() {
        let k = key(6);
        let stored = k.name_prefixes("O'Brien Smith", "John Paul");
        let has = |kind, q: &str| stored.contains(&k.prefix_query(kind, q).unwrap());
        assert!(has(BlindKind::FamilyPrefix, "o'b"));
        assert!(has(BlindKind::FamilyPrefix, "O'BRIEN  s"));
        assert!(has(BlindKind::FamilyPrefix, "smi"));
        assert!(has(BlindKind::FamilyPrefix, "o'brien smith"));
        assert!(has(BlindKind::GivenPrefix, "Pau"));
        assert!(has(BlindKind::GivenPrefix, "john"));
        // Not a word start, the wrong field, a near miss.
        assert!(!has(BlindKind::FamilyPrefix, "rien"));
        assert!(!has(BlindKind::FamilyPrefix, "john"));
        assert!(!has(BlindKind::GivenPrefix, "smi"));
        assert!(!has(BlindKind::FamilyPrefix, "smx"));
        // Prefix tags never equal the exact-match tags of the same text.
        assert!(!stored.contains(&k.index(BlindKind::Family, "smith").unwrap()));
        assert_eq!(
            k.prefix_query(BlindKind::FamilyPrefix, " sm "),
            Err(PrefixError::TooShort)
        );
        assert_eq!(
            k.prefix_query(BlindKind::FamilyPrefix, &"a".repeat(PREFIX_MAX + 1)),
            Err(PrefixError::TooLong)
        );
        // "o'brien smith": 11 prefixes from its start, 3 from "smith"; "john paul": 7 + 2.
        assert_eq!(stored.len(), 11 + 3 + 7 + 2);
    }

    #[test]
    fn name_infixes_cover_every_substring_of_every_word_from_three_characters() {
        let k = key(7);
        let stored = k.name_infixes("O'Brien Smith", "John Paul");
        let has = |kind, q: &str| stored.contains(&k.infix_query(kind, q).unwrap());
        for q in [
            "o'b", "rie", "brien", "ien", "O'BRIEN", "mit", "ith", "smith",
        ] {
            assert!(has(BlindKind::FamilyInfix, q), "{q}");
        }
        for q in ["ohn", "aul", "joh", "paul"] {
            assert!(has(BlindKind::GivenInfix, q), "{q}");
        }
        // Not a substring, the wrong field, not in the prefix or exact domains.
        assert!(!has(BlindKind::FamilyInfix, "smx"));
        assert!(!has(BlindKind::FamilyInfix, "ohn"));
        assert!(!has(BlindKind::GivenInfix, "mit"));
        assert!(!stored.contains(&k.prefix_query(BlindKind::FamilyPrefix, "smi").unwrap()));
        assert!(!stored.contains(&k.index(BlindKind::Family, "smith").unwrap()));
        // A value across words, too short or too long: refused, not an empty answer.
        assert_eq!(
            k.infix_query(BlindKind::FamilyInfix, "n smi"),
            Err(InfixError::SeveralWords)
        );
        assert_eq!(
            k.infix_query(BlindKind::FamilyInfix, " mi "),
            Err(InfixError::Length)
        );
        assert_eq!(
            k.infix_query(BlindKind::FamilyInfix, &"a".repeat(PREFIX_MAX + 1)),
            Err(InfixError::Length)
        );
        // "o'brien" (7): 5 + 4 + 3 + 2 + 1 = 15; "smith" (5): 6; "john" 3, "paul" 3.
        assert_eq!(stored.len(), 15 + 6 + 3 + 3);
        // A word longer than 40 characters: substrings up to 40 only.
        let long = "a".repeat(45);
        assert_eq!(
            word_infixes(&long).len(),
            (3..=40).map(|l| 46 - l).sum::<usize>()
        );
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key(5)), "BlindIndexKey([redacted])");
    }
}
