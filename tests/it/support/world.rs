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
    /// The app's keyring (same keys), to register what no API role may write.
    pub keyring: custodian::crypto::Keyring,
}

/// The synthetic SSN [`World::create`] registers for every patient it creates.
pub const SSN: &str = "123-45-6789";

impl World {
    pub async fn new() -> World {
        World::with(|b, _| b).await
    }

    /// A world whose app gets more settings: `more(builder, issuer)`.
    pub async fn with(
        more: impl FnOnce(super::TestAppBuilder, &str) -> super::TestAppBuilder,
    ) -> World {
        let signer = Signer::es256("k1");
        let idp = Provider::start(&[&signer]).await;
        let builder = TestApp::builder()
            .set("auth.issuer", idp.issuer())
            .set("auth.audience", AUDIENCE);
        let builder = more(builder, &idp.issuer());
        let db = super::TestDb::create();
        let config = builder.config(&db.url);
        let app = builder.database(db).spawn().await;
        let keyring =
            custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).expect("keyring");
        let facility = phi::insert_facility(&mut app.db.conn(), "General Hospital").unwrap();
        World {
            app,
            idp,
            signer,
            facility,
            keyring,
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

    /// Creates a patient as `token` and returns its id. The patient is then registered
    /// with the synthetic SSN [`SSN`] outside the API ([`World::register_ssn`]): no role
    /// that may write Patients may write the SSN (field-level write control).
    pub async fn create(&self, token: &str, body: &Value) -> Uuid {
        let res = self
            .send(reqwest::Method::POST, "/fhir/Patient", token, Some(body))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let v: Value = res.json().await.unwrap();
        let id = Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
        self.register_ssn(id, SSN);
        id
    }

    /// Stores `ssn` for patient `id` as registration outside the API would: sealed and
    /// blind-indexed with the app's keys, the version left as it is.
    pub fn register_ssn(&self, id: Uuid, ssn: &str) {
        use custodian::crypto::{BlindKind, columns};
        use custodian::db::schema::patients as p;
        let mut c = self.app.db.conn();
        let key_version: i32 = p::table
            .find(id)
            .select(p::key_version)
            .first(&mut c)
            .unwrap();
        let sealer = self.keyring.sealer_for_write(&mut c).unwrap();
        assert_eq!(sealer.version(), key_version, "one data key in these tests");
        let sealed = sealer
            .seal_str(&columns::patients::SSN.at(id), ssn)
            .unwrap();
        let index = self.keyring.blind_index(BlindKind::Ssn, ssn).unwrap();
        diesel::update(p::table.find(id))
            .set((p::ssn_sealed.eq(Some(sealed)), p::ssn_index.eq(Some(index))))
            .execute(&mut c)
            .unwrap();
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

/// A Patient body a clinician may write: every field of the clinical view, no SSN (see
/// [`World::create`] for how test patients get one).
pub fn patient_json(mrn: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [
            { "system": "urn:custodian:mrn", "value": mrn }
        ],
        "name": [{ "family": family, "given": ["Avery", "Quinn"] }],
        "gender": "female",
        "birthDate": "1970-03-04",
        "telecom": [{ "system": "phone", "value": "555-0100", "use": "home" }],
        "address": [{ "line": ["1 Synthetic Way"], "city": "Testville", "postalCode": "00000" }]
    })
}
