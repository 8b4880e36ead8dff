//! Encryption at rest against a real PostgreSQL: no plaintext PHI in the database or its
//! dump, tamper and move detection, wrong keys, resumable DEK rotation, KEK rotation,
//! blind-index search.

use crate::support::cli::custodian;
use crate::support::phi as test_phi;
use crate::support::{TestApp, TestDb, random_key, test_keys};
use actix_web::ResponseError;
use chrono::{NaiveDate, TimeZone, Utc};
use custodian::app::keys::load_keyring;
use custodian::app::{Application, Options};
use custodian::crypto::Keyring;
use custodian::crypto::config::CryptoConfig;
use custodian::crypto::rotation::{self, RotateOptions};
use custodian::db::claims::{self, NewClaim, NewClaimItem};
use custodian::db::phi::{self, NewDocumentReference, NewObservation, NewPatient};
use custodian::domain::{FacilityId, PatientId};
use custodian::secret::Secret;
use diesel::prelude::*;
use std::process::{Command, Output};
use uuid::Uuid;

fn crypto_config(kek: &str, rotation_kek: Option<&str>) -> CryptoConfig {
    CryptoConfig {
        kek: Some(Secret::new(kek.to_string())),
        rotation_kek: rotation_kek.map(|k| Secret::new(k.to_string())),
        blind_index_key: Some(Secret::new(test_keys().blind_index_key.clone())),
        export_key: None,
    }
}

fn keyring(db: &TestDb) -> Keyring {
    load_keyring(&crypto_config(&test_keys().kek, None), &db.url, 5).unwrap()
}

fn patient(
    facility: FacilityId,
    mrn: &str,
    ssn: Option<&str>,
    family: &str,
    given: &str,
) -> NewPatient {
    NewPatient {
        facility_id: facility,
        mrn: mrn.into(),
        ssn: ssn.map(Into::into),
        family: family.into(),
        given: given.into(),
        birth_date: NaiveDate::from_ymd_opt(1961, 7, 4).unwrap(),
        gender: "female".into(),
        telecom: Some(serde_json::json!([{"system": "phone", "value": "555-0199-TELCANARY"}])),
        address: Some(
            serde_json::json!([{"line": ["1 Canaryville Road"], "city": "Addrcanaryton"}]),
        ),
    }
}

fn note(patient_id: PatientId, text: &str) -> NewDocumentReference {
    NewDocumentReference {
        patient_id,
        author_id: Some(custodian::domain::UserId::new()),
        doc_type: Some("11506-3".into()),
        date: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
        text: text.into(),
        status: "current".into(),
    }
}

fn observation(patient_id: PatientId, display: &str) -> NewObservation {
    NewObservation {
        patient_id,
        status: "final".into(),
        code: "2339-0".into(),
        code_display: Some(display.into()),
        value: serde_json::json!({"valueQuantity": {"value": 5.4, "unit": "mmol/L"}}),
        effective_at: Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap(),
    }
}

fn claim(patient_id: PatientId, provider: &str, code: &str, cents: i64) -> NewClaim {
    NewClaim {
        patient_id,
        provider: provider.into(),
        status: "active".into(),
        total_cents: cents + 1000,
        currency: "USD".into(),
        items: vec![
            NewClaimItem {
                seq: 1,
                code: code.into(),
                amount_cents: cents,
            },
            NewClaimItem {
                seq: 2,
                code: "99213".into(),
                amount_cents: 1000,
            },
        ],
    }
}

fn keys_cli(db: &TestDb, args: &[&str], kek: &str, rotation_kek: Option<&str>) -> Output {
    let mut env = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("CUSTODIAN_CRYPTO_KEK", kek),
        (
            "CUSTODIAN_CRYPTO_BLIND_INDEX_KEY",
            test_keys().blind_index_key.as_str(),
        ),
    ];
    if let Some(r) = rotation_kek {
        env.push(("CUSTODIAN_CRYPTO_ROTATION_KEK", r));
    }
    custodian(args, &env)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Every row of the PHI tables as PostgreSQL prints it (bytea as hex).
fn raw_rows(conn: &mut PgConnection) -> String {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let mut out = String::new();
    for table in [
        "facilities",
        "patients",
        "observations",
        "document_references",
        "claims",
        "claim_items",
        "claims_unsealed",
        "claim_items_unsealed",
        "data_keys",
    ] {
        let rows: Vec<Row> = diesel::sql_query(format!("SELECT t::text AS row FROM {table} t"))
            .load(conn)
            .unwrap();
        for r in rows {
            out.push_str(&r.row);
            out.push('\n');
        }
    }
    out
}

pub(crate) fn pg_dump(url: &str) -> String {
    let bin = match Command::new("pg_dump").arg("--version").output() {
        Ok(o) if o.status.success() => std::path::PathBuf::from("pg_dump"),
        _ => custodian::dev::pgcluster::find_bindir()
            .unwrap()
            .join("pg_dump"),
    };
    let out = Command::new(bin)
        .arg("--no-owner")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Finds `needle` in `haystack` as text or as hex (how bytea is printed), ignoring case.
pub(crate) fn contains_any_form(haystack: &str, needle: &str) -> bool {
    let h = haystack.to_lowercase();
    h.contains(&needle.to_lowercase()) || h.contains(&hex::encode(needle.as_bytes()))
}

#[test]
fn raw_select_and_pg_dump_contain_no_plaintext_phi() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let facility = phi::insert_facility(&mut conn, "FACILITYCONTROLCANARY").unwrap();
    let p = phi::insert_patient(
        &mut conn,
        &kr,
        &patient(
            facility,
            "CANMRN-778899",
            Some("123-45-6789"),
            "Qwertyfamilycanary",
            "Zxcvgivencanary",
        ),
    )
    .unwrap();
    phi::insert_document_reference(
        &mut conn,
        &kr,
        &note(p.id, "NOTECANARY patient reports chest pain"),
    )
    .unwrap();
    phi::insert_observation(
        &mut conn,
        &kr,
        &observation(p.id, "OBSDISPLAYCANARY glucose"),
    )
    .unwrap();
    claims::insert(
        &mut conn,
        &kr,
        &claim(p.id, "PROVIDERCANARY Clinic", "CPTCANARY7", 7_351_982),
    )
    .unwrap();

    let canaries = [
        "Qwertyfamilycanary",
        "Zxcvgivencanary",
        "CANMRN-778899",
        "CANMRN778899",
        "123-45-6789",
        "123456789",
        "NOTECANARY",
        "OBSDISPLAYCANARY",
        "TELCANARY",
        "Canaryville",
        "Addrcanaryton",
        "1961-07-04",
        "PROVIDERCANARY",
        "CPTCANARY7",
        "7351982",
        "7352982",
    ];
    let raw = raw_rows(&mut conn);
    let dump = pg_dump(&db.url);
    // The scan does see the data: a non-PHI value is there in plaintext.
    assert!(raw.contains("FACILITYCONTROLCANARY"));
    assert!(dump.contains("FACILITYCONTROLCANARY"));
    assert!(dump.contains("COPY public.patients"));
    for c in canaries {
        assert!(!contains_any_form(&raw, c), "raw SELECT shows {c}");
        assert!(!contains_any_form(&dump, c), "pg_dump shows {c}");
    }
    // ...and the record is still there to be read.
    let back = phi::find_patient_by_mrn(&mut conn, &kr, "canmrn 778899")
        .unwrap()
        .unwrap();
    assert_eq!(back.family.expose(), "Qwertyfamilycanary");
}

#[test]
fn every_sealed_type_round_trips_through_the_database() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let facility = phi::insert_facility(&mut conn, "General").unwrap();
    let new = patient(facility, "MRN-1", Some("111-22-3333"), "Müller", "Zoë");
    let created = phi::insert_patient(&mut conn, &kr, &new).unwrap();
    let p = test_phi::get_patient(&mut conn, &kr, created.id)
        .unwrap()
        .unwrap();
    assert_eq!(p.key_version, 1);
    assert_eq!(p.mrn.expose(), "MRN-1");
    assert_eq!(p.ssn.as_ref().unwrap().expose(), "111-22-3333");
    assert_eq!(p.family.expose(), "Müller");
    assert_eq!(p.given.expose(), "Zoë");
    assert_eq!(*p.birth_date.expose(), new.birth_date);
    assert_eq!(
        p.telecom.as_ref().unwrap().expose(),
        new.telecom.as_ref().unwrap()
    );
    assert_eq!(
        p.address.as_ref().unwrap().expose(),
        new.address.as_ref().unwrap()
    );
    assert!(!format!("{p:?}").contains("Müller"), "Debug is redacted");

    let minimal = NewPatient {
        ssn: None,
        telecom: None,
        address: None,
        ..patient(facility, "MRN-2", None, "A", "B")
    };
    let m = phi::insert_patient(&mut conn, &kr, &minimal).unwrap();
    let m = test_phi::get_patient(&mut conn, &kr, m.id)
        .unwrap()
        .unwrap();
    assert!(m.ssn.is_none() && m.telecom.is_none() && m.address.is_none());

    let d = phi::insert_document_reference(&mut conn, &kr, &note(p.id, "<p>Note ✓</p>")).unwrap();
    let d = phi::get_document_reference(&mut conn, &kr, d.id)
        .unwrap()
        .unwrap();
    assert_eq!(d.text.expose(), "<p>Note ✓</p>");
    assert_eq!(d.doc_type.as_deref(), Some("11506-3"));

    let o = phi::insert_observation(&mut conn, &kr, &observation(p.id, "Glucose")).unwrap();
    let o = phi::get_observation(&mut conn, &kr, o.id).unwrap().unwrap();
    assert_eq!(o.code_display.unwrap().expose(), "Glucose");
    assert_eq!(o.value.expose()["valueQuantity"]["value"], 5.4);
}

#[derive(QueryableByName)]
struct Sealed {
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    family_sealed: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    family_index: Vec<u8>,
}

#[test]
fn same_value_twice_gives_different_ciphertexts_but_equal_blind_indexes() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let f = phi::insert_facility(&mut conn, "F").unwrap();
    phi::insert_patient(&mut conn, &kr, &patient(f, "M1", None, "Smith", "Ann")).unwrap();
    phi::insert_patient(&mut conn, &kr, &patient(f, "M2", None, " SMITH ", "Bob")).unwrap();
    let rows: Vec<Sealed> = diesel::sql_query("SELECT family_sealed, family_index FROM patients")
        .load(&mut conn)
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[0].family_sealed, rows[1].family_sealed);
    assert_eq!(rows[0].family_index, rows[1].family_index);
    assert_eq!(
        test_phi::find_patients_by_family(&mut conn, &kr, "smith")
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn tampered_or_moved_ciphertext_is_an_error_not_garbage() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let f = phi::insert_facility(&mut conn, "F").unwrap();
    let a = phi::insert_patient(&mut conn, &kr, &patient(f, "A1", None, "Alpha", "Ann")).unwrap();
    let b = phi::insert_patient(&mut conn, &kr, &patient(f, "B1", None, "Beta", "Ben")).unwrap();
    let c = phi::insert_patient(&mut conn, &kr, &patient(f, "C1", None, "Gamma", "Cy")).unwrap();
    let e = phi::insert_patient(&mut conn, &kr, &patient(f, "E1", None, "Epsilon", "Eve")).unwrap();

    // One flipped byte in the ciphertext.
    diesel::sql_query("UPDATE patients SET given_sealed = overlay(given_sealed placing decode(lpad(to_hex(get_byte(given_sealed, 20) # 1), 2, '0'), 'hex') from 21 for 1) WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(a.id)
        .execute(&mut conn)
        .unwrap();
    // A ciphertext copied from another row (same column).
    diesel::sql_query("UPDATE patients SET family_sealed = (SELECT family_sealed FROM patients WHERE id = $1) WHERE id = $2")
        .bind::<diesel::sql_types::Uuid, _>(a.id)
        .bind::<diesel::sql_types::Uuid, _>(b.id)
        .execute(&mut conn)
        .unwrap();
    // A ciphertext copied to another column of the same row.
    diesel::sql_query("UPDATE patients SET family_sealed = given_sealed WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(c.id)
        .execute(&mut conn)
        .unwrap();
    // The key version in the header rewritten to one that does not exist.
    diesel::sql_query("UPDATE patients SET mrn_sealed = overlay(mrn_sealed placing '\\x00000063'::bytea from 2 for 4) WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(e.id)
        .execute(&mut conn)
        .unwrap();

    for (id, column) in [
        (a.id, "given_sealed"),
        (b.id, "family_sealed"),
        (c.id, "family_sealed"),
        (e.id, "mrn_sealed"),
    ] {
        let err = test_phi::get_patient(&mut conn, &kr, id).unwrap_err();
        assert_eq!(err.status_code(), 500, "generic 500 for the client");
        let logged = format!("{err:#}");
        assert!(logged.contains(&id.to_string()), "names the row: {logged}");
        assert!(logged.contains(column), "names the column: {logged}");
        assert!(
            !logged.contains("Alpha") && !logged.contains("Ann"),
            "{logged}"
        );
    }
    // Lookups reach the same error, never a partial or plaintext answer.
    assert!(phi::find_patient_by_mrn(&mut conn, &kr, "B1").is_err());
}

#[tokio::test]
async fn wrong_kek_is_a_start_up_error_naming_the_key() {
    let app = TestApp::spawn().await; // creates data key version 1 under the test KEK
    app.stop().await;
    let wrong = random_key();
    let config = TestApp::builder()
        .set("crypto.kek", wrong.clone())
        .config(&app.db.url);
    let err = Application::build(
        config,
        Options {
            disable_signals: true,
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("start-up refuses a wrong KEK");
    let message = format!("{err:#}");
    assert!(message.contains("crypto.kek"), "{message}");
    assert!(!message.contains(&wrong), "{message}");

    let out = keys_cli(&app.db, &["keys", "status"], &wrong, None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("crypto.kek"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Missing keys are named too.
    let config = TestApp::builder()
        .set("crypto.blind_index_key", "")
        .config(&app.db.url);
    let err = Application::build(
        config,
        Options {
            disable_signals: true,
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("start-up needs the blind-index key");
    assert!(
        format!("{err:#}").contains("crypto.blind_index_key"),
        "{err:#}"
    );
}

#[test]
fn interrupted_rotation_resumes_retires_the_old_key_and_keeps_everything_readable() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let f = phi::insert_facility(&mut conn, "F").unwrap();
    let mut patients = Vec::new();
    for i in 0..12 {
        let ssn = format!("100-00-{:04}", i);
        let p = phi::insert_patient(
            &mut conn,
            &kr,
            &patient(f, &format!("R-{i}"), Some(&ssn), "Rot", &format!("G{i}")),
        )
        .unwrap();
        phi::insert_document_reference(&mut conn, &kr, &note(p.id, &format!("note {i}"))).unwrap();
        phi::insert_observation(&mut conn, &kr, &observation(p.id, "Glucose")).unwrap();
        patients.push(p.id);
    }
    // 7 values per patient, 1 per note, 2 per observation.
    let v1 =
        |s: &[rotation::KeyStatus], v: i32| s.iter().find(|k| k.version == v).cloned().unwrap();
    let st = rotation::key_status(&mut conn).unwrap();
    assert_eq!((v1(&st, 1).rows, v1(&st, 1).values), (36, 12 * 7 + 12 + 24));

    // Interrupted: two batches of five rows.
    let mut seen = Vec::new();
    let report = rotation::rotate_data_keys(
        &mut conn,
        &kr,
        RotateOptions {
            batch_size: 5,
            max_batches: Some(2),
        },
        &mut |p| seen.push((p.table, p.done, p.total)),
    )
    .unwrap();
    assert!(report.started_new_version && !report.complete);
    assert_eq!((report.active_version, report.rows_reencrypted), (2, 10));
    assert_eq!(seen, vec![("patients", 5, 12), ("patients", 10, 12)]);
    let st = rotation::key_status(&mut conn).unwrap();
    assert_eq!(
        (v1(&st, 1).state.as_str(), v1(&st, 1).rows),
        ("decrypt_only", 26)
    );
    assert_eq!(
        (
            v1(&st, 2).state.as_str(),
            v1(&st, 2).rows,
            v1(&st, 2).values
        ),
        ("active", 10, 70)
    );

    // Half-way: everything readable, by a fresh keyring too; new writes use version 2.
    let fresh = keyring(&db);
    for id in &patients {
        assert_eq!(
            test_phi::get_patient(&mut conn, &fresh, *id)
                .unwrap()
                .unwrap()
                .family
                .expose(),
            "Rot"
        );
    }
    let late =
        phi::insert_patient(&mut conn, &kr, &patient(f, "R-LATE", None, "Late", "L")).unwrap();
    assert_eq!(late.key_version, 2);

    // Resumed from the command line, which shows progress on stderr.
    let out = keys_cli(
        &db,
        &["keys", "rotate", "--batch-size", "4"],
        &test_keys().kek,
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("resumed the rotation to data key version 2"),
        "{stdout}"
    );
    assert!(stdout.contains("retired data key version 1"), "{stdout}");
    assert!(
        stderr.contains("re-encrypting document_references: 12/12 rows -> key version 2"),
        "{stderr}"
    );

    let st = rotation::key_status(&mut conn).unwrap();
    assert_eq!(
        (
            v1(&st, 1).state.as_str(),
            v1(&st, 1).rows,
            v1(&st, 1).values
        ),
        ("retired", 0, 0)
    );
    assert_eq!(
        (v1(&st, 2).rows, v1(&st, 2).values),
        (37, 12 * 7 + 6 + 12 + 24)
    );
    let out = keys_cli(&db, &["keys", "status"], &test_keys().kek, None);
    let (stdout, _) = text(&out);
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap();
    assert!(line.contains("retired") && line.contains(" 0 "), "{stdout}");

    // The old in-process keyring (loaded before the rotation) still reads and writes.
    let fresh = keyring(&db);
    assert_eq!(
        fresh.loaded_versions(),
        vec![2],
        "retired keys are not loaded"
    );
    for id in &patients {
        let p = test_phi::get_patient(&mut conn, &kr, *id).unwrap().unwrap();
        assert_eq!(p.key_version, 2);
        assert_eq!(
            test_phi::get_patient(&mut conn, &fresh, *id)
                .unwrap()
                .unwrap()
                .given
                .expose(),
            p.given.expose()
        );
    }
    let found = test_phi::find_patients_by_ssn(&mut conn, &fresh, "100 00 0003").unwrap();
    assert_eq!(found.len(), 1);

    // A second full rotation starts version 3.
    let report =
        rotation::rotate_data_keys(&mut conn, &fresh, RotateOptions::default(), &mut |_| {})
            .unwrap();
    assert_eq!(
        (
            report.active_version,
            report.complete,
            report.retired.clone()
        ),
        (3, true, vec![2])
    );
    assert_eq!(
        test_phi::get_patient(&mut conn, &kr, late.id)
            .unwrap()
            .unwrap()
            .key_version,
        3
    );
    let after =
        phi::insert_patient(&mut conn, &kr, &patient(f, "R-AFTER", None, "After", "A")).unwrap();
    assert_eq!(
        after.key_version, 3,
        "a stale keyring writes with the new active key"
    );
}

#[test]
fn kek_rotation_rewraps_data_keys_and_keeps_every_value_readable() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let f = phi::insert_facility(&mut conn, "F").unwrap();
    let p = phi::insert_patient(
        &mut conn,
        &kr,
        &patient(f, "K-1", Some("222-33-4444"), "Kek", "K"),
    )
    .unwrap();
    rotation::rotate_data_keys(
        &mut conn,
        &kr,
        RotateOptions {
            batch_size: 10,
            max_batches: Some(0),
        },
        &mut |_| {},
    )
    .unwrap();
    let old_kek = test_keys().kek.clone();
    let new_kek = random_key();

    let out = keys_cli(&db, &["keys", "rotate", "--kek"], &old_kek, None);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("crypto.rotation_kek"),
        "{}",
        text(&out).1
    );

    let data_before: Vec<Sealed> =
        diesel::sql_query("SELECT family_sealed, family_index FROM patients")
            .load(&mut conn)
            .unwrap();
    let out = keys_cli(&db, &["keys", "rotate", "--kek"], &old_kek, Some(&new_kek));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("re-wrapped 2 data key(s)"), "{stdout}");
    let data_after: Vec<Sealed> =
        diesel::sql_query("SELECT family_sealed, family_index FROM patients")
            .load(&mut conn)
            .unwrap();
    assert_eq!(
        data_before[0].family_sealed, data_after[0].family_sealed,
        "data rows untouched"
    );

    // After the swap: the new KEK opens everything (both versions), the old one is refused.
    let swapped = load_keyring(&crypto_config(&new_kek, None), &db.url, 5).unwrap();
    assert_eq!(swapped.loaded_versions(), vec![1, 2]);
    let back = test_phi::get_patient(&mut conn, &swapped, p.id)
        .unwrap()
        .unwrap();
    assert_eq!(back.ssn.unwrap().expose(), "222-33-4444");
    let err = load_keyring(&crypto_config(&old_kek, None), &db.url, 5).unwrap_err();
    assert!(format!("{err:#}").contains("crypto.kek"), "{err:#}");
    // During the roll-out an instance with the old KEK plus the rotation KEK still starts.
    load_keyring(&crypto_config(&old_kek, Some(&new_kek)), &db.url, 5).unwrap();
    // The same key for two duties is refused.
    let out = keys_cli(&db, &["keys", "rotate", "--kek"], &new_kek, Some(&new_kek));
    assert!(!out.status.success(), "refused");
    assert!(
        text(&out).1.contains("crypto.rotation_kek"),
        "{}",
        text(&out).1
    );
}

#[test]
fn blind_index_finds_by_mrn_and_ssn_with_normalisation_before_and_after_rotation() {
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let f = phi::insert_facility(&mut conn, "F").unwrap();
    let p = phi::insert_patient(
        &mut conn,
        &kr,
        &patient(f, "ab-1234", Some("123-45-6789"), "Find", "Me"),
    )
    .unwrap();
    phi::insert_patient(
        &mut conn,
        &kr,
        &patient(f, "AB-1235", Some("123-45-6780"), "Other", "One"),
    )
    .unwrap();

    let check = |conn: &mut PgConnection, kr: &Keyring| {
        for mrn in ["AB-1234", "ab1234", " AB 12-34 ", "Ab-1234"] {
            let found = phi::find_patient_by_mrn(conn, kr, mrn).unwrap().expect(mrn);
            assert_eq!(found.id, p.id, "{mrn}");
        }
        assert!(
            phi::find_patient_by_mrn(conn, kr, "AB-1236")
                .unwrap()
                .is_none()
        );
        for ssn in ["123-45-6789", "123456789", "123 45 6789", " 123-45 6789 "] {
            let found = test_phi::find_patients_by_ssn(conn, kr, ssn).unwrap();
            assert_eq!(
                found.iter().map(|p| p.id).collect::<Vec<_>>(),
                vec![p.id],
                "{ssn}"
            );
        }
        let bad = test_phi::find_patients_by_ssn(conn, kr, "12-345").unwrap_err();
        assert_eq!(bad.status_code(), 422);
    };
    check(&mut conn, &kr);
    // A claim and its two items are re-sealed by the rotation too.
    let c = claims::insert(
        &mut conn,
        &kr,
        &claim(p.id, "Rotated Clinic", "80050", 4321),
    )
    .unwrap();
    let report =
        rotation::rotate_data_keys(&mut conn, &kr, RotateOptions::default(), &mut |_| {}).unwrap();
    assert!(report.complete);
    assert_eq!(report.rows_reencrypted, 5);
    assert_eq!(report.retired, vec![1]);
    check(&mut conn, &kr);
    // Readable with only the new key (version 1 is retired and not loaded).
    let fresh = keyring(&db);
    assert_eq!(fresh.loaded_versions(), vec![2]);
    let back = claims::get(&mut conn, &fresh, c.row.id, true)
        .unwrap()
        .unwrap();
    assert_eq!(back.row.key_version, 2);
    assert_eq!(back.row.provider.expose(), "Rotated Clinic");
    assert_eq!(*back.row.total_cents.expose(), 5321);
    let items: Vec<_> = back
        .items
        .iter()
        .map(|i| (i.seq, i.code.expose().clone(), *i.amount_cents.expose()))
        .collect();
    assert_eq!(
        items,
        vec![(1, "80050".into(), 4321), (2, "99213".into(), 1000)]
    );

    // An update re-seals the whole row with the active key and keeps the indexes right.
    let mut changed = patient(f, "AB-1234", Some("999-88-7777"), "Found", "Me");
    changed.telecom = None;
    let stale = phi::update_patient(&mut conn, &kr, p.id.as_uuid(), 7, &changed).unwrap_err();
    assert_eq!(stale.status_code(), 412);
    let updated = phi::update_patient(&mut conn, &kr, p.id.as_uuid(), 1, &changed)
        .unwrap()
        .unwrap();
    assert_eq!((updated.version, updated.key_version), (2, 2));
    assert!(updated.telecom.is_none());
    assert!(
        test_phi::find_patients_by_ssn(&mut conn, &kr, "123-45-6789")
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        test_phi::find_patients_by_ssn(&mut conn, &kr, "999887777").unwrap()[0]
            .family
            .expose(),
        "Found"
    );

    // The same MRN written differently is the same patient: refused as a duplicate.
    let dup =
        phi::insert_patient(&mut conn, &kr, &patient(f, "AB 1234", None, "Dup", "D")).unwrap_err();
    assert_eq!(dup.status_code(), 409);
}

/// Claims stored in clear before claims were sealed: the migration moves them aside and
/// the next start-up (key loading) seals them under their old ids and versions.
#[test]
fn claims_stored_in_clear_are_set_aside_by_the_migration_and_sealed_by_keys_seal_claims() {
    use diesel_migrations::MigrationHarness;
    let db = TestDb::create();
    let kr = keyring(&db);
    let mut conn = db.conn();
    let f = phi::insert_facility(&mut conn, "F").unwrap();
    let p = phi::insert_patient(&mut conn, &kr, &patient(f, "U-1", None, "Un", "Sealed")).unwrap();
    // Back to the schema before claims were sealed.
    loop {
        let reverted = conn
            .revert_last_migration(custodian::db::MIGRATIONS)
            .unwrap()
            .to_string();
        if reverted.starts_with("2026-11-29-000100") || reverted.starts_with("20261129000100") {
            break;
        }
    }
    let id = Uuid::new_v4();
    diesel::sql_query("INSERT INTO claims (id, version, key_version, patient_id, provider, status, total_cents, currency) VALUES ($1, 3, 1, $2, 'OLDPROVIDERCANARY', 'draft', 98765431, 'USD')")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Uuid, _>(p.id)
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query("INSERT INTO claim_items (id, claim_id, seq, code, amount_cents) VALUES (gen_random_uuid(), $1, 1, 'OLDCPTCANARY', 98765431)")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .execute(&mut conn)
        .unwrap();
    custodian::db::migrate(&db.url, 5).unwrap();
    let kr = keyring(&db);
    // Starting no longer seals them (no one-off data migration on every start) ...
    let waiting: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM claims_unsealed)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(waiting, 1, "set aside by the migration, not yet sealed");
    assert!(
        claims::get(&mut conn, &kr, id, true).unwrap().is_none(),
        "not served in clear"
    );
    // ... `custodian keys seal-claims` does, once.
    let out = keys_cli(&db, &["keys", "seal-claims"], &test_keys().kek, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed 1 claim(s)"));

    let back = claims::get(&mut conn, &kr, id, true).unwrap().unwrap();
    assert_eq!(back.row.version, 3, "keeps its version (ETags stay true)");
    assert_eq!(back.row.status, "draft");
    assert_eq!(back.row.provider.expose(), "OLDPROVIDERCANARY");
    assert_eq!(*back.row.total_cents.expose(), 98765431);
    assert_eq!(back.items.len(), 1);
    assert_eq!(back.items[0].code.expose(), "OLDCPTCANARY");
    let raw = raw_rows(&mut conn);
    for c in ["OLDPROVIDERCANARY", "OLDCPTCANARY", "98765431"] {
        assert!(!contains_any_form(&raw, c), "raw SELECT shows {c}");
    }
    let left: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM claims_unsealed) + (SELECT count(*) FROM claim_items_unsealed)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(left, 0, "no clear copy is left behind");
}

/// The typed sealed-column constants (the only way to make an AAD place) match the
/// schema both ways: each is a bytea column of its table, and every `*_sealed` column in
/// the database is one of them, so rotation misses none.
#[test]
fn sealed_column_constants_match_the_schema() {
    use custodian::crypto::columns::SEALED_COLUMNS;
    #[derive(QueryableByName)]
    struct Col {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        column_name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        data_type: String,
    }
    let db = TestDb::create();
    let mut conn = db.conn();
    let cols: Vec<Col> = diesel::sql_query(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = 'public' AND column_name LIKE '%\\_sealed'",
    )
    .load(&mut conn)
    .unwrap();
    let in_db: std::collections::BTreeSet<(String, String)> = cols
        .iter()
        .map(|c| {
            assert_eq!(c.data_type, "bytea", "{}.{}", c.table_name, c.column_name);
            (c.table_name.clone(), c.column_name.clone())
        })
        .collect();
    let declared: std::collections::BTreeSet<(String, String)> = SEALED_COLUMNS
        .iter()
        .flat_map(|t| {
            t.columns.iter().map(|c| {
                assert_eq!(c.table, t.table);
                (c.table.to_string(), c.column.to_string())
            })
        })
        .collect();
    assert_eq!(declared, in_db);
}
