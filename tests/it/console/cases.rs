//! Alerts and cases (issue 15, item 2) over real HTTPS against PostgreSQL: the alert list
//! (who sees it, MRNs only for privacy officers, filters, keyset paging, every view
//! recorded), cases (open from alerts, forward-only status, the owner closes with a
//! verdict and a sanction, history append-only in the database, nobody works a case about
//! themselves), suppressions (bounded expiry, sealed reason, revocable, and applied where
//! alerts are raised) and the dashboard counts.

use crate::support::{TestApp, test_cert};
use chrono::{Duration, Utc};
use custodian::crypto::Keyring;
use custodian::db::alerts::{AlertKind, NewAlert, raise_all};
use custodian::db::patients::{NewPatient, insert_patient};
use custodian::db::schema::{console_sessions, users as users_t};
use custodian::db::users::{self, UserKind};
use custodian::domain::{FacilityId, PatientId, UserId};
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use sha2::Digest;
use std::sync::Arc;
use uuid::Uuid;

struct World {
    app: TestApp,
    keyring: Keyring,
    facility: FacilityId,
}

struct Client {
    http: reqwest::Client,
    csrf: String,
}

const ISSUER: &str = "https://idp.example.test";

impl World {
    async fn start() -> World {
        let builder = TestApp::builder()
            .set("console.issuer", "http://127.0.0.1:9")
            .set("console.client_id", "custodian-console")
            .set("console.client_secret", "test-secret")
            .set(
                "console.redirect_url",
                "https://localhost:8443/console/callback",
            );
        let db = crate::support::TestDb::create();
        let config = builder.config(&db.url);
        let app = builder.database(db).spawn().await;
        let keyring =
            custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).expect("keyring");
        let facility =
            custodian::db::phi::insert_facility(&mut app.db.conn(), "General Hospital").unwrap();
        World {
            app,
            keyring,
            facility,
        }
    }

    fn user(&self, sub: &str, roles: &[Role], display: &str) -> UserId {
        let mut c = self.app.db.conn();
        let u = users::user_for(&mut c, ISSUER, sub, UserKind::Person).unwrap();
        for r in roles {
            users::grant_role(&mut c, u.id, *r, "test setup", None).unwrap();
        }
        diesel::update(users_t::table.find(u.id))
            .set(users_t::display_name.eq(Some(display)))
            .execute(&mut c)
            .unwrap();
        u.id
    }

    fn patient(&self, mrn: &str) -> PatientId {
        let new = NewPatient {
            facility_id: self.facility,
            mrn: mrn.into(),
            ssn: None,
            family: "Synthetic".into(),
            given: "Pat".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1970, 1, 2).unwrap(),
            gender: "female".into(),
            telecom: None,
            address: None,
        };
        insert_patient(&mut self.app.db.conn(), &self.keyring, &new)
            .unwrap()
            .id
    }

    fn sign_in(&self, user: UserId) -> Client {
        let session_id = custodian::console::session::random_token();
        let csrf = custodian::console::session::random_token();
        diesel::insert_into(console_sessions::table)
            .values((
                console_sessions::id_hash.eq(sha2::Sha256::digest(session_id.as_bytes()).to_vec()),
                console_sessions::stage.eq("active"),
                console_sessions::user_id.eq(Some(user.as_uuid())),
                console_sessions::csrf_token.eq(&csrf),
                console_sessions::totp_at.eq(Some(Utc::now())),
            ))
            .execute(&mut self.app.db.conn())
            .unwrap();
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let url: url::Url = self.app.url("/").parse().unwrap();
        jar.add_cookie_str(
            &format!("__Host-custodian={session_id}; Secure; HttpOnly; Path=/"),
            &url,
        );
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes()).unwrap(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar)
            .build()
            .unwrap();
        Client { http, csrf }
    }

    async fn get(&self, b: &Client, path: &str) -> (StatusCode, String) {
        let res = b.http.get(self.app.url(path)).send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    }

    async fn post(
        &self,
        b: &Client,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let mut all = vec![("csrf_token", b.csrf.as_str())];
        all.extend_from_slice(fields);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(all)
            .finish();
        let res = b
            .http
            .post(self.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "origin",
                format!("https://localhost:{}", self.app.https.port()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (res.status(), location, res.text().await.unwrap())
    }

    fn raise(&self, alerts: &[NewAlert]) -> Vec<AlertKind> {
        raise_all(&mut self.app.db.conn(), alerts).unwrap()
    }

    fn alert_ids(&self) -> Vec<(Uuid, String)> {
        use custodian::db::schema::alerts as a;
        a::table
            .order(a::created_at.desc())
            .select((a::id, a::kind))
            .load(&mut self.app.db.conn())
            .unwrap()
    }

    /// (action, resource type, resource id, patient ids, outcome, deny reason) of `actor`'s
    /// events on `kind`.
    #[allow(clippy::type_complexity)]
    fn events_on(
        &self,
        actor: UserId,
        kind: &str,
    ) -> Vec<(String, Option<Uuid>, Vec<Uuid>, String, Option<String>)> {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .filter(ae::actor_user_id.eq(actor.as_uuid()))
            .filter(ae::resource_type.eq(kind))
            .order(ae::seq)
            .select((
                ae::action,
                ae::resource_id,
                ae::patient_ids,
                ae::outcome,
                ae::deny_reason,
            ))
            .load(&mut self.app.db.conn())
            .unwrap()
    }
}

fn alert(kind: AlertKind, user: UserId, patient: PatientId, key: &str) -> NewAlert {
    NewAlert {
        kind,
        severity: kind.severity(),
        reason: "care-team",
        user_id: Some(user),
        patient_id: Some(patient),
        grant_id: None,
        source_ip: None,
        client_id: None,
        figures: vec![3],
        evidence_seqs: vec![1, 2],
        dedup_key: key.to_string(),
        created_at: Utc::now(),
    }
}

/// The case id of a redirect to `/console/cases/{id}?done=…`.
fn case_of(location: &str) -> String {
    location
        .strip_prefix("/console/cases/")
        .and_then(|rest| rest.split('?').next())
        .unwrap_or_else(|| panic!("not a case redirect: {location}"))
        .to_string()
}

#[tokio::test]
async fn alerts_are_listed_worked_into_a_case_and_closed_with_a_verdict() {
    let w = World::start().await;
    let pia = w.user("pia", &[Role::PrivacyOfficer], "Pia Privacy");
    let quinn = w.user("quinn", &[Role::PrivacyOfficer], "Quinn Privacy");
    let ada = w.user("ada", &[Role::Admin], "Ada Admin");
    let bob = w.user("bob", &[Role::Clinician], "Dr Bob Snoop");
    let patient = w.patient("MRN-CASE-1");
    assert_eq!(
        w.raise(&[
            alert(AlertKind::WorkforcePatient, bob, patient, "t:1"),
            alert(AlertKind::RestrictedRecord, bob, patient, "t:2"),
        ])
        .len(),
        2
    );
    let (p, q, a) = (w.sign_in(pia), w.sign_in(quinn), w.sign_in(ada));

    // The list: explanations, the person by name, evidence links; the MRN for privacy
    // officers only, and each view recorded naming the patients identified.
    let (status, html) = w.get(&p, "/console/alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Dr Bob Snoop") && html.contains("MRN MRN-CASE-1"),
        "{html}"
    );
    assert!(
        html.contains("Co-worker") && html.contains("/console/audit/1"),
        "{html}"
    );
    let (status, html) = w.get(&a, "/console/alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Dr Bob Snoop") && !html.contains("MRN-CASE-1"),
        "{html}"
    );
    let seen = w.events_on(pia, "Alert");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].2, vec![patient.as_uuid()]);
    assert_eq!(seen[0].3, "permit");
    assert!(w.events_on(ada, "Alert")[0].2.is_empty());

    // Filters, and bad input refused with a fixed message.
    let (_, html) = w.get(&p, "/console/alerts?status=new&severity=high").await;
    assert_eq!(html.matches("class=\"alert ").count(), 2, "{html}");
    let (_, html) = w.get(&p, "/console/alerts?severity=low").await;
    assert!(html.contains("No alerts."), "{html}");
    for bad in [
        "/console/alerts?status=%3Cb%3Ebogus",
        "/console/alerts?kind=bogus-kind",
        "/console/alerts?before=bogus",
        "/console/alerts?colour=bogus",
    ] {
        let (status, body) = w.get(&p, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(!body.contains("bogus"), "{bad}: {body}");
    }

    // Administrators see alerts but do not work cases (refused and recorded).
    let ids: Vec<String> = w.alert_ids().iter().map(|(id, _)| id.to_string()).collect();
    let (status, _, _) = w
        .post(
            &a,
            "/console/cases",
            &[("alert", &ids[0]), ("alert", &ids[1])],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let denied = w.events_on(ada, "PrivacyCase");
    assert_eq!(denied.last().unwrap().4.as_deref(), Some("missing-role"));

    // Pia opens a case of both alerts; they cannot go into a second case.
    let (status, location, _) = w
        .post(
            &p,
            "/console/cases",
            &[("alert", &ids[0]), ("alert", &ids[1])],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let case = case_of(&location);
    let (status, _, _) = w.post(&q, "/console/cases", &[("alert", &ids[0])]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, html) = w.get(&p, "/console/alerts?status=new").await;
    assert!(html.contains("No alerts."), "{html}");
    let (_, html) = w.get(&p, "/console/alerts?status=in-case").await;
    assert_eq!(html.matches("class=\"alert ").count(), 2, "{html}");
    let (_, html) = w.get(&p, "/console").await;
    assert!(html.contains("id=\"open-cases\">1<"), "{html}");
    assert!(html.contains("id=\"open-high\">2<"), "{html}");

    // Only the owner moves the status; forward only; a violation needs a sanction; bad
    // input is refused with a fixed message.
    let status_path = format!("/console/cases/{case}/status");
    let (status, _, _) = w
        .post(&q, &status_path, &[("status", "investigating")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = w
        .post(&p, &status_path, &[("status", "investigating")])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = w.post(&p, &status_path, &[("status", "open")]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let long = "x".repeat(2001);
    for fields in [
        vec![("status", "<i>closed</i>")],
        vec![
            ("status", "closed-violation"),
            ("notes", "Looked at a co-worker's chart"),
        ],
        vec![
            ("status", "closed-violation"),
            ("sanction", "<i>fired</i>"),
            ("notes", "Looked at a co-worker's chart"),
        ],
        vec![
            ("status", "closed-violation"),
            ("sanction", "written-warning"),
        ],
        vec![
            ("status", "closed-violation"),
            ("sanction", "written-warning"),
            ("notes", long.as_str()),
        ],
        vec![
            ("status", "closed-appropriate"),
            ("sanction", "written-warning"),
            ("notes", "No violation"),
        ],
    ] {
        let (status, _, body) = w.post(&p, &status_path, &fields).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields:?}");
        assert!(!body.contains("<i>") && !body.contains("xxxx"), "{body}");
    }
    let (status, _, _) = w
        .post(
            &q,
            &format!("/console/cases/{case}/note"),
            &[("notes", "Quinn: interviewed the manager")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, location, _) = w
        .post(
            &p,
            &status_path,
            &[
                ("status", "closed-violation"),
                ("sanction", "written-warning"),
                ("notes", "Looked at a co-worker's chart without a reason"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location.ends_with("done=closed"), "{location}");

    // Closed is final.
    let (status, _, _) = w
        .post(
            &p,
            &format!("/console/cases/{case}/note"),
            &[("notes", "one more thing")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, html) = w.get(&p, &format!("/console/cases/{case}")).await;
    assert!(
        html.contains("closed-violation") && html.contains("Written warning"),
        "{html}"
    );
    assert!(html.contains("Quinn: interviewed the manager"), "{html}");
    assert!(html.contains("This case is closed"), "{html}");
    let (_, html) = w.get(&p, "/console").await;
    assert!(html.contains("id=\"open-cases\">0<"), "{html}");
    assert!(html.contains("id=\"open-high\">0<"), "{html}");

    // Every change recorded with the patients of the case's alerts.
    let changes: Vec<_> = w
        .events_on(pia, "PrivacyCase")
        .into_iter()
        .filter(|e| e.3 == "permit" && e.0 != "read" && e.0 != "search")
        .collect();
    assert_eq!(changes.len(), 3, "{changes:?}"); // opened, investigating, closed
    assert!(changes.iter().all(|e| e.2 == vec![patient.as_uuid()]));

    // The notes are sealed at rest; the history is append-only in the database.
    let mut c = w.app.db.conn();
    let raw: Vec<Option<Vec<u8>>> = custodian::db::schema::privacy_case_events::table
        .select(custodian::db::schema::privacy_case_events::note_sealed)
        .load(&mut c)
        .unwrap();
    assert_eq!(raw.len(), 4);
    for note in raw.into_iter().flatten() {
        assert!(!String::from_utf8_lossy(&note).contains("co-worker"));
    }
    for sql in [
        "UPDATE privacy_case_events SET action = 'note'",
        "DELETE FROM privacy_case_events",
        "TRUNCATE privacy_case_events",
        "DELETE FROM privacy_case_alerts",
        "UPDATE privacy_cases SET status = 'open', closed_at = NULL, sanction = NULL",
        "DELETE FROM privacy_cases",
    ] {
        assert!(
            diesel::sql_query(sql).execute(&mut c).is_err(),
            "{sql} was allowed"
        );
    }
}

#[tokio::test]
async fn nobody_works_a_case_about_themselves() {
    let w = World::start().await;
    let pia = w.user("pia", &[Role::PrivacyOfficer], "Pia Privacy");
    let quinn = w.user("quinn", &[Role::PrivacyOfficer], "Quinn Privacy");
    let patient = w.patient("MRN-SELF-1");
    w.raise(&[alert(AlertKind::WorkforcePatient, pia, patient, "s:1")]);
    let id = w.alert_ids()[0].0.to_string();
    let (p, q) = (w.sign_in(pia), w.sign_in(quinn));
    let (status, _, _) = w.post(&p, "/console/cases", &[("alert", &id)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        w.events_on(pia, "PrivacyCase").last().unwrap().4.as_deref(),
        Some("separation-of-duties")
    );
    let (status, location, _) = w.post(&q, "/console/cases", &[("alert", &id)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Nor is the case given to the person it is about.
    let case = case_of(&location);
    let (status, _, _) = w
        .post(
            &q,
            &format!("/console/cases/{case}/assign"),
            &[("owner", &pia.to_string())],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = w
        .post(
            &p,
            "/console/suppressions",
            &[
                ("person", &pia.to_string()),
                ("patient", &patient.to_string()),
                ("reason", "my own mother"),
                (
                    "expires",
                    &(Utc::now() + Duration::days(30))
                        .format("%Y-%m-%d")
                        .to_string(),
                ),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_suppression_stops_matching_alerts_until_revoked() {
    let w = World::start().await;
    let pia = w.user("pia", &[Role::PrivacyOfficer], "Pia Privacy");
    let ada = w.user("ada", &[Role::Admin], "Ada Admin");
    let bob = w.user("bob", &[Role::Clinician], "Dr Bob Guardian");
    let child = w.patient("MRN-CHILD-1");
    let other = w.patient("MRN-OTHER-1");
    let (p, a) = (w.sign_in(pia), w.sign_in(ada));
    let date = |days: i64| {
        (Utc::now() + Duration::days(days))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (bob_s, child_s) = (bob.to_string(), child.to_string());
    let form = |kind: &'static str, reason: String, expires: String| {
        vec![
            ("person", bob_s.clone()),
            ("patient", child_s.clone()),
            ("kind", kind.to_string()),
            ("reason", reason),
            ("expires", expires),
        ]
    };
    let send = |fields: Vec<(&'static str, String)>| {
        let w = &w;
        let p = &p;
        async move {
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            w.post(p, "/console/suppressions", &f).await
        }
    };

    // Bad input: 400 with a fixed message, nothing stored.
    for fields in [
        form("workforce-patient", "Legal guardian".into(), date(-1)),
        form("workforce-patient", "Legal guardian".into(), date(400)),
        form(
            "workforce-patient",
            "Legal guardian".into(),
            "<b>soon</b>".into(),
        ),
        form("workforce-patient", "x".repeat(2001), date(30)),
        form("<b>any</b>", "Legal guardian".into(), date(30)),
    ] {
        let (status, _, body) = send(fields).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!body.contains("<b>") && !body.contains("xxxx"), "{body}");
    }
    // Administrators do not manage suppressions.
    let (status, _, _) = w
        .post(&a, "/console/suppressions", &[("person", bob_s.as_str())])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, location, _) = send(form(
        "workforce-patient",
        "Dr Bob is the legal guardian of this patient".into(),
        date(30),
    ))
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{location}");

    // The suppressed kind for this person and patient is not raised; another kind, or
    // another patient, still is.
    let raised = w.raise(&[
        alert(AlertKind::WorkforcePatient, bob, child, "g:1"),
        alert(AlertKind::RestrictedRecord, bob, child, "g:2"),
        alert(AlertKind::WorkforcePatient, bob, other, "g:3"),
    ]);
    assert_eq!(
        raised,
        vec![AlertKind::RestrictedRecord, AlertKind::WorkforcePatient]
    );

    // Listed with its reason (sealed at rest), and recorded.
    let (status, html) = w.get(&p, "/console/suppressions").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("legal guardian of this patient") && html.contains("active"),
        "{html}"
    );
    let sealed: Vec<Vec<u8>> = custodian::db::schema::alert_suppressions::table
        .select(custodian::db::schema::alert_suppressions::reason_sealed)
        .load(&mut w.app.db.conn())
        .unwrap();
    assert!(!String::from_utf8_lossy(&sealed[0]).contains("guardian"));
    let recorded = w.events_on(pia, "AlertSuppression");
    assert!(
        recorded
            .iter()
            .any(|e| e.0 == "create" && e.3 == "permit" && e.2 == vec![child.as_uuid()]),
        "{recorded:?}"
    );

    // Revoked: the next such alert is raised again.
    let id: Uuid = custodian::db::schema::alert_suppressions::table
        .select(custodian::db::schema::alert_suppressions::id)
        .first(&mut w.app.db.conn())
        .unwrap();
    let (status, _, _) = w
        .post(&p, &format!("/console/suppressions/{id}/revoke"), &[])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = w
        .post(&p, &format!("/console/suppressions/{id}/revoke"), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        w.raise(&[alert(AlertKind::WorkforcePatient, bob, child, "g:4")]),
        vec![AlertKind::WorkforcePatient]
    );
    // A revocation is final and a suppression is never deleted.
    let mut c = w.app.db.conn();
    for sql in [
        "UPDATE alert_suppressions SET revoked_at = NULL, revoked_by = NULL",
        "UPDATE alert_suppressions SET expires_at = expires_at + interval '1 day'",
        "DELETE FROM alert_suppressions",
    ] {
        assert!(diesel::sql_query(sql).execute(&mut c).is_err(), "{sql}");
    }
}

#[tokio::test]
async fn the_alert_list_pages_by_keyset() {
    let w = World::start().await;
    let pia = w.user("pia", &[Role::PrivacyOfficer], "Pia Privacy");
    let bob = w.user("bob", &[Role::Clinician], "Dr Bob Busy");
    let patient = w.patient("MRN-PAGE-1");
    let many: Vec<NewAlert> = (0..52)
        .map(|i| {
            let mut a = alert(AlertKind::BulkAccess, bob, patient, &format!("p:{i}"));
            a.created_at = Utc::now() - Duration::minutes(i);
            a
        })
        .collect();
    assert_eq!(w.raise(&many).len(), 52);
    let p = w.sign_in(pia);
    let (_, first) = w.get(&p, "/console/alerts").await;
    assert_eq!(first.matches("class=\"alert ").count(), 50);
    let older = first
        .split("href=\"")
        .find_map(|s| {
            s.starts_with("/console/alerts?before=")
                .then(|| s.split('"').next().unwrap().replace("&amp;", "&"))
        })
        .expect("an older-page link");
    let (status, second) = w.get(&p, &older).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second.matches("class=\"alert ").count(), 2, "{second}");
    assert!(second.contains("id=\"newest\""));
    // Pages do not overlap.
    for (id, _) in w.alert_ids().iter().take(50) {
        assert!(!second.contains(&id.to_string()));
    }
}

#[tokio::test]
async fn case_notes_and_suppression_reasons_survive_a_key_rotation() {
    use custodian::crypto::rotation::{self, RotateOptions};
    let w = World::start().await;
    let pia = w.user("pia", &[Role::PrivacyOfficer], "Pia Privacy");
    let bob = w.user("bob", &[Role::Clinician], "Dr Bob");
    let patient = w.patient("MRN-ROT-1");
    w.raise(&[alert(AlertKind::WorkforcePatient, bob, patient, "r:1")]);
    let id = w.alert_ids()[0].0.to_string();
    let p = w.sign_in(pia);
    let (_, location, _) = w.post(&p, "/console/cases", &[("alert", &id)]).await;
    let case = case_of(&location);
    let (status, _, _) = w
        .post(
            &p,
            &format!("/console/cases/{case}/note"),
            &[("notes", "Sealed before the rotation")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let expires = (Utc::now() + Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    let (status, _, _) = w
        .post(
            &p,
            "/console/suppressions",
            &[
                ("person", &bob.to_string()),
                ("patient", &patient.to_string()),
                ("reason", "Guardian, sealed before the rotation"),
                ("expires", &expires),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let report = rotation::rotate_data_keys(
        &mut w.app.db.conn(),
        &w.keyring,
        RotateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        report.complete && report.rows_reencrypted >= 4,
        "{report:?}"
    );
    // Read back with the rotated keyring (the running app learns new versions on its own
    // schedule): the triggers let rotation re-seal, and the places (table, column, row)
    // match.
    let mut c = w.app.db.conn();
    let case: Uuid = case.parse().unwrap();
    let notes: Vec<String> = custodian::db::cases::history(&mut c, &w.keyring, case)
        .unwrap()
        .into_iter()
        .filter_map(|h| h.note)
        .collect();
    assert_eq!(notes, vec!["Sealed before the rotation".to_string()]);
    let listed = custodian::db::suppressions::list(&mut c, &w.keyring, 10).unwrap();
    assert_eq!(listed[0].reason, "Guardian, sealed before the rotation");
}

/// One alert's page (`/console/alerts/{id}`, where webhook payloads link): linked from
/// the list, with the explanation, figures, every evidence link and the case it is in;
/// the MRN for privacy officers only; every view recorded as a read of the alert naming
/// the patient identified; a bad or unknown id a fixed 404 without echo.
#[tokio::test]
async fn one_alert_has_its_own_page_linked_from_the_list_and_recorded() {
    let w = World::start().await;
    let pia = w.user("pia", &[Role::PrivacyOfficer], "Pia Privacy");
    let ada = w.user("ada", &[Role::Admin], "Ada Admin");
    let bob = w.user("bob", &[Role::Clinician], "Dr Bob Snoop");
    let patient = w.patient("MRN-ONE-1");
    let mut a = alert(AlertKind::RestrictedRecord, bob, patient, "one:1");
    a.figures = vec![7];
    a.evidence_seqs = (1..=12).collect();
    w.raise(&[a]);
    let id = w.alert_ids()[0].0;
    let (p, ad) = (w.sign_in(pia), w.sign_in(ada));

    let (_, list) = w.get(&p, "/console/alerts").await;
    assert!(
        list.contains(&format!("href=\"/console/alerts/{id}\"")),
        "{list}"
    );

    let path = format!("/console/alerts/{id}");
    let (status, html) = w.get(&p, &path).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("Restricted record outside the care team"),
        "{html}"
    );
    assert!(
        html.contains("Dr Bob Snoop") && html.contains("MRN MRN-ONE-1"),
        "{html}"
    );
    assert!(html.contains("class=\"figure\">7<"), "{html}");
    // All twelve evidence events (the list shows ten).
    assert!(html.contains("/console/audit/12\""), "{html}");
    assert!(html.contains("id=\"no-case\""), "{html}");
    let reads: Vec<_> = w
        .events_on(pia, "Alert")
        .into_iter()
        .filter(|e| e.0 == "read")
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].1, Some(id));
    assert_eq!(reads[0].2, vec![patient.as_uuid()]);
    assert_eq!(reads[0].3, "permit");

    // An administrator sees it without the MRN, and the read names no patient.
    let (status, html) = w.get(&ad, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("MRN-ONE-1"), "{html}");
    let reads: Vec<_> = w
        .events_on(ada, "Alert")
        .into_iter()
        .filter(|e| e.0 == "read")
        .collect();
    assert!(reads[0].2.is_empty(), "{reads:?}");

    // In a case: the page links it.
    let (status, location, _) = w
        .post(&p, "/console/cases", &[("alert", &id.to_string())])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let case = case_of(&location);
    let (_, html) = w.get(&p, &path).await;
    assert!(html.contains(&format!("/console/cases/{case}")), "{html}");

    // Bad and unknown ids: a fixed 404, recorded as an error, the input not echoed.
    for bad in [
        "/console/alerts/bogus-alert-id".to_string(),
        format!("/console/alerts/{}", Uuid::new_v4()),
    ] {
        let (status, body) = w.get(&p, &bad).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        assert!(body.contains("The alert was not found."), "{body}");
        assert!(!body.contains("bogus"), "{body}");
    }
    let errors = w
        .events_on(pia, "Alert")
        .into_iter()
        .filter(|e| e.0 == "read" && e.3 == "error")
        .count();
    assert_eq!(errors, 2);
    // A person without a console role does not get the page (sent to the no-access page).
    let carl = w.user("carl", &[Role::Clinician], "Carl Clinician");
    let (status, body) = w.get(&w.sign_in(carl), &path).await;
    assert_ne!(status, StatusCode::OK);
    assert!(!body.contains("Dr Bob Snoop"), "{body}");
}
