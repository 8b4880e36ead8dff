//! Keyed pseudonyms for exports: HMAC-SHA256 under an **export key**, a secret of its own
//! (not the KEK, not a DEK, not the blind-index key), so that whoever holds an export's
//! key can neither decrypt records nor compute blind indexes, and the reverse.
//!
//! The same key gives the same pseudonym for the same record in every export (two data
//! sets made with one key join); another key gives unrelated pseudonyms. A pseudonym is
//! not reversible: re-identification recomputes pseudonyms of candidate ids under the
//! key and compares.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use uuid::Uuid;
use zeroize::Zeroizing;

const PSEUDONYM_LABEL: &[u8] = b"custodian.export.v1.pseudonym";
const SHIFT_LABEL: &[u8] = b"custodian.export.v1.date-shift";
const KEY_ID_LABEL: &[u8] = b"custodian.export.v1.key-id";

/// The secret of one family of exports.
pub struct ExportKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportKey([redacted])")
    }
}

impl ExportKey {
    pub fn new(key: Zeroizing<[u8; 32]>) -> ExportKey {
        ExportKey { key }
    }

    /// `crypto.export_key`, when set (its distinctness from the other keys is checked
    /// by [`super::config::CryptoConfig::validate`]).
    pub fn from_config(
        cfg: &super::config::CryptoConfig,
    ) -> Result<Option<ExportKey>, super::CryptoError> {
        cfg.export_key
            .as_ref()
            .filter(|k| !k.expose().trim().is_empty())
            .map(|k| {
                super::provider::decode_key("crypto.export_key", k.expose()).map(ExportKey::new)
            })
            .transpose()
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length: a 32-byte key cannot be refused.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()) else {
            return [0; 32];
        };
        // Length-prefixed parts: ("ab", "c") and ("a", "bc") never collide.
        for part in std::iter::once(label).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The pseudonym of record `id` of resource type `kind`: 64 lowercase hex digits
    /// (a valid FHIR id).
    pub fn pseudonym(&self, kind: &str, id: &str) -> String {
        hex::encode(self.mac(PSEUDONYM_LABEL, &[kind.as_bytes(), id.as_bytes()]))
    }

    /// Which of the Patient ids `ids` has `pseudonym` under this key (the re-identification
    /// scan: one HMAC per id over internal ids only, so no sealed field is opened to
    /// find the patient). Compared in constant time per candidate.
    pub fn find_patient(&self, pseudonym: &Pseudonym, ids: &[Uuid]) -> Option<Uuid> {
        use subtle::ConstantTimeEq;
        ids.iter().copied().find(|id| {
            let tag = self.mac(
                PSEUDONYM_LABEL,
                &[b"Patient", id.hyphenated().to_string().as_bytes()],
            );
            bool::from(tag.ct_eq(&pseudonym.0))
        })
    }

    /// A per-patient secret date shift in `-max_days..=max_days` (never 0 when
    /// `max_days > 0`, so a shifted date is never the real one).
    pub fn date_shift_days(&self, patient: Uuid, max_days: u32) -> i64 {
        if max_days == 0 {
            return 0;
        }
        let tag = self.mac(SHIFT_LABEL, &[patient.as_bytes()]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&tag[..8]);
        let r = u64::from_be_bytes(n) % (2 * u64::from(max_days));
        let r = r as i64 - i64::from(max_days);
        if r >= 0 { r + 1 } else { r }
    }

    /// A public fingerprint naming the key in audit events and manifests (not usable to
    /// compute pseudonyms).
    pub fn key_id(&self) -> String {
        hex::encode(&self.mac(KEY_ID_LABEL, &[])[..8])
    }
}

/// A pseudonym as an export writes it: 64 hexadecimal digits (a Patient's `id`), also
/// accepted as the reference `Patient/<pseudonym>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pseudonym([u8; 32]);

impl Pseudonym {
    pub fn parse(text: &str) -> Option<Pseudonym> {
        let text = text.trim();
        let text = text.strip_prefix("Patient/").unwrap_or(text);
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.to_ascii_lowercase(), &mut out).ok()?;
        Some(Pseudonym(out))
    }
}

/// Not secret, but it links to a patient: never printed by accident.
impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonym([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ExportKey {
        ExportKey::new(Zeroizing::new([b; 32]))
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_differ_across_keys_and_types() {
        let id = "6f1c4c1e-0c1b-4a57-9a3e-3d0f4b8a2b10";
        let (a, b) = (key(1), key(2));
        assert_eq!(a.pseudonym("Patient", id), a.pseudonym("Patient", id));
        assert_ne!(a.pseudonym("Patient", id), b.pseudonym("Patient", id));
        assert_ne!(a.pseudonym("Patient", id), a.pseudonym("Claim", id));
        assert_eq!(a.pseudonym("Patient", id).len(), 64);
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(format!("{a:?}"), "ExportKey([redacted])");
    }

    #[test]
    fn the_export_key_is_a_setting_of_its_own_and_differs_from_the_other_keys() {
        use crate::crypto::config::CryptoConfig;
        use crate::secret::Secret;
        let b64 = |b: u8| {
            use base64::Engine;
            Secret::new(base64::engine::general_purpose::STANDARD.encode([b; 32]))
        };
        let cfg = CryptoConfig {
            kek: Some(b64(1)),
            blind_index_key: Some(b64(2)),
            export_key: Some(b64(3)),
            ..CryptoConfig::default()
        };
        assert!(cfg.validate().is_ok());
        let k = ExportKey::from_config(&cfg).unwrap().unwrap();
        assert_eq!(k.key_id(), key(3).key_id());
        for same in [1, 2] {
            let cfg = CryptoConfig {
                export_key: Some(b64(same)),
                ..cfg.clone()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.contains("crypto.export_key") && err.contains("must differ"),
                "{err}"
            );
        }
        let unset = CryptoConfig {
            export_key: None,
            ..cfg.clone()
        };
        assert!(ExportKey::from_config(&unset).unwrap().is_none());
        let bad = CryptoConfig {
            export_key: Some(Secret::new("AAAA".into())),
            ..cfg
        };
        assert!(ExportKey::from_config(&bad).is_err());
    }

    #[test]
    fn a_pseudonym_is_found_among_ids_only_under_its_own_key() {
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
        let (a, b) = (key(1), key(2));
        let target = ids[737];
        let written = a.pseudonym("Patient", &target.hyphenated().to_string());
        let p = Pseudonym::parse(&written).unwrap();
        assert_eq!(a.find_patient(&p, &ids), Some(target));
        // The reference form and upper case name the same pseudonym.
        let r = Pseudonym::parse(&format!("Patient/{}", written.to_uppercase())).unwrap();
        assert_eq!(a.find_patient(&r, &ids), Some(target));
        // Another key's pseudonym of the same patient resolves to nobody.
        let other = b.pseudonym("Patient", &target.hyphenated().to_string());
        assert_eq!(
            a.find_patient(&Pseudonym::parse(&other).unwrap(), &ids),
            None
        );
        // Another type's pseudonym of the same id is not a Patient's.
        let obs = a.pseudonym("Observation", &target.hyphenated().to_string());
        assert_eq!(a.find_patient(&Pseudonym::parse(&obs).unwrap(), &ids), None);
        for bad in [
            "",
            "abc",
            &written[..63],
            &format!("{written}0"),
            &"g".repeat(64),
        ] {
            assert!(Pseudonym::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(format!("{p:?}"), "Pseudonym([redacted])");
    }

    #[test]
    fn date_shift_is_bounded_nonzero_and_stable() {
        let k = key(3);
        for _ in 0..200 {
            let p = Uuid::new_v4();
            let d = k.date_shift_days(p, 30);
            assert!((-30..=30).contains(&d) && d != 0, "{d}");
            assert_eq!(d, k.date_shift_days(p, 30));
        }
        assert_eq!(k.date_shift_days(Uuid::new_v4(), 0), 0);
    }
}
