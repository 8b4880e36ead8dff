//! Audit review (issue 14) over real HTTPS against PostgreSQL: the console's audit search
//! (each filter alone and combined, keyset paging while events arrive), the event page,
//! the per-patient access report (page and CSV) and the rule that every review page view
//! is itself recorded. Events are appended through the real chain store
//! (`audit::store::append_batch`), at fixed times in January 2026 so that the review's own
//! events (recorded now) never fall inside the searched period.

use crate::support::{TestApp, idp::Provider, idp::Signer, test_cert};
use chrono::{DateTime, TimeZone, Utc};
use custodian::audit::store::{CheckpointPolicy, append_batch};
use custodian::audit::{
    Actor, AuditAction, AuditEvent, AuthMethod, DenyReason, Outcome, PurposeOfUse, ResourceType,
    RoleCode,
};
use custodian::crypto::Keyring;
use custodian::db::patients::{NewPatient, insert_patient};
use custodian::db::schema::{console_sessions, users as users_t};
use custodian::db::users::{self, UserKind};
use custodian::domain::{FacilityId, PatientId, UserId};
use custodian::policy::Role;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::StatusCode;
use sha2::Digest;
use std::sync::Arc;
use uuid::Uuid;

const PERIOD: &str = "from=2026-01-01&to=2026-01-31";

struct Review {
    app: TestApp,
    _idp: Provider,
    issuer: String,
    keyring: Keyring,
    facility: FacilityId,
    config: custodian::config::Config,
}

struct Browser {
    client: reqwest::Client,
    csrf: String,
    session_id: String,
}

impl Review {
    async fn start() -> Review {
        let signer = Signer::es256("k1");
        let idp = Provider::start(&[&signer]).await;
        let issuer = idp.issuer();
        let builder = TestApp::builder()
            .set("auth.issuer", issuer.clone())
            .set("auth.audience", "custodian-test")
            .set("console.issuer", issuer.clone())
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
        Review {
            app,
            _idp: idp,
            issuer,
            keyring,
            facility,
            config,
        }
    }

    fn user(&self, sub: &str, roles: &[Role], display: &str) -> Uuid {
        let mut c = self.app.db.conn();
        let u = users::user_for(&mut c, &self.issuer, sub, UserKind::Person).unwrap();
        for r in roles {
            users::grant_role(&mut c, u.id, *r, "test setup", None).unwrap();
        }
        users::set_facility(&mut c, u.id, Some(self.facility)).unwrap();
        diesel::update(users_t::table.find(u.id))
            .set(users_t::display_name.eq(Some(display)))
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
            birth_date: chrono::NaiveDate::from_ymd_opt(1970, 1, 2).unwrap(),
            gender: "female".into(),
            telecom: None,
            address: None,
        };
        insert_patient(&mut self.app.db.conn(), &self.keyring, &new)
            .unwrap()
            .id
            .as_uuid()
    }

    /// A fully signed-in console browser for `user` (session at stage active).
    fn sign_in(&self, user: Uuid) -> Browser {
        let session_id = custodian::console::session::random_token();
        let csrf = custodian::console::session::random_token();
        diesel::insert_into(console_sessions::table)
            .values((
                console_sessions::id_hash.eq(sha2::Sha256::digest(session_id.as_bytes()).to_vec()),
                console_sessions::stage.eq("active"),
                console_sessions::user_id.eq(Some(user)),
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
            csrf,
            session_id,
        }
    }

    async fn get(&self, b: &Browser, path: &str) -> reqwest::Response {
        b.client.get(self.app.url(path)).send().await.unwrap()
    }

    async fn page(&self, b: &Browser, path: &str) -> String {
        let res = self.get(b, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        res.text().await.unwrap()
    }

    async fn post(&self, b: &Browser, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut all = vec![("csrf_token", b.csrf.as_str())];
        all.extend_from_slice(fields);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(all)
            .finish();
        b.client
            .post(self.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "origin",
                format!("https://localhost:{}", self.app.https.port()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Appends `events` to the chain the way the writer does.
    fn append(&self, events: &[AuditEvent]) -> Vec<i64> {
        let key = self.config.audit.chain_key().unwrap();
        let signer = self.config.audit.signing_key().unwrap();
        let policy = CheckpointPolicy {
            every_events: 1_000_000,
            every_secs: 1_000_000,
        };
        let done = append_batch(&mut self.app.db.conn(), &key, &signer, policy, events).unwrap();
        (done.first_seq..=done.last_seq).collect()
    }

    /// (action, resource type, resource id, patient ids, purpose, outcome, deny reason)
    /// of every event of `actor`.
    #[allow(clippy::type_complexity)]
    fn events_of(
        &self,
        actor: Uuid,
    ) -> Vec<(
        String,
        Option<String>,
        Option<Uuid>,
        Vec<Uuid>,
        Option<String>,
        String,
        Option<String>,
    )> {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .filter(ae::actor_user_id.eq(actor))
            .order(ae::seq)
            .select((
                ae::action,
                ae::resource_type,
                ae::resource_id,
                ae::patient_ids,
                ae::purpose_of_use,
                ae::outcome,
                ae::deny_reason,
            ))
            .load(&mut self.app.db.conn())
            .unwrap()
    }
}

/// One seeded event (fields the filters look at).
#[derive(Clone)]
struct Seed {
    actor: Uuid,
    role: &'static str,
    action: AuditAction,
    kind: ResourceType,
    outcome: Outcome,
    patients: Vec<Uuid>,
    purpose: Option<PurposeOfUse>,
    grant: Option<Uuid>,
    ip: &'static str,
    at: DateTime<Utc>,
}

impl Seed {
    fn event(&self) -> AuditEvent {
        let mut e = AuditEvent::new(
            Actor::user(
                UserId(self.actor),
                vec![RoleCode::parse(self.role).unwrap()],
                AuthMethod::Bearer,
            ),
            self.action,
            self.outcome,
        );
        e.occurred_at = self.at;
        e.resource_type = Some(self.kind);
        e.resource_id = self.patients.first().copied();
        e.patient_ids = self.patients.iter().map(|p| PatientId(*p)).collect();
        e.purpose_of_use = self.purpose;
        e.break_glass_grant_id = self.grant;
        e.source_ip = Some(self.ip.parse().unwrap());
        e
    }
}

fn jan(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap()
}

/// The sequence numbers a search page lists, in page order.
fn seqs(html: &str) -> Vec<i64> {
    html.split("class=\"seq\">")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().parse().unwrap())
        .collect()
}

/// The href of the link with this id.
fn link(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let before = &html[..at];
    let href = before.rfind("href=\"")?;
    let rest = &before[href + 6..];
    Some(
        rest.split('"')
            .next()?
            .replace("&amp;", "&")
            .replace("&#38;", "&"),
    )
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

struct World {
    r: Review,
    officer: Uuid,
    admin: Uuid,
    nurse: Uuid,
    doctor: Uuid,
    p1: Uuid,
    p2: Uuid,
    grant: Uuid,
    seeds: Vec<(i64, Seed)>,
}

async fn world() -> World {
    let r = Review::start().await;
    let officer = r.user("po", &[Role::PrivacyOfficer], "Pat Privacy");
    let admin = r.user("root", &[Role::Admin], "Ada Admin");
    let nurse = r.user("nurse", &[Role::Clinician], "Nora Nurse");
    let doctor = r.user("doc", &[Role::Clinician], "=HYPERLINK(\"http://x\")");
    let p1 = r.patient("MRN-1001", "Alice", "Anders");
    let p2 = r.patient("MRN-2002", "Bob", "Berg");
    let grant = Uuid::new_v4();
    let base = Seed {
        actor: nurse,
        role: "clinician",
        action: AuditAction::Read,
        kind: ResourceType::Patient,
        outcome: Outcome::Permit,
        patients: vec![p1],
        purpose: Some(PurposeOfUse::Treatment),
        grant: None,
        ip: "10.0.0.1",
        at: jan(5, 9),
    };
    let seeds = vec![
        base.clone(),
        Seed {
            action: AuditAction::Search,
            patients: vec![p1, p2],
            at: jan(6, 10),
            ..base.clone()
        },
        Seed {
            actor: doctor,
            patients: vec![p2],
            ip: "10.0.0.2",
            at: jan(7, 11),
            ..base.clone()
        },
        Seed {
            actor: doctor,
            outcome: Outcome::Deny(DenyReason::NoRelationship),
            at: jan(8, 12),
            ..base.clone()
        },
        Seed {
            actor: doctor,
            kind: ResourceType::Observation,
            action: AuditAction::Create,
            purpose: Some(PurposeOfUse::EmergencyTreatment),
            grant: Some(grant),
            at: jan(9, 13),
            ..base.clone()
        },
        Seed {
            outcome: Outcome::Error,
            kind: ResourceType::Claim,
            purpose: Some(PurposeOfUse::Payment),
            ip: "2001:db8::7",
            at: jan(20, 14),
            ..base.clone()
        },
        // Outside the period (December 2025): found only without the time range.
        Seed {
            at: Utc.with_ymd_and_hms(2025, 12, 30, 8, 0, 0).unwrap(),
            ..base.clone()
        },
    ];
    let seqs = r.append(&seeds.iter().map(Seed::event).collect::<Vec<_>>());
    let seeds = seqs.into_iter().zip(seeds).collect();
    World {
        r,
        officer,
        admin,
        nurse,
        doctor,
        p1,
        p2,
        grant,
        seeds,
    }
}

impl World {
    /// The seeded events in the period matching `pred`, newest first.
    fn expect(&self, pred: impl Fn(&Seed) -> bool) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .seeds
            .iter()
            .filter(|(_, s)| s.at >= jan(1, 0) && pred(s))
            .map(|(seq, _)| *seq)
            .collect();
        v.reverse();
        v
    }
}

#[tokio::test]
async fn audit_search_filters_each_alone_and_combined() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let (nurse, doctor, p1, p2, grant) = (w.nurse, w.doctor, w.p1, w.p2, w.grant);
    type Pred = Box<dyn Fn(&Seed) -> bool>;
    let cases: Vec<(String, Pred)> = vec![
        (String::new(), Box::new(|_| true)),
        (
            format!("person={nurse}"),
            Box::new(move |s| s.actor == nurse),
        ),
        (
            format!("person={doctor}"),
            Box::new(move |s| s.actor == doctor),
        ),
        (
            format!("patient={p2}"),
            Box::new(move |s| s.patients.contains(&p2)),
        ),
        (
            "action=search".into(),
            Box::new(|s| s.action == AuditAction::Search),
        ),
        (
            "action=create".into(),
            Box::new(|s| s.action == AuditAction::Create),
        ),
        (
            "resource=Observation".into(),
            Box::new(|s| s.kind == ResourceType::Observation),
        ),
        (
            "outcome=deny".into(),
            Box::new(|s| matches!(s.outcome, Outcome::Deny(_))),
        ),
        (
            "outcome=error".into(),
            Box::new(|s| s.outcome == Outcome::Error),
        ),
        (
            "reason=no-relationship".into(),
            Box::new(|s| s.outcome == Outcome::Deny(DenyReason::NoRelationship)),
        ),
        ("reason=missing-role".into(), Box::new(|_| false)),
        (
            format!("grant={grant}"),
            Box::new(move |s| s.grant == Some(grant)),
        ),
        (
            "purpose=ETREAT".into(),
            Box::new(|s| s.purpose == Some(PurposeOfUse::EmergencyTreatment)),
        ),
        (
            "purpose=HPAYMT".into(),
            Box::new(|s| s.purpose == Some(PurposeOfUse::Payment)),
        ),
        ("ip=10.0.0.2".into(), Box::new(|s| s.ip == "10.0.0.2")),
        ("ip=2001:db8::7".into(), Box::new(|s| s.ip == "2001:db8::7")),
        // Combined.
        (
            format!("person={doctor}&outcome=permit&resource=Patient"),
            Box::new(move |s| {
                s.actor == doctor && s.outcome == Outcome::Permit && s.kind == ResourceType::Patient
            }),
        ),
        (
            format!("patient={p1}&action=read&purpose=TREAT"),
            Box::new(move |s| {
                s.patients.contains(&p1)
                    && s.action == AuditAction::Read
                    && s.purpose == Some(PurposeOfUse::Treatment)
            }),
        ),
        (
            format!("person={nurse}&ip=10.0.0.1&action=read"),
            Box::new(move |s| {
                s.actor == nurse && s.ip == "10.0.0.1" && s.action == AuditAction::Read
            }),
        ),
    ];
    for (filter, pred) in &cases {
        let sep = if filter.is_empty() { "" } else { "&" };
        let html = r
            .page(&po, &format!("/console/audit?{filter}{sep}{PERIOD}"))
            .await;
        assert_eq!(seqs(&html), w.expect(pred), "{filter}");
    }
    // The time range alone: narrower days, and the event before the period.
    let html = r
        .page(&po, "/console/audit?from=2026-01-06&to=2026-01-08")
        .await;
    assert_eq!(
        seqs(&html),
        w.expect(|s| s.at >= jan(6, 0) && s.at < jan(9, 0))
    );
    let html = r
        .page(&po, "/console/audit?from=2025-12-01T00:00&to=2025-12-31")
        .await;
    assert_eq!(seqs(&html), vec![w.seeds.last().unwrap().0]);
    // People by display name with role, ids shortened; the display name is escaped.
    let html = r.page(&po, &format!("/console/audit?{PERIOD}")).await;
    assert!(html.contains("Nora Nurse"), "{html}");
    assert!(html.contains(&nurse.simple().to_string()[..8]), "{html}");
    assert!(html.contains("clinician"), "{html}");
    assert!(!html.contains("=HYPERLINK(\"http"), "escaped in HTML");
}

#[tokio::test]
async fn bad_filters_are_400_with_a_fixed_message() {
    let w = world().await;
    let po = w.r.sign_in(w.officer);
    for q in [
        "action=%3Cscript%3Eevil",
        "person=not-an-id-evil",
        "from=yesterday-evil",
        "ip=evil",
        "outcome=evil",
        "before=1&after=2",
        "before=evil",
    ] {
        let res = w.r.get(&po, &format!("/console/audit?{q}")).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{q}");
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("evil") && !body.contains("<script>"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn keyset_paging_is_stable_while_events_arrive() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let reader = r.user("reader", &[Role::Clinician], "Rita Reader");
    let seed = |i: u32| Seed {
        actor: reader,
        role: "clinician",
        action: AuditAction::Read,
        kind: ResourceType::Patient,
        outcome: Outcome::Permit,
        patients: vec![w.p1],
        purpose: Some(PurposeOfUse::Treatment),
        grant: None,
        ip: "10.0.0.9",
        at: jan(10, 0) + chrono::Duration::minutes(i64::from(i)),
    };
    let first: Vec<i64> = r.append(&(0..120).map(|i| seed(i).event()).collect::<Vec<_>>());
    let q = format!("/console/audit?person={reader}");
    let page1 = r.page(&po, &q).await;
    let s1 = seqs(&page1);
    let mut newest_first = first.clone();
    newest_first.reverse();
    assert_eq!(s1, newest_first[..50]);
    assert!(link(&page1, "newer").is_none());
    // 30 more events of the same person arrive while the reviewer pages.
    let later = r.append(&(200..230).map(|i| seed(i).event()).collect::<Vec<_>>());
    let older = link(&page1, "older").expect("an older page");
    let page2 = r.page(&po, &older).await;
    assert_eq!(seqs(&page2), newest_first[50..100]);
    let page3 = r.page(&po, &link(&page2, "older").unwrap()).await;
    assert_eq!(seqs(&page3), newest_first[100..]);
    assert!(link(&page3, "older").is_none());
    // Back: the page newer than page 2 is exactly page 1 (not the new arrivals).
    let back = r.page(&po, &link(&page2, "newer").unwrap()).await;
    assert_eq!(seqs(&back), s1);
    // From the newest page the new events show, then page 1's events continue.
    let fresh = r.page(&po, &link(&back, "newer").unwrap()).await;
    let mut later_rev = later.clone();
    later_rev.reverse();
    assert_eq!(seqs(&fresh), later_rev);
    assert!(link(&fresh, "newer").is_none());
}

#[tokio::test]
async fn a_patient_is_found_by_mrn_without_the_mrn_in_any_url_or_event() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let res = r
        .post(
            &po,
            "/console/audit",
            &[("mrn", "mrn 1001"), ("action", "read")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = location(&res);
    assert!(to.contains(&format!("patient={}", w.p1)), "{to}");
    assert!(to.contains("action=read"), "{to}");
    assert!(!to.to_ascii_lowercase().contains("1001"), "{to}");
    let html = r.page(&po, &format!("{to}&{PERIOD}")).await;
    assert!(
        html.contains("MRN-1001") && html.contains("Alice Anders"),
        "{html}"
    );
    assert_eq!(
        seqs(&html),
        w.expect(|s| s.patients.contains(&w.p1) && s.action == AuditAction::Read)
    );
    // An unknown MRN: 404 with a fixed message.
    let res = r.post(&po, "/console/audit", &[("mrn", "NOPE-77")]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(!res.text().await.unwrap().contains("NOPE"));
    // Without the form token: refused.
    let res = po
        .client
        .post(r.app.url("/console/audit"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("mrn=MRN-1001")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // The lookup is recorded as a search naming the patient, never with the MRN.
    let events = r.events_of(w.officer);
    assert!(
        events.iter().any(|e| e.0 == "search"
            && e.1.as_deref() == Some("Patient")
            && e.3 == vec![w.p1]
            && e.4.as_deref() == Some("HCOMPL")),
        "{events:?}"
    );
}

#[tokio::test]
async fn only_privacy_officers_identify_patients_and_refusals_are_recorded() {
    let w = world().await;
    let r = &w.r;
    let admin = r.sign_in(w.admin);
    // Administrators search the trail (by the PHI-free fields)...
    let html = r.page(&admin, &format!("/console/audit?{PERIOD}")).await;
    assert_eq!(seqs(&html), w.expect(|_| true));
    assert!(!html.contains("name=\"mrn\""), "no MRN field for admins");
    // ...and open an event, but see no patient's MRN or name.
    let seq = w.seeds[0].0;
    let html = r.page(&admin, &format!("/console/audit/{seq}")).await;
    assert!(html.contains(&w.p1.to_string()), "{html}");
    assert!(
        !html.contains("MRN-1001") && !html.contains("Alice"),
        "{html}"
    );
    // Naming a patient is the privacy office's: 403, recorded as refused.
    for path in [
        format!("/console/audit?patient={}", w.p1),
        format!("/console/patients/{}/access", w.p1),
        format!("/console/patients/{}/access.csv", w.p1),
    ] {
        let res = r.get(&admin, &path).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let res = r
        .post(&admin, "/console/audit", &[("mrn", "MRN-1001")])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let refused: Vec<_> = r
        .events_of(w.admin)
        .into_iter()
        .filter(|e| e.6.as_deref() == Some("missing-role"))
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    // The privacy officer sees the patient on the event page.
    let po = r.sign_in(w.officer);
    let html = r.page(&po, &format!("/console/audit/{seq}")).await;
    assert!(
        html.contains("MRN-1001") && html.contains("Alice Anders"),
        "{html}"
    );
}

#[tokio::test]
async fn every_review_page_view_is_recorded() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let before = r.events_of(w.officer).len();
    r.page(&po, &format!("/console/audit?{PERIOD}")).await;
    let seq = w.seeds[1].0;
    let html = r.page(&po, &format!("/console/audit/{seq}")).await;
    // The event page shows every field: seq, event id, chain hash, request id row.
    for label in [
        "Sequence",
        "Event id",
        "Chain hash",
        "Request id",
        "Source address",
    ] {
        assert!(html.contains(label), "{label}");
    }
    r.page(&po, &format!("/console/patients/{}/access", w.p1))
        .await;
    let events = r.events_of(w.officer);
    let new = &events[before..];
    assert_eq!(new.len(), 3, "{new:?}");
    // The search.
    assert_eq!(new[0].0, "search");
    assert_eq!(new[0].1.as_deref(), Some("AuditLog"));
    assert_eq!(new[0].4.as_deref(), Some("HCOMPL"));
    // The event, by its id, naming the patients identified on it.
    let event_id: Uuid = {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .filter(ae::seq.eq(seq))
            .select(ae::event_id)
            .first(&mut r.app.db.conn())
            .unwrap()
    };
    assert_eq!(new[1].0, "read");
    assert_eq!(new[1].2, Some(event_id));
    assert_eq!(new[1].3, vec![w.p1, w.p2]);
    // The report, naming its patient.
    assert_eq!(new[2].0, "read");
    assert_eq!(new[2].2, Some(w.p1));
    assert_eq!(new[2].3, vec![w.p1]);
    assert!(new.iter().all(|e| e.5 == "permit"));
}

#[tokio::test]
async fn access_report_lists_reads_and_searches_of_the_patient_only() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let q = "from=2026-01-01&to=2026-01-31";
    let html = r
        .page(&po, &format!("/console/patients/{}/access?{q}", w.p2))
        .await;
    assert!(html.contains("MRN-2002"), "{html}");
    let rows = html.matches("class=\"access\"").count();
    // p2: the nurse's search (results held p2) and the doctor's read; nothing about p1.
    assert_eq!(rows, 2, "{html}");
    assert!(html.contains("search results"), "{html}");
    assert!(
        html.contains("Nora Nurse") && html.contains("General Hospital"),
        "{html}"
    );
    // p1: the read, the search, the break-glass create; not the denied read, not the
    // error, not p2's read.
    let csv = r
        .get(&po, &format!("/console/patients/{}/access.csv?{q}", w.p1))
        .await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let body = csv.text().await.unwrap();
    let lines: Vec<&str> = body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1 + 3, "{body}");
    assert!(
        lines[0].starts_with("\"seq\",\"time\",\"person\""),
        "{body}"
    );
    let expected: Vec<i64> = w
        .seeds
        .iter()
        .filter(|(_, s)| {
            s.at >= jan(1, 0) && s.patients.contains(&w.p1) && s.outcome == Outcome::Permit
        })
        .map(|(seq, _)| *seq)
        .collect();
    let got: Vec<i64> = lines[1..]
        .iter()
        .map(|l| {
            l.split(',')
                .next()
                .unwrap()
                .trim_matches('"')
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(got, expected);
    assert!(body.contains("\"break-glass\""), "{body}");
    assert!(body.contains("\"search results\""), "{body}");
    // The doctor's display name is a spreadsheet formula: defused with a quote.
    assert!(body.contains("\"'=HYPERLINK(\"\"http://x\"\")\""), "{body}");
    for line in &lines {
        for cell in line.split("\",\"") {
            let cell = cell.trim_start_matches('"');
            assert!(!cell.starts_with(['=', '+', '-', '@']), "{line}");
        }
    }
    // Every line has the same number of fields.
    assert!(
        lines.iter().all(|l| l.matches("\",\"").count() == 10),
        "{body}"
    );
    // An unknown patient: 404.
    let res = r
        .get(&po, &format!("/console/patients/{}/access", Uuid::new_v4()))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn person_activity_counts_accesses_with_a_day_by_hour_heat_map() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let path = format!("/console/people/{}/activity?{PERIOD}", w.doctor);
    let html = r.page(&po, &path).await;
    let total = |id: &str| {
        html.split(&format!("id=\"{id}\">"))
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap()
            .to_string()
    };
    // The doctor: a read of p2, a denied read of p1, a break-glass create for p1.
    assert_eq!(total("total-events"), "3");
    assert_eq!(total("total-denials"), "1");
    assert_eq!(total("total-break-glass"), "1");
    assert_eq!(total("total-patients"), "2");
    // 31 days of 24 hours; 7 January 11:00 holds one event (the busiest shade).
    assert_eq!(html.matches("<th scope=\"row\">2026-01-").count(), 31);
    let jan7 = html
        .split("<th scope=\"row\">2026-01-07</th>")
        .nth(1)
        .unwrap();
    let cells: Vec<&str> = jan7.split("</tr>").next().unwrap().split("<td ").collect();
    assert!(cells[12].starts_with("class=\"h4\""), "{}", cells[12]);
    assert!(cells[11].starts_with("class=\"h0\""), "{}", cells[11]);
    // Privacy officers see who the patients are; administrators see ids only.
    assert!(
        html.contains("MRN-1001") && html.contains("MRN-2002"),
        "{html}"
    );
    let admin = r.sign_in(w.admin);
    let html = r.page(&admin, &path).await;
    assert!(
        !html.contains("MRN-1001") && !html.contains("Alice"),
        "{html}"
    );
    // Both views are recorded, on the person, naming patients only when identified.
    let viewed: Vec<_> = r
        .events_of(w.officer)
        .into_iter()
        .chain(r.events_of(w.admin))
        .filter(|e| e.2 == Some(w.doctor))
        .collect();
    assert_eq!(viewed.len(), 2, "{viewed:?}");
    let mut named = viewed[0].3.clone();
    named.sort();
    let mut both = vec![w.p1, w.p2];
    both.sort();
    assert_eq!(named, both);
    assert!(viewed[1].3.is_empty());
}

/// The page is no wider than the window (no horizontal scrolling).
async fn fits(chromium: &crate::support::browser::Browser, what: &str) {
    let v = chromium
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    let (scroll, inner) = (v[0].as_i64().unwrap(), v[1].as_i64().unwrap());
    assert_eq!(inner, 1280, "the test window is 1280 px wide");
    assert!(
        scroll <= inner,
        "{what}: {scroll} px wide in a {inner}-px window"
    );
}

#[tokio::test]
async fn browser_search_event_report_and_activity_fit_the_window() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let chromium = crate::support::browser::Browser::start(&test_cert().cert_pem).await;
    chromium.goto(&r.app.url("/console/signin")).await;
    chromium
        .add_cookie("__Host-custodian", &po.session_id)
        .await;
    // The search, filtered on a patient found by MRN (the form is posted).
    chromium
        .goto(&r.app.url(&format!("/console/audit?{PERIOD}")))
        .await;
    chromium.wait_for_text("Nora Nurse").await;
    fits(&chromium, "search").await;
    chromium.fill("Patient MRN", "MRN-1001").await;
    chromium.click("Search").await;
    let text = chromium.wait_for_text("Alice Anders").await;
    assert!(text.contains("Access report"), "{text}");
    assert!(!chromium.current_url().await.as_str().contains("1001"));
    chromium.page_shot("privacy-audit-search").await;
    fits(&chromium, "search by patient").await;
    // One event.
    let seq = w.seeds[1].0;
    chromium
        .goto(&r.app.url(&format!("/console/audit/{seq}")))
        .await;
    let text = chromium.wait_for_text("Chain hash").await;
    assert!(text.contains("MRN-2002"), "{text}");
    chromium.page_shot("privacy-audit-event").await;
    fits(&chromium, "event").await;
    // The patient's access report.
    chromium
        .goto(
            &r.app
                .url(&format!("/console/patients/{}/access?{PERIOD}", w.p1)),
        )
        .await;
    chromium.wait_for_text("search results").await;
    chromium.page_shot("privacy-access-report").await;
    fits(&chromium, "report").await;
    // A person's activity.
    chromium
        .goto(
            &r.app
                .url(&format!("/console/people/{}/activity?{PERIOD}", w.nurse)),
        )
        .await;
    chromium.wait_for_text("Events by day and hour").await;
    chromium.page_shot("privacy-activity").await;
    fits(&chromium, "activity").await;
    // The trail's charts.
    chromium
        .goto(
            &r.app
                .url("/console/audit/charts?from=2026-01-01&to=2026-01-31"),
        )
        .await;
    chromium
        .wait_for_text("Top people by distinct patients")
        .await;
    chromium.page_shot("privacy-charts").await;
    fits(&chromium, "charts").await;
    // The dashboard with the chain status and "verify now".
    chromium.goto(&r.app.url("/console")).await;
    chromium.wait_for_text("Verify now").await;
    fits(&chromium, "dashboard").await;
    let messages = chromium.console_messages().await;
    assert!(
        !messages
            .iter()
            .any(|m| m.contains("Content Security Policy")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn dashboard_shows_the_chain_head_and_newest_checkpoint() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let max_seq = || -> i64 {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .select(diesel::dsl::max(ae::seq))
            .first::<Option<i64>>(&mut r.app.db.conn())
            .unwrap()
            .unwrap()
    };
    let field = |html: &str, id: &str| {
        html.split(&format!("id=\"{id}\">"))
            .nth(1)
            .and_then(|s| s.split("</dd>").next())
            .unwrap()
            .to_string()
    };
    let html = r.page(&po, "/console").await;
    assert_eq!(field(&html, "chain-seq"), max_seq().to_string());
    // A batch that signs a checkpoint: the dashboard names it, zero events since.
    let key = r.config.audit.chain_key().unwrap();
    let signer = r.config.audit.signing_key().unwrap();
    let policy = CheckpointPolicy {
        every_events: 1,
        every_secs: 1,
    };
    let done = append_batch(
        &mut r.app.db.conn(),
        &key,
        &signer,
        policy,
        &[w.seeds[0].1.event()],
    )
    .unwrap();
    let cp = done.checkpoint.expect("a checkpoint");
    let html = r.page(&po, "/console").await;
    assert_eq!(field(&html, "chain-seq"), done.last_seq.to_string());
    assert!(
        field(&html, "chain-checkpoint")
            .starts_with(&format!("no. {} at event {}", cp.checkpoint, done.last_seq)),
        "{html}"
    );
    assert_eq!(field(&html, "chain-since"), "0");
}

#[tokio::test]
async fn demo_history_is_seeded_once_marked_and_keeps_the_chain_verifiable() {
    let r = Review::start().await;
    for i in 0..12 {
        r.patient(&format!("SYN-{i:06}"), "Syn", "Thetic");
    }
    let key = r.config.audit.chain_key().unwrap();
    let signer = r.config.audit.signing_key().unwrap();
    let mut conn = r.app.db.conn();
    let now = Utc::now();
    let added =
        custodian::dev::history::seed_history(&mut conn, &r.keyring, &key, &signer, &r.issuer, now)
            .unwrap();
    assert!(added > 200, "{added}");
    let again =
        custodian::dev::history::seed_history(&mut conn, &r.keyring, &key, &signer, &r.issuer, now)
            .unwrap();
    assert_eq!(again, 0, "seeded once");
    use custodian::db::schema::audit_events as ae;
    type Marked = (Option<String>, String, Option<Uuid>, DateTime<Utc>);
    let marked: Vec<Marked> = ae::table
        .filter(ae::client_app.eq(custodian::dev::history::MARK))
        .select((
            ae::deny_reason,
            ae::action,
            ae::break_glass_grant_id,
            ae::occurred_at,
        ))
        .load(&mut conn)
        .unwrap();
    assert_eq!(marked.len(), added);
    assert!(marked.iter().filter(|e| e.0.is_some()).count() >= 3);
    assert!(marked.iter().any(|e| e.1 == "search"));
    assert_eq!(marked.iter().filter(|e| e.2.is_some()).count(), 1);
    assert!(
        marked
            .iter()
            .all(|e| e.3 <= now && e.3 >= now - chrono::Duration::days(31))
    );
    let verified = custodian::audit::ops::verify_database(
        &mut conn,
        key,
        signer.public_key(),
        Vec::new(),
        |_| {},
    )
    .unwrap();
    assert!(
        verified.is_ok(),
        "the chain verifies with the history in it"
    );
}

#[tokio::test]
async fn oldest_first_pages_forward_and_back() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let reader = r.user("reader", &[Role::Clinician], "Rita Reader");
    let events: Vec<AuditEvent> = (0..120)
        .map(|i| {
            Seed {
                actor: reader,
                role: "clinician",
                action: AuditAction::Read,
                kind: ResourceType::Patient,
                outcome: Outcome::Permit,
                patients: vec![w.p2],
                purpose: None,
                grant: None,
                ip: "10.0.0.9",
                at: jan(11, 0) + chrono::Duration::minutes(i),
            }
            .event()
        })
        .collect();
    let seqs_in = r.append(&events);
    let page1 = r
        .page(&po, &format!("/console/audit?person={reader}&order=oldest"))
        .await;
    assert_eq!(seqs(&page1), seqs_in[..50]);
    assert!(link(&page1, "older").is_none());
    let page2 = r.page(&po, &link(&page1, "newer").unwrap()).await;
    assert_eq!(seqs(&page2), seqs_in[50..100]);
    let page3 = r.page(&po, &link(&page2, "newer").unwrap()).await;
    assert_eq!(seqs(&page3), seqs_in[100..]);
    assert!(link(&page3, "newer").is_none());
    let back = r.page(&po, &link(&page3, "older").unwrap()).await;
    assert_eq!(seqs(&back), seqs_in[50..100]);
    let back = r.page(&po, &link(&back, "older").unwrap()).await;
    assert_eq!(seqs(&back), seqs_in[..50]);
    assert!(link(&back, "older").is_none());
    let res = r.get(&po, "/console/audit?order=sideways").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

/// The console's export of a filtered set: refused without a fresh step-up (recorded);
/// with one, a file that `custodian audit verify --file` verifies offline (no database),
/// holding exactly the filtered events; one changed byte, or a dropped line, fails; the
/// export itself is recorded.
#[tokio::test]
async fn a_filtered_export_verifies_offline_needs_a_fresh_step_up_and_is_recorded() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let filter = format!("patient={}&{PERIOD}", w.p1);
    let set_totp_at = |at: DateTime<Utc>| {
        diesel::update(console_sessions::table)
            .set(console_sessions::totp_at.eq(Some(at)))
            .execute(&mut r.app.db.conn())
            .unwrap();
    };
    let last_event = || r.events_of(w.officer).pop().unwrap();

    // The last code is older than the step-up window: refused, with or without a wrong code.
    set_totp_at(Utc::now() - chrono::Duration::hours(2));
    for fields in [
        vec![("filter", filter.as_str())],
        vec![("filter", filter.as_str()), ("code", "000000")],
    ] {
        let res = r.post(&po, "/console/audit/export", &fields).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let body = res.text().await.unwrap();
        assert!(!body.contains("custodian-audit-selection"), "{body}");
        let (action, kind, _, patients, _, outcome, reason) = last_event();
        assert_eq!(
            (
                action.as_str(),
                kind.as_deref(),
                outcome.as_str(),
                reason.as_deref()
            ),
            (
                "audit-export",
                Some("AuditLog"),
                "deny",
                Some("step-up-required")
            )
        );
        assert_eq!(patients, vec![w.p1]);
    }

    // Fresh: the file, and the export recorded.
    set_totp_at(Utc::now());
    let res = r
        .post(&po, "/console/audit/export", &[("filter", &filter)])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let text = res.text().await.unwrap();
    let (action, kind, _, patients, purpose, outcome, _) = last_event();
    assert_eq!(
        (
            action.as_str(),
            kind.as_deref(),
            outcome.as_str(),
            purpose.as_deref()
        ),
        ("audit-export", Some("AuditLog"), "permit", Some("HCOMPL"))
    );
    assert_eq!(patients, vec![w.p1]);
    // Exactly the filtered events, oldest first.
    let mut want = w.expect(|s| s.patients.contains(&w.p1));
    want.reverse();
    let got: Vec<i64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event"]["record"]["seq"].as_i64())
        .collect();
    assert_eq!(got, want);
    assert!(!text.contains("MRN-1001") && !text.contains("Anders"));

    let dir = tempfile::tempdir().unwrap();
    let public = custodian::audit::chain::encode_public_key(
        &r.config.audit.signing_key().unwrap().public_key(),
    );
    let offline = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_custodian"))
            .args(["audit", "verify", "--file"])
            .arg(&path)
            .args(["--public-key", &public])
            .env_clear()
            .env("CUSTODIAN_AUDIT_CHAIN_KEY", crate::support::TEST_CHAIN_KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = offline("export.jsonl", &text);
    assert!(ok, "{out}");
    assert!(
        out.starts_with(&format!("OK: {} events", want.len())),
        "{out}"
    );

    // One changed byte in an event fails.
    let at = text.find("\"action\":\"read\"").unwrap() + "\"action\":\"".len();
    let mut bytes = text.clone().into_bytes();
    bytes[at] = b'R';
    let (ok, out) = offline("edited.jsonl", &String::from_utf8(bytes).unwrap());
    assert!(!ok);
    assert!(out.contains("hash mismatch"), "{out}");
    // A dropped event line fails (the seal counts and covers every line).
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, l)| !(l.starts_with("{\"event\"") && *i == text.lines().count() - 2))
        .map(|(_, l)| l)
        .collect();
    let (ok, out) = offline("dropped.jsonl", &(kept.join("\n") + "\n"));
    assert!(!ok);
    assert!(out.contains("seal"), "{out}");
}

/// "Verify now": the dashboard's button starts the chain verification in the background;
/// the dashboard then shows its result and time (and a tampered chain as FAILED); the
/// start and the result are recorded; a second start while one runs is refused.
#[tokio::test]
async fn verify_now_runs_in_the_background_shows_the_result_and_is_recorded() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let field = |html: &str, id: &str| {
        html.split(&format!("id=\"{id}\">"))
            .nth(1)
            .and_then(|s| s.split("</dd>").next())
            .unwrap_or_default()
            .to_string()
    };
    let html = r.page(&po, "/console").await;
    assert_eq!(field(&html, "chain-verified"), "none from the console yet");
    let finished = || async {
        for _ in 0..200 {
            let html = r.page(&po, "/console").await;
            if !html.contains("id=\"chain-verifying\"")
                && !field(&html, "chain-verified").starts_with("none")
            {
                return html;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the verification did not finish");
    };
    let verifies = || {
        r.events_of(w.officer)
            .into_iter()
            .filter(|e| e.0 == "audit-verify")
            .map(|e| (e.1, e.2, e.5))
            .collect::<Vec<_>>()
    };

    let res = r.post(&po, "/console/audit/verify", &[]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let html = finished().await;
    let verdict = field(&html, "chain-verified");
    assert!(verdict.starts_with("<strong>OK</strong>: "), "{verdict}");
    assert!(verdict.contains(", finished "), "{verdict}");
    // Started and finished, both recorded, about the same run.
    let v = verifies();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v.iter()
            .all(|(kind, _, outcome)| kind.as_deref() == Some("AuditLog") && outcome == "permit")
    );
    assert!(v[0].1.is_some() && v[0].1 == v[1].1);

    // A tampered chain: the next run shows where it fails, recorded as an error.
    r.app
        .db
        .conn()
        .batch_execute(
            "SET session_replication_role = replica; \
             UPDATE audit_events SET resource_id = gen_random_uuid() WHERE seq = 2; \
             SET session_replication_role = origin",
        )
        .unwrap();
    let res = r.post(&po, "/console/audit/verify", &[]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let html = finished().await;
    let verdict = field(&html, "chain-verified");
    assert!(
        verdict.starts_with("<strong>FAILED</strong> at sequence 2: hash mismatch"),
        "{verdict}"
    );
    let v = verifies();
    assert_eq!(v.len(), 4, "{v:?}");
    assert_eq!(v[3].2, "error");

    // One run at a time: a run marked as still going refuses a second start.
    diesel::sql_query(
        "INSERT INTO audit_verifications (id, started_at, started_by, total_events) \
         VALUES (gen_random_uuid(), now(), $1, 10)",
    )
    .bind::<diesel::sql_types::Uuid, _>(w.officer)
    .execute(&mut r.app.db.conn())
    .unwrap();
    let html = r.page(&po, "/console").await;
    assert!(
        field(&html, "chain-verifying").contains("0 of 10 events"),
        "{html}"
    );
    let res = r.post(&po, "/console/audit/verify", &[]).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

/// The charts: the trail overview (accesses per day by outcome, denials per day, top
/// people by distinct patients) and a patient's access timeline render as inline SVG,
/// count what the trail holds, and viewing them is recorded.
#[tokio::test]
async fn the_charts_render_what_the_trail_holds_and_viewing_them_is_recorded() {
    let w = world().await;
    let r = &w.r;
    let po = r.sign_in(w.officer);
    let field = |html: &str, id: &str| {
        html.split(&format!("id=\"{id}\">"))
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap_or_default()
            .to_string()
    };
    let figure = |html: &str, id: &str| {
        html.split(&format!("id=\"{id}\">"))
            .nth(1)
            .map(|s| s.starts_with("<svg") && s.contains("<rect"))
            .unwrap_or(false)
    };
    let before = r.events_of(w.officer).len();
    let html = r
        .page(&po, "/console/audit/charts?from=2026-01-01&to=2026-01-31")
        .await;
    // Seeded in January: four permitted accesses, one denial, one failure.
    assert_eq!(field(&html, "total-permitted"), "4");
    assert_eq!(field(&html, "total-denied"), "1");
    assert_eq!(field(&html, "total-failed"), "1");
    for id in ["trail-per-day-chart", "denials-chart", "top-people-chart"] {
        assert!(figure(&html, id), "{id}: {html}");
    }
    // The nurse and the doctor each reached two distinct patients.
    assert!(html.contains("Nora Nurse</a>: 2 patients"), "{html}");
    assert!(!html.contains("<script"));
    let events = r.events_of(w.officer);
    assert_eq!(events.len(), before + 1);
    let last = events.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_deref(), last.5.as_str()),
        ("search", Some("AuditLog"), "permit")
    );
    // A bad period is a 400 with a fixed message.
    let res = r
        .get(&po, "/console/audit/charts?from=2026-01-01&to=2028-01-01")
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // The patient's access timeline on the access report.
    let html = r
        .page(&po, &format!("/console/patients/{}/access?{PERIOD}", w.p1))
        .await;
    assert!(figure(&html, "timeline-chart"), "{html}");
}
