//! A patient's own access report through the API (`/fhir/Patient/{id}/$access-report`):
//! the patient gets who accessed their record — including searches whose results held
//! them — and nothing about other patients; another patient's report is a 404, and a
//! clinician who may read the record is refused the report (403, recorded).

use crate::support::world::{World, patient_json};
use custodian::db::schema::users as users_t;
use custodian::db::users;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_patient_reads_their_own_access_report_and_no_one_elses() {
    let w = World::new().await;
    let (doc_id, doc) = w.user("dr-a", &[Role::Clinician]);
    diesel::update(users_t::table.find(doc_id.as_uuid()))
        .set(users_t::display_name.eq(Some("Dr Alpha")))
        .execute(&mut w.app.db.conn())
        .unwrap();
    let mine = w.create(&doc, &patient_json("MRN-7001", "Sharer")).await;
    let other = w.create(&doc, &patient_json("MRN-7002", "Sharer")).await;
    let alone = w.create(&doc, &patient_json("MRN-7003", "Alone")).await;
    // Accesses: a read of mine, a search whose results hold both, a read of the other.
    assert_eq!(
        w.get(&format!("/fhir/Patient/{mine}"), &doc).await.status(),
        StatusCode::OK
    );
    let found: Value = w
        .get("/fhir/Patient?family=sharer", &doc)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["entry"].as_array().unwrap().len(), 2);
    assert_eq!(
        w.get(&format!("/fhir/Patient/{other}"), &doc)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        w.get(&format!("/fhir/Patient/{alone}"), &doc)
            .await
            .status(),
        StatusCode::OK
    );

    let (pid, _) = w.user("patient-1", &[Role::Patient]);
    users::link_patient(&mut w.app.db.conn(), pid, Some(mine.into())).unwrap();
    let token = w.token("patient-1", "patient/Patient.rs");
    let res = w
        .get(&format!("/fhir/Patient/{mine}/$access-report"), &token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["patient"], format!("Patient/{mine}"));
    let accesses = report["accesses"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = accesses
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["via"].as_str().unwrap()))
        .collect();
    // Created, read, found by the search — not the other patients' reads.
    assert_eq!(
        actions,
        vec![
            ("create", "direct"),
            ("read", "direct"),
            ("search", "search results")
        ],
        "{report}"
    );
    assert!(accesses.iter().all(|a| a["who"] == "Dr Alpha"), "{report}");
    assert!(accesses.iter().all(|a| a["roles"][0] == "clinician"));
    let text = report.to_string();
    assert!(!text.contains(&other.to_string()) && !text.contains(&alone.to_string()));
    assert!(
        !text.contains("sharer") && !text.contains("MRN-700"),
        "{text}"
    );

    // Another patient's report: like any record the patient may not see, 404.
    let res = w
        .get(&format!("/fhir/Patient/{other}/$access-report"), &token)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // A clinician who may read the record may not read who else did.
    let res = w
        .get(&format!("/fhir/Patient/{mine}/$access-report"), &doc)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    use custodian::db::schema::audit_events as ae;
    let refused: Vec<(String, Option<String>, Vec<uuid::Uuid>)> = ae::table
        .filter(ae::actor_user_id.eq(doc_id.as_uuid()))
        .filter(ae::outcome.eq("deny"))
        .select((ae::action, ae::deny_reason, ae::patient_ids))
        .load(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(
        refused,
        vec![("read".into(), Some("missing-role".into()), vec![mine])]
    );
    // A bad period: 400 with a fixed message.
    let res = w
        .get(
            &format!("/fhir/Patient/{mine}/$access-report?from=evil"),
            &token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(!res.text().await.unwrap().contains("evil"));
}

/// The basis of each access is the decision point's, stored in its event when it was
/// recorded: the report tells care team, facility and own record apart.
#[tokio::test]
async fn the_report_tells_care_team_facility_and_own_record_apart() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-basis", &[Role::Clinician]);
    let mine = w.create(&doc, &patient_json("MRN-7101", "Basis")).await;
    // The creator is on the care team; the billing clerk reads through the facility.
    assert_eq!(
        w.get(&format!("/fhir/Patient/{mine}"), &doc).await.status(),
        StatusCode::OK
    );
    let (_, clerk) = w.user("clerk-basis", &[Role::Billing]);
    assert_eq!(
        w.get(&format!("/fhir/Patient/{mine}"), &clerk)
            .await
            .status(),
        StatusCode::OK
    );
    let (pid, _) = w.user("patient-basis", &[Role::Patient]);
    users::link_patient(&mut w.app.db.conn(), pid, Some(mine.into())).unwrap();
    let token = w.token("patient-basis", "patient/Patient.rs");
    assert_eq!(
        w.get(&format!("/fhir/Patient/{mine}"), &token)
            .await
            .status(),
        StatusCode::OK
    );
    let report: Value = w
        .get(&format!("/fhir/Patient/{mine}/$access-report"), &token)
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = report["accesses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["basis"].as_str().unwrap()))
        .collect();
    // A clinician creates through the facility, then reads as the care team.
    assert_eq!(
        got,
        vec![
            ("create", "facility"),
            ("read", "care team"),
            ("read", "facility"),
            ("read", "own record")
        ],
        "{report}"
    );
    // The stored codes.
    use custodian::db::schema::audit_events::dsl as e;
    let stored: Vec<Option<String>> = e::audit_events
        .filter(e::patient_ids.contains(vec![mine]))
        .filter(e::action.eq("read"))
        .filter(e::resource_type.eq("Patient"))
        .order(e::seq)
        .select(e::basis)
        .load(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(
        stored,
        vec![
            Some("care-team".to_string()),
            Some("facility".to_string()),
            Some("own-record".to_string())
        ]
    );
}
