//! `_revinclude` (issue 16): a Patient search adds the records that point at its matches,
//! each decided as a read of that record's type on its patient, audited as a read, and
//! bounded; never a record the caller could not read directly.

use crate::api::resources::observation_json;
use crate::support::world::{World, patient_json};
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

fn entries(b: &Value, mode: &str, kind: &str) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == mode && e["resource"]["resourceType"] == kind)
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn search(w: &World, q: &str, token: &str) -> Value {
    let res = w.get(&format!("/fhir/Patient?{q}"), token).await;
    assert_eq!(res.status(), StatusCode::OK, "{q}");
    res.json().await.unwrap()
}

async fn observe(w: &World, patient: Uuid, token: &str) -> String {
    let res = w
        .send(
            Method::POST,
            "/fhir/Observation",
            token,
            Some(&observation_json(patient)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let o: Value = res.json().await.unwrap();
    o["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn revinclude_adds_only_records_the_caller_could_read_directly_audited_and_bounded() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, other) = w.user("dr-b", &[Role::Clinician]);
    let mine = w.create(&doc, &patient_json("MRN-R1", "Revinc")).await;
    let theirs = w.create(&other, &patient_json("MRN-R2", "Revinc")).await;
    let mut own_obs = vec![observe(&w, mine, &doc).await, observe(&w, mine, &doc).await];
    own_obs.sort();
    let their_obs = observe(&w, theirs, &other).await;

    let before = crate::api::attribution::last_seq(&w.app);
    let b = search(&w, "family=revinc&_revinclude=Observation:subject", &doc).await;
    assert_eq!(entries(&b, "match", "Patient"), vec![mine.to_string()]);
    let mut got = entries(&b, "include", "Observation");
    got.sort();
    assert_eq!(got, own_obs);
    assert!(!b.to_string().contains(&their_obs));
    for e in b["entry"].as_array().unwrap() {
        let url = e["fullUrl"].as_str().unwrap();
        let kind = e["resource"]["resourceType"].as_str().unwrap();
        let id = e["resource"]["id"].as_str().unwrap();
        assert!(url.ends_with(&format!("/fhir/{kind}/{id}")), "{url}");
    }
    // One search event, and one read event per included record, naming its patient.
    let new = crate::api::attribution::events_after(&w.app, before);
    let reads: Vec<_> = new.iter().filter(|e| e.action == "read").collect();
    assert_eq!(reads.len(), 2, "{} events", new.len());
    assert!(
        reads
            .iter()
            .all(|e| e.resource_type.as_deref() == Some("Observation"))
    );
    #[derive(QueryableByName)]
    struct Read {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
        resource_id: Option<Uuid>,
        #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Uuid>)]
        patient_ids: Vec<Uuid>,
    }
    let audited: Vec<Read> = diesel::sql_query(
        "SELECT resource_id, patient_ids FROM audit_events WHERE seq > $1 AND action = 'read' ORDER BY resource_id",
    )
    .bind::<diesel::sql_types::BigInt, _>(before)
    .load(&mut w.app.db.conn())
    .unwrap();
    let mut ids: Vec<String> = audited
        .iter()
        .map(|r| r.resource_id.unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, own_obs);
    assert!(audited.iter().all(|r| r.patient_ids == vec![mine]));

    // A token that may search observations but not read them gets none included (a
    // search of that type alone is not enough), nor does one without any Observation scope.
    for scope in ["user/Patient.rs user/Observation.s", "user/Patient.rs"] {
        let token = w.token("dr-a", scope);
        let b = search(&w, "family=revinc&_revinclude=Observation:patient", &token).await;
        assert_eq!(
            entries(&b, "match", "Patient"),
            vec![mine.to_string()],
            "{scope}"
        );
        assert!(
            entries(&b, "include", "Observation").is_empty(),
            "{scope}: {b}"
        );
    }
    // A clinician may not read claims: none, even for their own patient.
    let b = search(&w, "family=revinc&_revinclude=Claim:patient", &doc).await;
    assert!(entries(&b, "include", "Claim").is_empty());

    // Only the declared references; `*` too is refused.
    for bad in ["Observation:performer", "*", "Patient:link"] {
        let res = w
            .get(
                &format!("/fhir/Patient?family=revinc&_revinclude={bad}"),
                &doc,
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    // Bounded: at most 50 per page, with an OperationOutcome saying there were more.
    for _ in 0..49 {
        observe(&w, mine, &doc).await;
    }
    let b = search(&w, "family=revinc&_revinclude=Observation:subject", &doc).await;
    assert_eq!(entries(&b, "include", "Observation").len(), 50);
    assert!(
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["search"]["mode"] == "outcome"),
        "{b}"
    );

    // The CapabilityStatement lists them.
    let cap: Value = w.get("/fhir/metadata", &doc).await.json().await.unwrap();
    let patient = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert!(
        patient["searchRevInclude"]
            .as_array()
            .unwrap()
            .contains(&Value::from("Observation:subject"))
    );
}
