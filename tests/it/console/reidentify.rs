//! Re-identification of export pseudonyms in the console (issue 17) over real HTTPS
//! against PostgreSQL: refused without the configured role, without a code entered with
//! the form, without a justification of 20+ characters (fixed 4xx messages, nothing
//! echoed); a success shows the patient once, is audited with high severity and raises the
//! `reidentification` alert with its sealed justification row; pseudonyms of another key,
//! unknown ones and another key id name nobody; and the justification reaches neither
//! the logs of `custodian serve` nor any audit or alert row.

use crate::support::authenticator;
use crate::support::idp::{Provider, Signer};
use crate::support::{TestApp, random_key, test_cert, test_keys};
use custodian::crypto::{ExportKey, Keyring};
use custodian::db::patients::{NewPatient, insert_patient};
use custodian::db::schema::{console_sessions, console_totp};
use custodian::db::users::{self, UserKind};
use custodian::domain::FacilityId;
use custodian::domain::clock::Clock;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use sha2::Digest;
use std::sync::Arc;
use uuid::Uuid;

const SECRET: &[u8] = b"reidentify-test-secret-20bytes";
const JUSTIFICATION: &str = "Zzjustify court order 2026-CV-4411 names this record";

fn export_key_of(b64: &str) -> ExportKey {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    ExportKey::new(zeroize::Zeroizing::new(bytes.try_into().unwrap()))
}

/// What a test needs of a running Custodian: where it answers, its database and keys.
struct Site {
    base: String,
    db_url: String,
    keyring: Keyring,
    issuer: String,
    facility: FacilityId,
}

struct Browser {
    client: reqwest::Client,
    /// The session's form token (an accepted code renews the session and its token).
    csrf: std::cell::RefCell<String>,
}

impl Site {
    fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.db_url).unwrap()
    }

    fn user(&self, sub: &str, roles: &[Role]) -> Uuid {
        let mut c = self.conn();
        let u = users::user_for(&mut c, &self.issuer, sub, UserKind::Person).unwrap();
        for r in roles {
            users::grant_role(&mut c, u.id, *r, "test setup", None).unwrap();
        }
        users::set_facility(&mut c, u.id, Some(self.facility)).unwrap();
        let id = Uuid::new_v4();
        let sealer = self.keyring.sealer_for_write(&mut c).unwrap();
        let place = custodian::crypto::columns::console_totp::SECRET.at(id);
        let sealed = sealer.seal(&place, SECRET).unwrap();
        diesel::insert_into(console_totp::table)
            .values((
                console_totp::id.eq(id),
                console_totp::user_id.eq(u.id.as_uuid()),
                console_totp::secret_sealed.eq(sealed),
                console_totp::key_version.eq(sealer.version()),
                console_totp::confirmed_at.eq(Some(chrono::Utc::now())),
            ))
            .execute(&mut c)
            .unwrap();
        u.id.as_uuid()
    }

    fn patient(&self, mrn: &str, given: &str, family: &str) -> Uuid {
        let new = NewPatient {
            facility_id: self.facility,
            mrn: mrn.into(),
            ssn: None,
            family: family.into(),
            given: given.into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1961, 3, 4).unwrap(),
            gender: "female".into(),
            telecom: None,
            address: None,
        };
        insert_patient(&mut self.conn(), &self.keyring, &new)
            .unwrap()
            .id
            .as_uuid()
    }

    /// A signed-in browser (session active, sign-in TOTP just now) for `user`.
    fn sign_in(&self, user: Uuid) -> Browser {
        let session_id = custodian::console::session::random_token();
        let csrf = custodian::console::session::random_token();
        diesel::insert_into(console_sessions::table)
            .values((
                console_sessions::id_hash.eq(sha2::Sha256::digest(session_id.as_bytes()).to_vec()),
                console_sessions::stage.eq("active"),
                console_sessions::user_id.eq(Some(user)),
                console_sessions::csrf_token.eq(&csrf),
                console_sessions::totp_at.eq(Some(chrono::Utc::now())),
            ))
            .execute(&mut self.conn())
            .unwrap();
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let url: url::Url = format!("{}/", self.base).parse().unwrap();
        jar.add_cookie_str(
            &format!("__Host-custodian={session_id}; Secure; HttpOnly; Path=/"),
            &url,
        );
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes()).unwrap(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar)
            .build()
            .unwrap();
        Browser {
            client,
            csrf: std::cell::RefCell::new(csrf),
        }
    }

    /// POSTs the re-identification form (`None` fields are left out).
    async fn reidentify(
        &self,
        b: &Browser,
        pseudonym: Option<&str>,
        key_id: Option<&str>,
        justification: Option<&str>,
        code: Option<&str>,
    ) -> (StatusCode, String) {
        let csrf = b.csrf.borrow().clone();
        let mut fields = vec![("csrf_token", csrf.as_str())];
        for (k, v) in [
            ("pseudonym", pseudonym),
            ("key_id", key_id),
            ("justification", justification),
            ("code", code),
        ] {
            if let Some(v) = v {
                fields.push((k, v));
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let origin = self.base.clone();
        let res = b
            .client
            .post(format!("{}/console/reidentify", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body = res.text().await.unwrap();
        // The form token of the (possibly renewed) session, from the form page.
        let page = b
            .client
            .get(format!("{}/console/reidentify", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(token) = page
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
        {
            *b.csrf.borrow_mut() = token.to_string();
        }
        (status, body)
    }

    /// (action, outcome, deny reason, resource id, patient ids) of `actor`'s re-identify events.
    #[allow(clippy::type_complexity)]
    fn reidentify_events(
        &self,
        actor: Uuid,
    ) -> Vec<(String, Option<String>, Option<Uuid>, Vec<Uuid>)> {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .filter(ae::actor_user_id.eq(actor))
            .filter(ae::action.eq("reidentify"))
            .order(ae::seq)
            .select((
                ae::outcome,
                ae::deny_reason,
                ae::resource_id,
                ae::patient_ids,
            ))
            .load(&mut self.conn())
            .unwrap()
    }

    /// (kind, severity, user, patient) of every alert.
    #[allow(clippy::type_complexity)]
    fn alerts(&self) -> Vec<(String, String, Option<Uuid>, Option<Uuid>)> {
        use custodian::db::schema::alerts as a;
        a::table
            .order(a::created_at)
            .select((a::kind, a::severity, a::user_id, a::patient_id))
            .load(&mut self.conn())
            .unwrap()
    }

    /// How many rows of the tables the act writes contain `needle` in any column as
    /// text (the audit trail, the alerts, the re-identification rows).
    fn rows_containing(&self, needle: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let sql = "SELECT ((SELECT count(*) FROM audit_events t WHERE t::text ILIKE $1) + \
                   (SELECT count(*) FROM alerts t WHERE t::text ILIKE $1) + \
                   (SELECT count(*) FROM reidentifications t WHERE t::text ILIKE $1) + \
                   (SELECT count(*) FROM reidentifications t WHERE encode(t.justification_sealed, 'escape') ILIKE $1))::int8 AS n";
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>(format!("%{needle}%"))
            .get_result::<N>(&mut self.conn())
            .unwrap()
            .n
    }
}

fn pseudonym(key: &ExportKey, patient: Uuid) -> String {
    key.pseudonym("Patient", &patient.hyphenated().to_string())
}

/// An in-process app on a manual clock with an export key and the console, and the key.
async fn start(extra: &[(&str, &str)]) -> (TestApp, Provider, Site, ExportKey) {
    let signer = Signer::es256("k1");
    let idp = Provider::start(&[&signer]).await;
    let issuer = idp.issuer();
    let export_key = random_key();
    let mut builder = TestApp::builder()
        .manual_clock()
        .set("auth.issuer", issuer.clone())
        .set("auth.audience", "custodian-test")
        .set("console.issuer", issuer.clone())
        .set("console.client_id", "custodian-console")
        .set("console.client_secret", "test-secret")
        .set(
            "console.redirect_url",
            "https://localhost:8443/console/callback",
        )
        .set("crypto.export_key", export_key.clone());
    for (k, v) in extra {
        builder = builder.set(k, *v);
    }
    let db = crate::support::TestDb::create();
    let config = builder.config(&db.url);
    let app = builder.database(db).spawn().await;
    let keyring =
        custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).expect("keyring");
    let facility =
        custodian::db::phi::insert_facility(&mut app.db.conn(), "General Hospital").unwrap();
    let site = Site {
        base: format!("https://localhost:{}", app.https.port()),
        db_url: app.db.url.clone(),
        keyring,
        issuer,
        facility,
    };
    (app, idp, site, export_key_of(&export_key))
}

/// The current code by the app's clock; then the clock moves to the next time step, so
/// that the next code is a new one (an accepted code is never accepted again).
fn next_code(app: &TestApp) -> String {
    let now = u64::try_from(app.clock().now().timestamp()).unwrap();
    app.clock().advance(std::time::Duration::from_secs(30));
    authenticator::code_at(SECRET, now)
}

fn code_now(app: &TestApp) -> String {
    authenticator::code_at(
        SECRET,
        u64::try_from(app.clock().now().timestamp()).unwrap(),
    )
}

#[tokio::test]
async fn reidentification_needs_the_role_a_code_and_a_justification_and_is_audited_and_alerted() {
    let (app, _idp, site, key) = start(&[]).await;
    let patient = site.patient("MRN-REID-1", "Zzgiven", "Zzfamily");
    let _other = site.patient("MRN-REID-2", "Other", "Person");
    let admin = site.user("admin-reid", &[Role::Admin]);
    let po = site.user("po-reid", &[Role::PrivacyOfficer]);
    let p = pseudonym(&key, patient);
    let key_id = key.key_id();

    // The form is shown to the role, and only explained to others.
    let b_admin = site.sign_in(admin);
    let page = b_admin
        .client
        .get(format!("{}/console/reidentify", site.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("reid-not-allowed") && !page.contains("id=\"reidentify\""));

    // Without the role: 403 with a fixed message, whatever else is right; no code spent.
    let code = code_now(&app);
    let (status, body) = site
        .reidentify(
            &b_admin,
            Some(&p),
            Some(&key_id),
            Some(JUSTIFICATION),
            Some(&code),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("reidentify.role"), "{body}");
    assert!(!body.contains("Zzjustify") && !body.contains(&p), "{body}");
    assert_eq!(
        site.reidentify_events(admin),
        vec![(
            "deny".to_string(),
            Some("missing-role".to_string()),
            None,
            vec![]
        )]
    );

    let b = site.sign_in(po);
    let page = b
        .client
        .get(format!("{}/console/reidentify", site.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"reidentify\"") && page.contains(&key_id),
        "{page}"
    );

    // Without a code (the sign-in a moment ago does not count), and with a wrong one.
    for code in [None, Some("000000")] {
        let (status, body) = site
            .reidentify(&b, Some(&p), Some(&key_id), Some(JUSTIFICATION), code)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("authenticator app"), "{body}");
        assert!(!body.contains("Zzjustify") && !body.contains(&p), "{body}");
    }

    // Without a justification, or a short one (19 characters), or only spaces: 400, fixed.
    let short = "Zzjustify short 19c";
    assert_eq!(short.chars().count(), 19);
    for justification in [None, Some(short), Some("                         ")] {
        let (status, body) = site
            .reidentify(
                &b,
                Some(&p),
                Some(&key_id),
                justification,
                Some(&code_now(&app)),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.contains("justification") && body.contains("20 to 2000"),
            "{body}"
        );
        assert!(!body.contains("Zzjustify") && !body.contains(&p), "{body}");
    }
    let refused = site.reidentify_events(po);
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(
        refused[..2]
            .iter()
            .all(|e| e.1.as_deref() == Some("step-up-required"))
    );
    assert!(
        refused[2..]
            .iter()
            .all(|e| e.0 == "error" && e.3.is_empty())
    );
    assert!(site.alerts().is_empty());

    // Everything right: the patient, once; audited (high severity) and alerted.
    let (status, body) = site
        .reidentify(
            &b,
            Some(&p),
            Some(&key_id),
            Some(JUSTIFICATION),
            Some(&next_code(&app)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("MRN-REID-1") && body.contains("Zzgiven Zzfamily"),
        "{body}"
    );
    assert!(body.contains(&patient.to_string()), "{body}");
    assert!(!body.contains("MRN-REID-2"), "{body}");
    let events = site.reidentify_events(po);
    assert_eq!(
        events.last().unwrap(),
        &("permit".to_string(), None, Some(patient), vec![patient])
    );
    assert!(
        custodian::audit::AuditAction::Reidentify.severity()
            == custodian::audit::event::Severity::High
    );
    assert_eq!(
        site.alerts(),
        vec![(
            "reidentification".to_string(),
            "high".to_string(),
            Some(po),
            Some(patient)
        )]
    );
    // The justification is kept sealed with the record, and opens to what was typed.
    let mut c = site.conn();
    let kept = custodian::db::reidentifications::recent(&mut c, &site.keyring, 10).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].justification.expose(), JUSTIFICATION);
    assert_eq!(kept[0].patient_id.map(|p| p.as_uuid()), Some(patient));
    assert_eq!(kept[0].export_key_id, key_id);
    // Nothing of it (nor of the refused ones) is in clear text in the trail, the alerts
    // or the re-identification rows.
    assert_eq!(site.rows_containing("Zzjustify"), 0);
    assert_eq!(site.rows_containing(&p), 0);
}

#[tokio::test]
async fn a_pseudonym_of_another_key_an_unknown_one_or_another_key_id_names_nobody() {
    let (app, _idp, site, key) = start(&[]).await;
    let patient = site.patient("MRN-REID-3", "Third", "Patient");
    let po = site.user("po-reid-2", &[Role::PrivacyOfficer]);
    let b = site.sign_in(po);
    let other_key = export_key_of(&random_key());
    let unknown = pseudonym(&key, Uuid::new_v4());
    let cases = [
        // The same patient under another key, asked under ours.
        (pseudonym(&other_key, patient), key.key_id()),
        // A pseudonym no patient has.
        (unknown, key.key_id()),
        // Our pseudonym, asked under another key's id.
        (pseudonym(&key, patient), other_key.key_id()),
    ];
    for (p, key_id) in &cases {
        let (status, body) = site
            .reidentify(
                &b,
                Some(p),
                Some(key_id),
                Some(JUSTIFICATION),
                Some(&next_code(&app)),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(
            body.contains("No patient has this pseudonym under that export key."),
            "{body}"
        );
        assert!(
            !body.contains(p.as_str()) && !body.contains("MRN-REID-3"),
            "{body}"
        );
    }
    // Each attempt is recorded (naming nobody); no alert.
    let events = site.reidentify_events(po);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.0 == "permit" && e.3.is_empty()));
    assert!(site.alerts().is_empty());
    // Malformed input is refused before any code is spent, without an echo.
    for (p, key_id) in [
        ("Zzbadpseudonym", key.key_id()),
        (&pseudonym(&key, patient)[..63], key.key_id()),
        (&pseudonym(&key, patient), "Zzbadkeyid".to_string()),
    ] {
        let (status, body) = site
            .reidentify(
                &b,
                Some(p),
                Some(&key_id),
                Some(JUSTIFICATION),
                Some("123456"),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.contains("Zzbad") && !body.contains(p), "{body}");
    }
    // The right pseudonym under the right key still resolves.
    let (status, body) = site
        .reidentify(
            &b,
            Some(&format!("Patient/{}", pseudonym(&key, patient))),
            Some(&key.key_id()),
            Some(JUSTIFICATION),
            Some(&next_code(&app)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("MRN-REID-3"), "{body}");
}

#[tokio::test]
async fn only_the_configured_role_reidentifies() {
    let (app, _idp, site, key) = start(&[("reidentify.role", "admin")]).await;
    let patient = site.patient("MRN-REID-4", "Fourth", "Patient");
    let po = site.user("po-reid-3", &[Role::PrivacyOfficer]);
    let admin = site.user("admin-reid-3", &[Role::Admin]);
    let p = pseudonym(&key, patient);
    let (status, _) = site
        .reidentify(
            &site.sign_in(po),
            Some(&p),
            Some(&key.key_id()),
            Some(JUSTIFICATION),
            Some(&code_now(&app)),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = site
        .reidentify(
            &site.sign_in(admin),
            Some(&p),
            Some(&key.key_id()),
            Some(JUSTIFICATION),
            Some(&next_code(&app)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("MRN-REID-4"), "{body}");
}

/// `custodian serve` with debug logs: the justification (and the pseudonym, which links
/// to a patient) of a successful and of refused re-identifications reach no log line.
#[tokio::test]
async fn the_justification_never_reaches_the_logs() {
    let signer = Signer::es256("k1");
    let idp = Provider::start(&[&signer]).await;
    let issuer = idp.issuer();
    let db = crate::support::TestDb::create();
    let export_b64 = random_key();
    let served = crate::support::serve::Served::start_with(
        &db.url,
        &issuer,
        &[
            ("CUSTODIAN_CONSOLE_ISSUER", issuer.as_str()),
            ("CUSTODIAN_CONSOLE_CLIENT_ID", "custodian-console"),
            ("CUSTODIAN_CONSOLE_CLIENT_SECRET", "test-secret"),
            (
                "CUSTODIAN_CONSOLE_REDIRECT_URL",
                "https://localhost:8443/console/callback",
            ),
            ("CUSTODIAN_CRYPTO_EXPORT_KEY", export_b64.as_str()),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    let crypto = custodian::crypto::config::CryptoConfig {
        kek: Some(custodian::secret::Secret::new(test_keys().kek.clone())),
        blind_index_key: Some(custodian::secret::Secret::new(
            test_keys().blind_index_key.clone(),
        )),
        ..Default::default()
    };
    let keyring = custodian::app::keys::load_keyring(&crypto, &db.url, 2).expect("keyring");
    let facility = custodian::db::phi::insert_facility(&mut db.conn(), "Log Hospital").unwrap();
    let site = Site {
        base: format!("https://localhost:{}", served.port),
        db_url: db.url.clone(),
        keyring,
        issuer,
        facility,
    };
    let key = export_key_of(&export_b64);
    let patient = site.patient("MRN-REID-LOG", "Zzloggiven", "Zzlogfamily");
    let po = site.user("po-reid-log", &[Role::PrivacyOfficer]);
    let b = site.sign_in(po);
    let p = pseudonym(&key, patient);
    let now = || authenticator::now_secs();
    // Refused: no code; a short justification.
    let (status, _) = site
        .reidentify(&b, Some(&p), Some(&key.key_id()), Some(JUSTIFICATION), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = site
        .reidentify(
            &b,
            Some(&p),
            Some(&key.key_id()),
            Some("Zzjustify short"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Accepted (the code of this time step, or of the next one if this one is nearly over).
    let mut at = now();
    if at % 30 > 25 {
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        at = now();
    }
    let (status, body) = site
        .reidentify(
            &b,
            Some(&p),
            Some(&key.key_id()),
            Some(JUSTIFICATION),
            Some(&authenticator::code_at(SECRET, at)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("MRN-REID-LOG"));
    assert_eq!(site.alerts().len(), 1);
    let log = served.log();
    assert!(
        log.contains("console/reidentify"),
        "the log has the requests"
    );
    for canary in ["Zzjustify", p.as_str(), "MRN-REID-LOG", "Zzloggiven"] {
        assert!(!log.contains(canary), "{canary} in the log:\n{log}");
    }
    assert_eq!(site.rows_containing("Zzjustify"), 0);
}
