//! Field-level write control and the SSN search oracle (issue 18, findings 2 and 3): a
//! role writes and searches only the fields of its view. Fields outside the view are kept
//! on update (a clinician's GET → PUT round trip keeps the SSN it cannot see); writing or
//! searching one is refused with a 403 naming the field, and audited.

use crate::support::idp::now;
use crate::support::world::{AUDIENCE, SSN, World, patient_json};
use custodian::db::schema::{audit_events as ae, patients};
use custodian::db::users;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";

/// (action, outcome, deny reason) of the last audit event.
fn last(w: &World) -> (String, String, Option<String>) {
    ae::table
        .order(ae::seq.desc())
        .select((ae::action, ae::outcome, ae::deny_reason))
        .first(&mut w.app.db.conn())
        .unwrap()
}

async fn put(w: &World, token: &str, id: Uuid, version: &str, body: &Value) -> reqwest::Response {
    w.app
        .client
        .put(w.app.url(&format!("/fhir/Patient/{id}")))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", format!("W/\"{version}\""))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// The SSN billing reads for the patient (None: no SSN).
async fn ssn_as_billing(w: &World, billing: &str, id: Uuid) -> Option<String> {
    let res = w.get(&format!("/fhir/Patient/{id}"), billing).await;
    assert_eq!(res.status(), StatusCode::OK);
    let p: Value = res.json().await.unwrap();
    p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == SSN_SYSTEM)
        .map(|i| i["value"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_clinicians_round_trip_keeps_the_ssn_it_cannot_see() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, billing) = w.user("billing-1", &[Role::Billing]);
    let id = w.create(&doc, &patient_json("MRN-WC-1", "Roundtrip")).await;
    assert_eq!(ssn_as_billing(&w, &billing, id).await.as_deref(), Some(SSN));

    // GET the clinical view (no SSN) and PUT it back unchanged but for the family name.
    let mut body: Value = w
        .get(&format!("/fhir/Patient/{id}"), &doc)
        .await
        .json()
        .await
        .unwrap();
    assert!(!body.to_string().contains(SSN));
    body["name"][0]["family"] = json!("Roundtripped");
    let res = put(&w, &doc, id, "1", &body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["name"][0]["family"], "Roundtripped");
    assert!(
        !updated.to_string().contains(SSN),
        "the answer is the clinical view"
    );

    // Billing still reads the SSN; the clinician's edit landed.
    assert_eq!(ssn_as_billing(&w, &billing, id).await.as_deref(), Some(SSN));
    let p: Value = w
        .get(&format!("/fhir/Patient/{id}"), &billing)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["name"][0]["family"], "Roundtripped");
    assert_eq!(p["meta"]["versionId"], "2");

    // A field inside the view follows update semantics: absent means removed.
    let mut body = body.clone();
    body.as_object_mut().unwrap().remove("telecom");
    body["meta"] = json!({"versionId": "2"});
    let res = put(&w, &doc, id, "2", &body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let updated: Value = res.json().await.unwrap();
    assert!(updated.get("telecom").is_none());
    assert_eq!(ssn_as_billing(&w, &billing, id).await.as_deref(), Some(SSN));
}

#[tokio::test]
async fn a_clinician_writing_an_ssn_is_refused_naming_the_field() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, billing) = w.user("billing-1", &[Role::Billing]);
    let id = w.create(&doc, &patient_json("MRN-WC-2", "Overwrite")).await;

    // Overwrite on update.
    let mut body = patient_json("MRN-WC-2", "Overwrite");
    body["id"] = json!(id.to_string());
    body["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": SSN_SYSTEM, "value": "234-56-7890"}));
    let res = put(&w, &doc, id, "1", &body).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let text = res.text().await.unwrap();
    assert!(text.contains("'identifier (SSN)'"), "{text}");
    assert!(!text.contains("234-56-7890"), "the value is never echoed");
    assert_eq!(
        last(&w),
        (
            "update".to_string(),
            "deny".to_string(),
            Some("field-not-in-view".to_string())
        )
    );
    assert_eq!(ssn_as_billing(&w, &billing, id).await.as_deref(), Some(SSN));
    let version: i32 = patients::table
        .find(id)
        .select(patients::version)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(version, 1, "nothing was written");

    // Setting one on create.
    let count = || -> i64 {
        patients::table
            .count()
            .get_result(&mut w.app.db.conn())
            .unwrap()
    };
    let before = count();
    let mut body = patient_json("MRN-WC-3", "Newborn");
    body["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": SSN_SYSTEM, "value": "234-56-7890"}));
    let res = w
        .send(reqwest::Method::POST, "/fhir/Patient", &doc, Some(&body))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("'identifier (SSN)'"));
    assert_eq!(
        last(&w),
        (
            "create".to_string(),
            "deny".to_string(),
            Some("field-not-in-view".to_string())
        )
    );
    assert_eq!(count(), before, "no half-written patient");
}

#[tokio::test]
async fn searching_on_the_ssn_outside_the_view_is_refused() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, billing) = w.user("billing-1", &[Role::Billing]);
    w.create(&doc, &patient_json("MRN-WC-4", "Oracle")).await;
    // A service client (client credentials) of the same facility.
    let mut c = w.app.db.conn();
    let svc = users::user_for(&mut c, &w.idp.issuer(), "svc-1", users::UserKind::Service).unwrap();
    users::grant_role(&mut c, svc.id, Role::Service, "test setup", None).unwrap();
    users::set_facility(&mut c, svc.id, Some(w.facility)).unwrap();
    drop(c);
    let t = now();
    let service = w.signer.sign(&json!({
        "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": "svc-1", "client_id": "svc-1",
        "exp": t + 300, "iat": t, "scope": "system/Patient.rs",
    }));

    let search = format!("/fhir/Patient?identifier={SSN_SYSTEM}|{SSN}");
    for (who, token) in [("clinician", &doc), ("service", &service)] {
        let res = w.get(&search, token).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{who}");
        let text = res.text().await.unwrap();
        assert!(
            text.contains("search on the field 'identifier (SSN)'"),
            "{who}: {text}"
        );
        assert_eq!(
            last(&w),
            (
                "search".to_string(),
                "deny".to_string(),
                Some("field-not-in-view".to_string())
            ),
            "{who}"
        );
        // Fields inside the view stay searchable.
        let res = w
            .get("/fhir/Patient?identifier=urn:custodian:mrn|MRN-WC-4", token)
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{who}");
    }
    // Billing, whose view has the SSN, finds the patient by it.
    let res = w.get(&search, &billing).await;
    assert_eq!(res.status(), StatusCode::OK);
    let bundle: Value = res.json().await.unwrap();
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(1),
        "{bundle}"
    );
}
