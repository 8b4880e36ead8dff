//! Bulk Data `$export` over HTTP on PostgreSQL (issue 17), following the Bulk Data Access
//! IG v2 step by step: kick-off with `Prefer: respond-async` (202, absolute
//! `Content-Location`), polling (202 with `X-Progress` and `Retry-After`, then 200 with
//! the manifest), downloading each file by its short-lived link with the access token,
//! validating every NDJSON line, and `DELETE`. Then what must not happen: an export
//! without a recent multi-factor sign-in (401, RFC 9470 challenge), by a role without the
//! grant (403), a second one at once (429), another user seeing or downloading it (404),
//! plaintext PHI on disk or in the database, files outliving their retention; and a
//! restart in the middle resumes with a complete result and no duplicates.

use crate::api::resources::{claim_json, note_json, observation_json};
use crate::platform::crypto::{contains_any_form, pg_dump};
use crate::support::world::{AUDIENCE, World, patient_json};
use crate::support::{TestApp, TestAppBuilder, random_key};
use custodian::db::schema::{audit_events as ae, export_jobs as j};
use custodian::domain::clock::Clock;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use uuid::Uuid;

/// Planted in every seeded patient: none of it may appear in a de-identified export, its
/// directory or the database in clear.
pub(crate) const CANARY_FAMILY: &str = "Canarywhistle";
pub(crate) const CANARY_MRN: &str = "MRN-CANARY-4417";
pub(crate) const CANARY_NOTE: &str = "Canary note: call 617-555-0199 about Canarywhistle";

const SCOPES: &str = "user/Patient.rs user/Observation.rs user/DocumentReference.rs user/Claim.rs user/Patient.c user/Observation.c user/DocumentReference.c user/Claim.c";

fn settings(b: TestAppBuilder, dir: &Path) -> TestAppBuilder {
    b.manual_clock()
        .set("export.dir", dir.display().to_string())
        .set("export.batch_size", 2)
        .set("export.batch_pause_ms", 0)
        .set("export.poll_ms", 20)
        .set("export.lease_secs", 1)
}

async fn world(dir: &Path, export_key: &str) -> World {
    let dir = dir.to_path_buf();
    let key = export_key.to_string();
    World::with(move |b, _| settings(b, &dir).set("crypto.export_key", key)).await
}

/// A token minted at the app's clock; with a multi-factor sign-in a minute ago when `mfa`.
fn token(w: &World, sub: &str, mfa: bool) -> String {
    let now = w.app.clock().now().timestamp();
    let mut claims = json!({
        "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": sub, "exp": now + 600,
        "iat": now, "client_id": "test-app", "scope": SCOPES,
        "auth_time": now - 60, "amr": ["pwd"],
    });
    if mfa {
        claims["amr"] = json!(["pwd", "otp", "mfa"]);
    }
    w.signer.sign(&claims)
}

async fn kick_off(w: &World, path: &str, token: &str) -> reqwest::Response {
    w.app
        .client
        .get(w.app.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap()
}

async fn send(w: &World, method: reqwest::Method, url: &str, token: &str) -> reqwest::Response {
    w.app
        .client
        .request(method, w.app.url(url))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
}

/// Polls the status URL until the manifest (200); every 202 carries the IG's headers.
async fn manifest(w: &World, status_url: &str, token: &str) -> Value {
    for _ in 0..600 {
        let res = send(w, reqwest::Method::GET, status_url, token).await;
        match res.status() {
            StatusCode::ACCEPTED => {
                assert!(res.headers().contains_key("x-progress"));
                assert!(res.headers().contains_key("retry-after"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            StatusCode::OK => {
                assert_eq!(res.headers()["content-type"], "application/json");
                return res.json().await.unwrap();
            }
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
    }
    panic!("the export did not finish");
}

/// Seeds `n` patients (with the canaries) with an observation, a note and a claim each,
/// created by `sub` (clinician and billing: on the care team, in the facility).
pub(crate) async fn seed(w: &World, sub: &str, n: usize, claims: bool) -> Vec<Uuid> {
    let t = token(w, sub, false);
    let mut ids = Vec::new();
    for i in 0..n {
        let mut p = patient_json(&format!("{CANARY_MRN}-{i}"), CANARY_FAMILY);
        p["managingOrganization"] = json!({ "reference": format!("Organization/{}", w.facility) });
        let id = w.create(&t, &p).await;
        let mut bodies = vec![
            ("/fhir/Observation", observation_json(id)),
            ("/fhir/DocumentReference", note_json(id, CANARY_NOTE)),
        ];
        if claims {
            bodies.push(("/fhir/Claim", claim_json(id)));
        }
        for (path, body) in bodies {
            let res = w.send(reqwest::Method::POST, path, &t, Some(&body)).await;
            assert_eq!(res.status(), StatusCode::CREATED, "{path}");
        }
        ids.push(id);
    }
    ids
}

/// Every file under `dir`, read.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// Downloads each output file and checks every line: a JSON resource of the entry's type
/// with an id, as many as `count`. Returns (type, resources).
async fn download_all(w: &World, manifest: &Value, token: &str) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for entry in manifest["output"].as_array().unwrap() {
        let kind = entry["type"].as_str().unwrap().to_string();
        let url = entry["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://localhost:8443/fhir/$export-file/"),
            "{url}"
        );
        let res = send(w, reqwest::Method::GET, url, token).await;
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        assert_eq!(res.headers()["content-type"], "application/fhir+ndjson");
        let text = res.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("each line is one JSON resource"))
            .collect();
        for r in &lines {
            assert_eq!(r["resourceType"], kind.as_str(), "{r}");
            assert!(r["id"].as_str().is_some_and(|i| !i.is_empty()), "{r}");
        }
        assert_eq!(
            lines.len() as u64,
            entry["count"].as_u64().unwrap(),
            "{kind}"
        );
        out.push((kind, lines));
    }
    out
}

/// (action, resource type, patients, actor) of an audit event.
type ExportEvent = (String, Option<String>, Vec<Uuid>, Option<Uuid>);

#[tokio::test]
async fn the_bulk_data_flow_step_by_step_de_identified_with_no_phi_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path(), &random_key()).await;
    let (doc_id, _) = w.user("dr-export", &[Role::Clinician]);
    let patients = seed(&w, "dr-export", 5, false).await;
    let t = token(&w, "dr-export", true);

    // 1. Kick-off: 202 and the absolute status URL.
    let res = kick_off(
        &w,
        "/fhir/Patient/$export?_outputFormat=application%2Ffhir%2Bndjson&k=2",
        &t,
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::ACCEPTED,
        "{}",
        res.text().await.unwrap()
    );
    let status_url = res.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        status_url.starts_with("https://localhost:8443/fhir/$export-status/"),
        "{status_url}"
    );
    // 2. Poll until the manifest.
    let m = manifest(&w, &status_url, &t).await;
    assert_eq!(m["requiresAccessToken"], true);
    assert!(m["transactionTime"].as_str().is_some());
    assert!(
        m["request"]
            .as_str()
            .unwrap()
            .starts_with("https://localhost:8443/fhir/Patient/$export?")
    );
    assert_eq!(m["error"], json!([]));
    let report = &m["extension"]["https://custodian.example/fhir/StructureDefinition/k-anonymity"];
    assert_eq!(report["patients"], 5, "{m}");
    assert_eq!(report["k"], 2);
    // 3. Download each file: a clinician's de-identified export holds their Patients,
    //    Observations and notes (no claims), one line per record.
    let got = download_all(&w, &m, &t).await;
    let types: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(types, ["Patient", "Observation", "DocumentReference"]);
    for (_, lines) in &got {
        assert_eq!(lines.len(), patients.len());
        let ids: BTreeSet<&str> = lines.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), lines.len(), "no duplicates");
        for p in &patients {
            assert!(
                !ids.contains(p.to_string().as_str()),
                "pseudonyms, not record ids"
            );
        }
    }
    // 4. No plaintext PHI in the files, on disk, or in the database.
    let on_disk = files_under(dir.path());
    assert!(!on_disk.is_empty());
    for (path, bytes) in &on_disk {
        let text = String::from_utf8_lossy(bytes);
        for canary in [
            CANARY_FAMILY,
            CANARY_MRN,
            "617-555-0199",
            "123-45-6789",
            "1970-03-04",
        ] {
            assert!(!text.contains(canary), "{canary} in {}", path.display());
        }
    }
    let dump = pg_dump(&w.app.db.url);
    for canary in [CANARY_FAMILY, CANARY_MRN, "617-555-0199"] {
        assert!(
            !contains_any_form(&dump, canary),
            "{canary} in the database"
        );
    }
    // 5. Audited: the kick-off and every batch (naming the patients it carried) as the
    //    clinician, and each patient's access report lists the export.
    let events: Vec<ExportEvent> = ae::table
        .filter(ae::action.eq("export"))
        .order(ae::seq)
        .select((
            ae::action,
            ae::resource_type,
            ae::patient_ids,
            ae::actor_user_id,
        ))
        .load(&mut w.app.db.conn())
        .unwrap();
    assert!(events.iter().all(|e| e.3 == Some(doc_id.as_uuid())));
    assert_eq!(events[0].1.as_deref(), Some("ExportJob"));
    let covered: BTreeSet<Uuid> = events.iter().flat_map(|e| e.2.clone()).collect();
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
    // 6. Delete: 202, the files are gone, the status URL is no more.
    let res = send(&w, reqwest::Method::DELETE, &status_url, &t).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert!(files_under(dir.path()).is_empty());
    let res = send(&w, reqwest::Method::GET, &status_url, &t).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refused_without_step_up_for_a_role_without_the_grant_and_for_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path(), &random_key()).await;
    w.user("dr-nomfa", &[Role::Clinician]);
    w.user("pat-1", &[Role::Patient]);
    w.user("admin-1", &[Role::Admin]);
    // No recent multi-factor sign-in: 401 with the RFC 9470 challenge, audited.
    let res = kick_off(&w, "/fhir/Patient/$export", &token(&w, "dr-nomfa", false)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("insufficient_user_authentication"),
        "{challenge}"
    );
    assert!(challenge.contains("Bulk export"), "{challenge}");
    // Roles without an export grant: 403, even with a fresh MFA sign-in.
    for sub in ["pat-1", "admin-1"] {
        let res = kick_off(&w, "/fhir/Patient/$export", &token(&w, sub, true)).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{sub}");
    }
    let t = token(&w, "dr-nomfa", true);
    // A clinician may not take identified data, nor export the whole system.
    let res = kick_off(&w, "/fhir/Patient/$export?kind=identified", &t).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = kick_off(&w, "/fhir/$export", &t).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Bad requests: 400 with a fixed message.
    for q in [
        "_outputFormat=text%2Fcsv",
        "_type=Claim",
        "_since=Canarywhistle",
        "k=0",
    ] {
        let res = kick_off(&w, &format!("/fhir/Patient/$export?{q}"), &t).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{q}");
        assert!(!res.text().await.unwrap().contains("Canarywhistle"));
    }
    let res = send(&w, reqwest::Method::GET, "/fhir/Patient/$export", &t).await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "Prefer: respond-async is required"
    );
    // A group that is not the caller's care team or facility does not exist for them.
    let res = kick_off(&w, &format!("/fhir/Group/{}/$export", Uuid::new_v4()), &t).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // None of that made a job.
    let jobs: i64 = j::table.count().get_result(&mut w.app.db.conn()).unwrap();
    assert_eq!(jobs, 0);
}

#[tokio::test]
async fn one_export_at_a_time_and_only_the_requester_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    let dir_path = dir.path().to_path_buf();
    // No runner on this instance: the job stays queued.
    let w = World::with(move |b, _| {
        settings(b, &dir_path)
            .set("crypto.export_key", key)
            .set("export.worker", false)
    })
    .await;
    let (doc_id, _) = w.user("dr-a", &[Role::Clinician]);
    w.user("dr-b", &[Role::Clinician]);
    seed(&w, "dr-a", 1, false).await;
    let a = token(&w, "dr-a", true);
    let b = token(&w, "dr-b", true);
    let res = kick_off(&w, &format!("/fhir/Group/{doc_id}/$export"), &a).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let status_url = res.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    // A second kick-off while the first is pending: 429 with a fixed message.
    let res = kick_off(&w, "/fhir/Patient/$export", &a).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.text().await.unwrap().contains("still running"));
    // Another user: the job does not exist for them (status, cancel).
    for m in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let res = send(&w, m, &status_url, &b).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // The requester polls (202) and cancels; then may start again.
    let res = send(&w, reqwest::Method::GET, &status_url, &a).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = send(&w, reqwest::Method::DELETE, &status_url, &a).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = kick_off(&w, "/fhir/Patient/$export", &a).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn identified_exports_are_sealed_at_rest_and_downloaded_only_by_the_requester_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path(), &random_key()).await;
    w.user("biller", &[Role::Billing, Role::Clinician]);
    w.user("biller-2", &[Role::Billing]);
    seed(&w, "biller", 3, true).await;
    let t = token(&w, "biller", true);
    let res = kick_off(
        &w,
        "/fhir/Patient/$export?kind=identified&_type=Patient,Claim",
        &t,
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::ACCEPTED,
        "{}",
        res.text().await.unwrap()
    );
    let status_url = res.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let m = manifest(&w, &status_url, &t).await;
    assert_eq!(
        m["extension"]["https://custodian.example/fhir/StructureDefinition/export-kind"],
        "identified"
    );
    // On disk: ciphertext only.
    for (path, bytes) in files_under(dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(CANARY_FAMILY), "{}", path.display());
        assert!(!text.contains("resourceType"), "{}", path.display());
    }
    // Downloaded by the requester: the billing view, in clear.
    let got = download_all(&w, &m, &t).await;
    let (kind, patients) = &got[0];
    assert_eq!(kind, "Patient");
    assert_eq!(patients.len(), 3);
    assert!(patients[0].to_string().contains(CANARY_FAMILY));
    assert_eq!(got[1].1.len(), 3, "claims");
    // Another user (who may export too) cannot use the links: 404.
    let other = token(&w, "biller-2", true);
    let url = m["output"][0]["url"].as_str().unwrap();
    let res = send(&w, reqwest::Method::GET, url, &other).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = send(&w, reqwest::Method::GET, &status_url, &other).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The link expires (export.link_secs, 300 s by default).
    w.app.clock().advance(std::time::Duration::from_secs(301));
    let t = token(&w, "biller", true);
    let res = send(&w, reqwest::Method::GET, url, &t).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "expired link");
    // After the retention (export.retain_mins, a day) the sweeper deletes job and files.
    w.app
        .clock()
        .advance(std::time::Duration::from_secs(1441 * 60));
    let t = token(&w, "biller", true);
    let mut gone = false;
    for _ in 0..200 {
        let jobs: i64 = j::table.count().get_result(&mut w.app.db.conn()).unwrap();
        if jobs == 0 && files_under(dir.path()).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "the job and its files are deleted after the retention"
    );
    let res = send(&w, reqwest::Method::GET, &status_url, &t).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_restart_in_the_middle_resumes_with_a_complete_result_and_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    let slow = {
        let (dir, key) = (dir.path().to_path_buf(), key.clone());
        move |b: TestAppBuilder, _: &str| {
            settings(b, &dir)
                .set("crypto.export_key", key)
                .set("export.batch_pause_ms", 300)
        }
    };
    let w = World::with(slow.clone()).await;
    w.user("dr-r", &[Role::Clinician]);
    let patients = seed(&w, "dr-r", 8, false).await;
    let t = token(&w, "dr-r", true);
    let res = kick_off(&w, "/fhir/Patient/$export?_type=Patient,Observation", &t).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let status_url = res.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    // Wait until some batches are committed, then stop the instance.
    let job_id: Uuid = j::table.select(j::id).first(&mut w.app.db.conn()).unwrap();
    for _ in 0..200 {
        let progress: Value = j::table
            .find(job_id)
            .select(j::progress)
            .first(&mut w.app.db.conn())
            .unwrap();
        if progress["counts"][0].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let World {
        app,
        idp,
        signer,
        facility,
        keyring,
    } = w;
    app.stop().await;
    let TestApp { db, .. } = app;
    let stopped: (String, Value) = j::table
        .find(job_id)
        .select((j::status, j::progress))
        .first(&mut db.conn())
        .unwrap();
    assert_eq!(stopped.0, "running", "stopped in the middle: {stopped:?}");
    // Plant a torn write: bytes after the committed length, as a crash would leave.
    let part0 = std::fs::read_dir(dir.path().join(job_id.to_string()))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("0-Patient"))
        .unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&part0)
        .unwrap()
        .write_all(b"{\"resourceType\":\"Patient\",\"id\":\"torn")
        .unwrap();
    // Restart on the same database and directory: the job is taken over and finishes.
    let builder = slow(
        TestApp::builder()
            .set("auth.issuer", idp.issuer())
            .set("auth.audience", AUDIENCE),
        "",
    );
    let app = builder.database(db).spawn().await;
    let w = World {
        app,
        idp,
        signer,
        facility,
        keyring,
    };
    let t = token(&w, "dr-r", true);
    let m = manifest(&w, &status_url, &t).await;
    let resumes: i32 = j::table
        .find(job_id)
        .select(j::resumes)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert!(resumes >= 1, "resumed by the new instance");
    let got = download_all(&w, &m, &t).await;
    assert_eq!(got.len(), 2);
    for (kind, lines) in &got {
        assert_eq!(lines.len(), patients.len(), "{kind}: complete");
        let ids: BTreeSet<&str> = lines.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), patients.len(), "{kind}: no duplicates");
    }
}
