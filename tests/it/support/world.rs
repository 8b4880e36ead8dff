//! `World`: a running app with a local identity provider, the test's facility and helpers
//! to make principals with roles and care teams, mint their tokens and call the API. The
//! fixture of the API tests.

use super::TestApp;
use super::idp::{Provider, Signer, now};
use custodian::db::{phi, users};
use custodian::domain::{FacilityId, UserId};
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

pub const AUDIENCE: &str = "https://custodian.test/fhir";
pub const ALL_SCOPES: &str = "user/Patient.cruds user/Observation.cruds user/Claim.cruds";

pub struct World {
    pub app: TestApp,
    pub idp: Provider,
    pub signer: Signer,
    pub facility: FacilityId,
}

impl World {
    pub async fn new() -> World {
        let signer = Signer::es256("k1");
        let idp = Provider::start(&[&signer]).await;
        let app = TestApp::builder()
            .set("auth.issuer", idp.issuer())
            .set("auth.audience", AUDIENCE)
            .spawn()
            .await;
        let facility = phi::insert_facility(&mut app.db.conn(), "General Hospital").unwrap();
        World {
            app,
            idp,
            signer,
            facility,
        }
    }

    pub fn token(&self, sub: &str, scope: &str) -> String {
        let now = now();
        self.signer.sign(&json!({
            "iss": self.idp.issuer(), "aud": AUDIENCE, "sub": sub, "exp": now + 300,
            "iat": now, "client_id": "test-app", "scope": scope,
        }))
    }

    /// A user with roles in the test facility; returns (user id, token with all scopes).
    pub fn user(&self, sub: &str, roles: &[Role]) -> (UserId, String) {
        let mut c = self.app.db.conn();
        let u = users::user_for(&mut c, &self.idp.issuer(), sub, users::UserKind::Person).unwrap();
        for r in roles {
            users::grant_role(&mut c, u.id, *r, "test setup", None).unwrap();
        }
        users::set_facility(&mut c, u.id, Some(self.facility)).unwrap();
        (u.id, self.token(sub, ALL_SCOPES))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut req = self
            .app
            .client
            .request(method, self.app.url(path))
            .header("authorization", format!("Bearer {token}"));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    /// Creates a patient as `token` and returns its id.
    pub async fn create(&self, token: &str, body: &Value) -> Uuid {
        let res = self
            .send(reqwest::Method::POST, "/fhir/Patient", token, Some(body))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let v: Value = res.json().await.unwrap();
        Uuid::parse_str(v["id"].as_str().unwrap()).unwrap()
    }

    /// (action, outcome, patient ids) of every audit event, in order.
    pub fn audit_events(&self) -> Vec<(String, String, Vec<Uuid>)> {
        let mut c = self.app.db.conn();
        use custodian::db::schema::audit_events::dsl::*;
        audit_events
            .order(seq)
            .select((action, outcome, patient_ids))
            .load(&mut c)
            .unwrap()
    }
}

pub fn patient_json(mrn: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [
            { "system": "urn:custodian:mrn", "value": mrn },
            { "system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789" }
        ],
        "name": [{ "family": family, "given": ["Avery", "Quinn"] }],
        "gender": "female",
        "birthDate": "1970-03-04",
        "telecom": [{ "system": "phone", "value": "555-0100", "use": "home" }],
        "address": [{ "line": ["1 Synthetic Way"], "city": "Testville", "postalCode": "00000" }]
    })
}
