//! SMART App Launch, standalone (issue 16): a SMART app built on the SMART `fhirclient`
//! library (npm, pinned by tests/fhir-clients; `smart-launch.mjs`) launches against the
//! running service and the real test OpenID provider (npm `oidc-provider`, tests/oidc):
//! discovery through `/fhir/.well-known/smart-configuration`, the provider's login and
//! consent (driven over HTTP), the redirect back with a code, the code exchanged for an
//! access token (PKCE S256, public client) at the provider's token endpoint, and FHIR
//! requests with that token — accepted by the service's normal bearer-token
//! verification (issuer, audience, JWKS from the provider's discovery document).

use crate::api::interop::{clients_dir, ensure_installed};
use crate::support::oidc::{Provider, jar_client};
use crate::support::{TestApp, free_port, test_cert};
use custodian::db::{phi, users};
use custodian::domain::PatientId;
use custodian::policy::Role;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

const CLIENT_ID: &str = "smart-test-app";
/// What the FHIR server (the resource) lets the provider grant.
const RESOURCE_SCOPES: &str =
    "patient/*.read patient/*.rs user/Patient.cruds user/Observation.cruds";

/// The SMART app (node), killed on drop.
struct SmartApp {
    child: Child,
    port: u16,
}

impl SmartApp {
    fn start(fhir_base: &str, port: u16) -> SmartApp {
        ensure_installed();
        let mut child = Command::new("node")
            .arg(clients_dir().join("smart-launch.mjs"))
            .current_dir(clients_dir())
            .env("NODE_EXTRA_CA_CERTS", &test_cert().cert)
            .env("CUSTODIAN_FHIR_BASE", fhir_base)
            .env("SMART_APP_PORT", port.to_string())
            .env("SMART_CLIENT_ID", CLIENT_ID)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node smart-launch.mjs: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.starts_with("ready ") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("the SMART app did not print its ready line within 30 s");
        }
        SmartApp { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A standalone launch from `launch` as `subject` in a fresh browser-like client
    /// (its own cookies, so no sign-in is shared between launches): the provider's login
    /// and consent, then the redirect back to the app, whose JSON report is returned.
    async fn launch(&self, idp: &Provider, launch: &str, subject: &str) -> Value {
        let (client, _) = jar_client();
        let start = url::Url::parse(&self.url(launch)).unwrap();
        let callback = idp
            .authorize_from(&start, &self.url("/callback"), &client, subject)
            .await;
        assert!(
            callback.query_pairs().any(|(k, _)| k == "code"),
            "{callback}"
        );
        let res = client.get(callback).send().await.unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 200, "the SMART app failed:\n{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for SmartApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_smart_app_on_fhirclient_launches_standalone_and_reads_with_the_providers_token() {
    let port = free_port();
    let app_port = free_port();
    let fhir_base = format!("https://localhost:{port}/fhir");
    let idp = Provider::start_smart(
        CLIENT_ID,
        &format!("http://127.0.0.1:{app_port}/callback"),
        &fhir_base,
        RESOURCE_SCOPES,
    );
    // The service trusts the provider's access tokens for itself: issuer and audience,
    // keys from the provider's discovery document — the normal verification.
    let app = TestApp::builder()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("server.public_url", format!("https://localhost:{port}"))
        .set("auth.issuer", idp.issuer.clone())
        .set("auth.audience", fhir_base.clone())
        .spawn()
        .await;
    let patient_user = {
        let mut c = app.db.conn();
        let facility = phi::insert_facility(&mut c, "General Hospital").unwrap();
        let kind = users::UserKind::Person;
        let dr = users::user_for(&mut c, &idp.issuer, "dr-smart", kind).unwrap();
        users::grant_role(&mut c, dr.id, Role::Clinician, "test setup", None).unwrap();
        users::set_facility(&mut c, dr.id, Some(facility)).unwrap();
        let pat = users::user_for(&mut c, &idp.issuer, "pat-smart", kind).unwrap();
        users::grant_role(&mut c, pat.id, Role::Patient, "test setup", None).unwrap();
        users::set_facility(&mut c, pat.id, Some(facility)).unwrap();
        pat.id
    };
    let smart_app = SmartApp::start(&fhir_base, app_port);

    // The SMART configuration the app discovers names the provider's endpoints.
    let config: Value = app
        .get("/fhir/.well-known/smart-configuration")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config["issuer"], idp.issuer.as_str());
    assert_eq!(
        config["token_endpoint"],
        format!("{}/token", idp.issuer).as_str()
    );
    // Each capability this launch relies on is claimed (and the launch below proves it).
    let caps = config["capabilities"].as_array().unwrap();
    for cap in [
        "launch-standalone",
        "client-public",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "sso-openid-connect",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap}: {config}");
    }
    assert_eq!(
        config["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );

    // A clinician's launch (user/ scopes) creates two patients and three observations
    // through the client.
    let created = smart_app
        .launch(&idp, "/launch?as=clinician", "dr-smart")
        .await;
    let patient = created["patient"].as_str().unwrap().to_string();
    let other = created["other"].as_str().unwrap().to_string();
    let observations = strings(&created["observations"]);
    assert_eq!(observations.len(), 3);

    // The patient's own launch: `launch/patient openid fhirUser patient/*.read`, the
    // patient in context from the token response.
    {
        let mut c = app.db.conn();
        let id = PatientId::from(Uuid::parse_str(&patient).unwrap());
        users::link_patient(&mut c, patient_user, Some(id)).unwrap();
    }
    idp.set_launch_patient("pat-smart", &patient).await;
    let before = audit_len(&app);
    let report = smart_app
        .launch(
            &idp,
            &format!("/launch?as=patient&other={other}"),
            "pat-smart",
        )
        .await;
    assert_eq!(report["patient"], patient.as_str(), "{report}");
    assert_eq!(report["fhirUser"], format!("Patient/{patient}").as_str());
    let scope = report["scope"].as_str().unwrap();
    for s in ["launch/patient", "openid", "fhirUser", "patient/*.read"] {
        assert!(scope.split(' ').any(|g| g == s), "{s} not granted: {scope}");
    }
    assert_eq!(report["read"]["resourceType"], "Patient");
    assert_eq!(report["read"]["id"], patient.as_str());
    assert_eq!(report["read"]["family"], "Launchpad");
    assert_eq!(report["request"]["id"], patient.as_str());
    // The paged search: every observation once, each subject resolved to the patient.
    let found: Vec<&Value> = report["observations"].as_array().unwrap().iter().collect();
    let mut ids: Vec<String> = found
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, observations);
    assert!(
        found.iter().all(|o| o["subject"] == patient.as_str()),
        "{report}"
    );
    assert_eq!(strings(&report["inContext"]), observations);
    // A patient's search of Patients finds only their own record; another patient's
    // record is refused as one without a relationship (404, docs/api-fhir.md).
    assert_eq!(strings(&report["patients"]), vec![patient.clone()]);
    assert_eq!(report["other"], 404, "{report}");

    // Every access was audited as the patient user through the SMART app's client id.
    let trail = audit_since(&app, before);
    assert!(!trail.is_empty());
    assert!(
        trail
            .iter()
            .all(|(user, client, _)| *user == Some(patient_user.as_uuid())
                && client.as_deref() == Some(CLIENT_ID)),
        "{trail:?}"
    );
    assert!(trail.iter().any(|(_, _, outcome)| outcome == "deny"));
}

fn audit_len(app: &TestApp) -> usize {
    use custodian::db::schema::audit_events::dsl::*;
    use diesel::prelude::*;
    audit_events
        .count()
        .get_result::<i64>(&mut app.db.conn())
        .unwrap() as usize
}

/// (user id, client application, outcome) of the audit events after the first `skip`.
fn audit_since(app: &TestApp, skip: usize) -> Vec<(Option<Uuid>, Option<String>, String)> {
    use custodian::db::schema::audit_events::dsl::*;
    use diesel::prelude::*;
    audit_events
        .order(seq)
        .select((actor_user_id, client_app, outcome))
        .load(&mut app.db.conn())
        .unwrap()
        .into_iter()
        .skip(skip)
        .collect()
}
