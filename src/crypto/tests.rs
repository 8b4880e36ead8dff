use super::*;
use chrono::NaiveDate;

fn place(column: &'static str, row: Uuid) -> FieldPlace {
    FieldPlace {
        table: "patients",
        column,
        row,
    }
}

#[test]
fn every_sealable_type_round_trips() {
    let kr = Keyring::ephemeral(1);
    let row = Uuid::new_v4();
    let p = place("family_sealed", row);
    let s = kr.seal_str(&p, "Zzyzx-Canary").unwrap();
    assert_eq!(kr.open_str(&p, &s).unwrap(), "Zzyzx-Canary");
    let d = NaiveDate::from_ymd_opt(1970, 2, 28).unwrap();
    let s = kr.seal_value(&p, &d).unwrap();
    assert_eq!(kr.open_value::<NaiveDate>(&p, &s).unwrap(), d);
    let j = serde_json::json!({"valueQuantity": {"value": 7.2, "unit": "mmol/L"}});
    let s = kr.seal_value(&p, &j).unwrap();
    assert_eq!(kr.open_value::<serde_json::Value>(&p, &s).unwrap(), j);
    let b = vec![0u8, 255, 7];
    let s = kr.seal(&p, &b).unwrap();
    assert_eq!(kr.open(&p, &s).unwrap().as_slice(), b.as_slice());
    let s = kr.seal(&p, b"").unwrap();
    assert!(kr.open(&p, &s).unwrap().is_empty());
}

#[test]
fn stored_format_is_versioned_and_self_describing() {
    let kr = Keyring::ephemeral(7);
    let p = place("mrn_sealed", Uuid::new_v4());
    let s = kr.seal(&p, &[1u8; 64]).unwrap();
    assert_eq!(s[0], envelope::FORMAT_V1);
    assert_eq!(&s[1..5], &7u32.to_be_bytes());
    assert_eq!(s.len(), envelope::HEADER_LEN + 64 + envelope::TAG_LEN);
}

#[test]
fn same_value_sealed_twice_gives_different_ciphertexts() {
    let kr = Keyring::ephemeral(1);
    let p = place("family_sealed", Uuid::new_v4());
    let a = kr.seal_str(&p, "Smith").unwrap();
    let b = kr.seal_str(&p, "Smith").unwrap();
    assert_ne!(a, b);
    assert_ne!(a[5..17], b[5..17], "fresh nonce");
}

#[test]
fn any_flipped_byte_is_an_error() {
    let kr = Keyring::ephemeral(1);
    let p = place("given_sealed", Uuid::new_v4());
    let s = kr.seal_str(&p, "Ada").unwrap();
    for i in 0..s.len() {
        let mut t = s.clone();
        t[i] ^= 0x01;
        assert!(kr.open(&p, &t).is_err(), "byte {i} flipped still opened");
    }
    assert!(kr.open(&p, &s[..s.len() - 1]).is_err());
    assert!(kr.open(&p, &[]).is_err());
}

#[test]
fn value_moved_to_another_row_or_column_or_table_is_an_error() {
    let kr = Keyring::ephemeral(1);
    let row = Uuid::new_v4();
    let s = kr.seal_str(&place("family_sealed", row), "Smith").unwrap();
    let other_row = kr
        .open(&place("family_sealed", Uuid::new_v4()), &s)
        .unwrap_err();
    assert!(
        matches!(other_row, CryptoError::Authentication { .. }),
        "{other_row}"
    );
    assert!(kr.open(&place("given_sealed", row), &s).is_err());
    assert!(
        kr.open(
            &FieldPlace {
                table: "observations",
                column: "family_sealed",
                row,
            },
            &s
        )
        .is_err()
    );
}

#[test]
fn another_key_or_an_unknown_version_is_an_error() {
    let a = Keyring::ephemeral(1);
    let b = Keyring::ephemeral(1);
    let p = place("mrn_sealed", Uuid::new_v4());
    let s = a.seal_str(&p, "MRN1").unwrap();
    assert!(matches!(
        b.open(&p, &s),
        Err(CryptoError::Authentication { .. })
    ));
    let c = Keyring::ephemeral(2);
    let err = c.open(&p, &s).unwrap_err();
    assert!(
        matches!(err, CryptoError::UnknownKeyVersion { version: 1, .. }),
        "{err}"
    );
}

#[test]
fn errors_name_the_place_never_the_value() {
    let kr = Keyring::ephemeral(1);
    let row = Uuid::new_v4();
    let s = kr
        .seal_str(&place("family_sealed", row), "CanaryName")
        .unwrap();
    let err = kr
        .open(&place("given_sealed", row), &s)
        .unwrap_err()
        .to_string();
    assert!(err.contains("patients.given_sealed"), "{err}");
    assert!(err.contains(&row.to_string()), "{err}");
    assert!(!err.contains("CanaryName"));
}

#[test]
fn wrong_type_on_open_is_a_decode_error() {
    let kr = Keyring::ephemeral(1);
    let p = place("birth_date_sealed", Uuid::new_v4());
    let s = kr.seal_str(&p, "not a date").unwrap();
    assert!(matches!(
        kr.open_value::<NaiveDate>(&p, &s),
        Err(CryptoError::Decode { .. })
    ));
}

#[test]
fn key_wrapping_needs_the_same_kek_and_context() {
    let kek = LocalKek::new("crypto.kek", &keyring::generate_key());
    let other = LocalKek::new("crypto.kek", &keyring::generate_key());
    let dek = keyring::generate_key();
    let wrapped = kek.wrap_key(&dek, b"v1").unwrap();
    assert_eq!(
        kek.unwrap_key(&wrapped, b"v1").unwrap().as_ref(),
        dek.as_ref()
    );
    assert!(kek.unwrap_key(&wrapped, b"v2").is_err());
    assert!(other.unwrap_key(&wrapped, b"v1").is_err());
    assert_ne!(kek.key_id(), other.key_id());
    assert!(kek.key_id().starts_with("local:"));
}

#[test]
fn debug_output_never_shows_keys_or_phi() {
    let key = keyring::generate_key();
    let kek = LocalKek::new("crypto.kek", &key);
    let dbg = format!(
        "{kek:?} {:?} {:?}",
        Keyring::ephemeral(1),
        DataKey::new(1, &key)
    );
    assert!(dbg.contains("[redacted]"), "{dbg}");
    assert!(!dbg.contains(&hex::encode(key.as_ref())));
    assert_eq!(format!("{:?}", Phi::new("Smith".to_string())), "[redacted]");
    assert_eq!(format!("{}", Phi::new("Smith".to_string())), "[redacted]");
}

#[test]
fn bad_key_settings_are_named() {
    let err = provider::decode_key("crypto.kek", "not base64!")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("crypto.kek:"), "{err}");
    let err = provider::decode_key("crypto.blind_index_key", "AAAA")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("crypto.blind_index_key:"), "{err}");
    let cfg = crate::crypto::config::CryptoConfig::default();
    let err = Keyring::from_config(&cfg).unwrap_err().to_string();
    assert!(err.starts_with("crypto.kek:"), "{err}");
}

#[test]
fn crypto_errors_become_a_generic_500_and_bad_identifiers_a_422() {
    use actix_web::ResponseError;
    let e = AppError::from(CryptoError::Authentication {
        table: "patients",
        column: "mrn_sealed",
        row: Uuid::nil(),
    });
    assert_eq!(e.status_code(), 500);
    let e = AppError::from(CryptoError::InvalidIdentifier("MRN must be ..."));
    assert_eq!(e.status_code(), 422);
}
