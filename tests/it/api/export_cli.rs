//! `custodian export` (issue 17, the operators' command line): the binary run as an
//! operator against the test database — the files it writes, the manifest, the audit
//! events (the operator, `cli`, as the actor; each batch naming its patients), no planted
//! identifier in a de-identified export, and a clear error naming the flag for bad input.

use super::export::{CANARY_FAMILY, CANARY_MRN, CANARY_NOTE, seed};
use crate::support::cli::custodian;
use crate::support::world::World;
use crate::support::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, random_key, test_keys};
use custodian::db::schema::audit_events as ae;
use custodian::policy::Role;
use diesel::prelude::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use uuid::Uuid;

async fn world(export_key: &str) -> World {
    let key = export_key.to_string();
    World::with(move |b, _| b.manual_clock().set("crypto.export_key", key)).await
}

/// Runs `custodian export <args>` with the test app's database and keys:
/// (success, stdout, stderr).
fn export_cli(
    w: &World,
    export_key: &str,
    audit_dir: &Path,
    args: &[&str],
) -> (bool, String, String) {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let dir = audit_dir.display().to_string();
    let out = custodian(
        &all,
        &[
            ("DATABASE_URL", w.app.db.url.as_str()),
            ("CUSTODIAN_CRYPTO_KEK", test_keys().kek.as_str()),
            (
                "CUSTODIAN_CRYPTO_BLIND_INDEX_KEY",
                test_keys().blind_index_key.as_str(),
            ),
            ("CUSTODIAN_CRYPTO_EXPORT_KEY", export_key),
            ("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY),
            ("CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY", TEST_SIGNING_KEY),
            ("CUSTODIAN_AUDIT_CHECKPOINT_DIR", &dir),
            ("CUSTODIAN_EXPORT_BATCH_SIZE", "2"),
        ],
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON resource per line"))
        .collect()
}

/// (resource type, patients, actor user, auth method, outcome) of the export events.
type Event = (Option<String>, Vec<Uuid>, Option<Uuid>, String, String);

fn export_events(w: &World) -> Vec<Event> {
    ae::table
        .filter(ae::action.eq("export"))
        .order(ae::seq)
        .select((
            ae::resource_type,
            ae::patient_ids,
            ae::actor_user_id,
            ae::auth_method,
            ae::outcome,
        ))
        .load(&mut w.app.db.conn())
        .unwrap()
}

#[tokio::test]
async fn the_cli_exports_de_identified_by_default_audited_as_the_operator_with_no_identifier_left()
{
    let key = random_key();
    let w = world(&key).await;
    w.user("dr-cli", &[Role::Clinician, Role::Billing]);
    let patients = seed(&w, "dr-cli", 5, true).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let facility = w.facility.to_string();
    let (ok, stdout, stderr) = export_cli(
        &w,
        &key,
        tmp.path(),
        &[
            "--output",
            out.to_str().unwrap(),
            "--level",
            "group",
            "--group",
            &facility,
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("exported 10 resources (de-identified)"),
        "{stdout}"
    );
    // Not a terminal: plain progress lines, done / total.
    assert!(stderr.contains("10/10 resources"), "{stderr}");

    // The operator's grant is a backend service's: Patients and Observations.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["Observation.ndjson", "Patient.ndjson", "manifest.json"]
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "de-identified");
    assert_eq!(manifest["level"], "group");
    assert_eq!(manifest["k-anonymity"]["patients"], 5, "{manifest}");
    assert!(
        manifest["exportKey"]
            .as_str()
            .is_some_and(|k| k.len() == 16)
    );
    for (kind, count) in [("Patient", 5), ("Observation", 5)] {
        let got = lines(&out.join(format!("{kind}.ndjson")));
        assert_eq!(got.len(), count, "{kind}");
        assert!(got.iter().all(|r| r["resourceType"] == kind));
        let ids: BTreeSet<&str> = got.iter().map(|r| r["id"].as_str().unwrap()).collect();
        for p in &patients {
            assert!(!ids.contains(p.to_string().as_str()), "pseudonyms, not ids");
        }
    }
    // No planted identifier anywhere under the output directory (nor staging left over).
    for e in walk(&out) {
        let text = std::fs::read_to_string(&e).unwrap();
        for canary in [
            CANARY_FAMILY,
            CANARY_MRN,
            CANARY_NOTE,
            "617-555-0199",
            "1970-03-04",
        ] {
            assert!(!text.contains(canary), "{canary} in {}", e.display());
        }
    }
    assert!(!out.join(".staging").exists());

    // Audited as the operator: the kick-off and completion on the job, each batch on its
    // type naming its patients; no person as the actor.
    let events = export_events(&w);
    assert!(events.len() >= 4, "{events:?}");
    for e in &events {
        assert_eq!(e.2, None, "{e:?}");
        assert_eq!(e.3, "cli", "{e:?}");
        assert_eq!(e.4, "permit", "{e:?}");
    }
    assert_eq!(events[0].0.as_deref(), Some("ExportJob"));
    assert_eq!(events.last().unwrap().0.as_deref(), Some("ExportJob"));
    let covered: BTreeSet<Uuid> = events.iter().flat_map(|e| e.1.clone()).collect();
    assert_eq!(covered, patients.iter().copied().collect());
    let report = custodian::audit::search::patient_accesses(
        &mut w.app.db.conn(),
        custodian::domain::PatientId(patients[0]),
        chrono::Utc::now() - chrono::Duration::days(1),
        chrono::Utc::now() + chrono::Duration::days(1),
        500,
    )
    .unwrap();
    assert!(report.iter().any(|e| e.action == "export"));
}

#[tokio::test]
async fn the_cli_exports_identified_only_when_asked_and_refuses_bad_flags_by_name() {
    let key = random_key();
    let w = world(&key).await;
    w.user("dr-cli2", &[Role::Clinician, Role::Billing]);
    let patients = seed(&w, "dr-cli2", 3, false).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("identified");
    let patient = patients[1].to_string();
    let (ok, stdout, stderr) = export_cli(
        &w,
        &key,
        tmp.path(),
        &[
            "--output",
            out.to_str().unwrap(),
            "--identified",
            "--level",
            "patient",
            "--patient",
            &patient,
            "--type",
            "Patient",
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    let got = lines(&out.join("Patient.ndjson"));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0]["id"],
        patient.as_str(),
        "identified: the record as it is"
    );
    assert!(got[0].to_string().contains(CANARY_FAMILY));
    assert!(
        !out.join("Observation.ndjson").exists(),
        "--type Patient only"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "identified");
    assert_eq!(manifest["exportKey"], Value::Null);

    // Bad input: a non-zero exit and an error naming the flag, never echoing it.
    let fresh = |n: &str| tmp.path().join(n).display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--type".into(), "Claim".into()], "--type"),
        (vec!["--type".into(), "Secretthing".into()], "--type"),
        (
            vec!["--since".into(), "Canarywhistle-day".into()],
            "--since",
        ),
        (vec!["--level".into(), "group".into()], "--group"),
        (vec!["--level".into(), "everything".into()], "--level"),
        (vec!["--k".into(), "0".into()], "--k"),
        (
            vec!["--identified".into(), "--suppress".into()],
            "--suppress",
        ),
        (
            vec![
                "--level".into(),
                "patient".into(),
                "--patient".into(),
                Uuid::new_v4().to_string(),
            ],
            "--patient",
        ),
    ];
    for (i, (args, flag)) in cases.into_iter().enumerate() {
        let dir = fresh(&format!("bad-{i}"));
        let mut all: Vec<&str> = vec!["--output", &dir];
        all.extend(args.iter().map(String::as_str));
        let (ok, stdout, stderr) = export_cli(&w, &key, tmp.path(), &all);
        assert!(!ok, "{all:?}: {stdout}");
        assert!(stderr.contains(flag), "{all:?} must name {flag}: {stderr}");
        assert!(
            !stderr.contains("Canarywhistle") && !stderr.contains("Secretthing"),
            "{stderr}"
        );
    }
    // An output directory that is not empty is refused (nothing is overwritten).
    let (ok, _, stderr) = export_cli(&w, &key, tmp.path(), &["--output", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("--output"), "{stderr}");
    // De-identified without an export key: refused, naming the setting.
    let (ok, _, stderr) = export_cli(&w, "", tmp.path(), &["--output", &fresh("nokey")]);
    assert!(!ok);
    assert!(stderr.contains("crypto.export_key"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
