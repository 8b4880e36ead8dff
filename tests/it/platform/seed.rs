//! Synthetic data for `custodian dev`: the population, the demo principals, once only
//! (resuming an interrupted run), and dr.demo's care-team access through the real API.

use crate::support::idp::{Provider, Signer, now};
use crate::support::{TestApp, TestDb};
use custodian::db::schema::{
    care_team_members, claim_items, claims, document_references, observations, patients,
};
use custodian::dev::seed::{SeedPlan, seed};
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::json;

macro_rules! count {
    ($conn:expr, $table:expr) => {
        $table.count().get_result::<i64>($conn).unwrap()
    };
}

#[tokio::test]
async fn seed_creates_population_once_and_dr_demo_sees_only_the_care_team() {
    let signer = Signer::es256("k1");
    let idp = Provider::start(&[&signer]).await;
    let db = TestDb::create();
    let builder = TestApp::builder()
        .set("auth.issuer", idp.issuer())
        .set("auth.audience", "https://custodian.test/fhir");
    let config = builder.config(&db.url);
    let keyring = custodian::app::keys::load_keyring(&config.crypto, &db.url, 2).unwrap();
    let mut conn = db.conn();

    let mut plan = SeedPlan {
        issuer: idp.issuer(),
        patients: 20,
        care_team: 10,
        batch: 8,
    };
    let mut steps = Vec::new();
    let first = seed(&mut conn, &keyring, &plan, |d, t| steps.push((d, t))).unwrap();
    assert_eq!(first.patients_created, 20);
    assert_eq!(steps, vec![(8, 20), (16, 20), (20, 20)]);
    // An interrupted or smaller earlier run is resumed, not repeated.
    plan.patients = 30;
    let second = seed(&mut conn, &keyring, &plan, |_, _| {}).unwrap();
    assert_eq!((second.already_present, second.patients_created), (20, 10));
    let third = seed(&mut conn, &keyring, &plan, |_, _| {}).unwrap();
    assert_eq!(third.patients_created, 0);

    assert_eq!(count!(&mut conn, patients::table), 30);
    assert_eq!(count!(&mut conn, observations::table), 90);
    assert_eq!(count!(&mut conn, document_references::table), 30);
    assert_eq!(count!(&mut conn, claims::table), 30);
    assert!(count!(&mut conn, claim_items::table) >= 30);
    assert_eq!(count!(&mut conn, care_team_members::table), 10);

    let app = builder.database(db).spawn().await;
    let token = |sub: &str, scope: &str| {
        let t = now();
        signer.sign(&json!({
            "iss": idp.issuer(), "aud": "https://custodian.test/fhir", "sub": sub,
            "exp": t + 300, "iat": t, "client_id": "seed-test", "scope": scope,
        }))
    };
    let mut c = app.db.conn();
    let ids: Vec<uuid::Uuid> = patients::table
        .order(patients::created_at)
        .select(patients::id)
        .load(&mut c)
        .unwrap();
    let first_id = custodian::db::phi::find_patient_by_mrn(&mut c, &keyring, "SYN-000001")
        .unwrap()
        .unwrap()
        .id
        .as_uuid();
    let outside = custodian::db::phi::find_patient_by_mrn(&mut c, &keyring, "SYN-000015")
        .unwrap()
        .unwrap()
        .id;
    assert!(ids.contains(&first_id));
    let get = |path: String, tok: String| {
        let client = app.client.clone();
        let url = app.url(&path);
        async move { client.get(url).bearer_auth(tok).send().await.unwrap() }
    };
    let dr = token("dr.demo", "user/*.cruds");
    let res = get(format!("/fhir/Patient/{first_id}"), dr.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["identifier"][0]["value"], "SYN-000001");
    assert_ne!(
        get(format!("/fhir/Patient/{outside}"), dr).await.status(),
        StatusCode::OK
    );
    // patient.demo is linked to the first synthetic patient.
    let me = token("patient.demo", "patient/*.rs");
    assert_eq!(
        get(format!("/fhir/Patient/{first_id}"), me.clone())
            .await
            .status(),
        StatusCode::OK
    );
    assert_ne!(
        get(format!("/fhir/Patient/{outside}"), me).await.status(),
        StatusCode::OK
    );
    // billing.demo sees the first patient's seeded claim (sealed at rest, readable through
    // the API).
    let billing = token("billing.demo", "user/Claim.rs");
    let res = get(format!("/fhir/Claim?patient={first_id}"), billing).await;
    assert_eq!(res.status(), StatusCode::OK);
    let bundle: serde_json::Value = res.json().await.unwrap();
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(1));
    assert_eq!(bundle["entry"][0]["resource"]["resourceType"], "Claim");
    // admin.demo can use the admin API with the admin scope.
    let admin = token("admin.demo", "admin");
    let res = get("/api/admin/users?limit=10".into(), admin).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["users"].as_array().unwrap().len(), 5);
}
