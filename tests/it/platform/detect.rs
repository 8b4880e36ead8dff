//! The privacy detectors (issue 15) against PostgreSQL: events appended through the real
//! chain store, the runner's passes driven directly (restart, two runners, the advisory
//! lock), and once end to end through the running server (refused requests → an alert,
//! the metrics of the detectors).

use crate::support::{TestApp, TestDb};
use chrono::{DateTime, Duration, TimeZone, Utc};
use custodian::audit::store::{CheckpointPolicy, append_batch};
use custodian::audit::{
    Actor, AuditAction, AuditEvent, AuthMethod, DenyReason, Outcome, ResourceType, RoleCode,
};
use custodian::db::alerts::AlertKind;
use custodian::db::patients::{NewPatient, insert_patient};
use custodian::db::schema::{alerts, detector_cursor, users as users_t};
use custodian::db::users::{self, UserKind};
use custodian::detect::Detector;
use custodian::detect::config::DetectConfig;
use custodian::domain::{FacilityId, PatientId, UserId};
use custodian::policy::{Confidentiality, Role};
use diesel::prelude::*;

struct Trail {
    db: TestDb,
    config: custodian::config::Config,
    keyring: custodian::crypto::Keyring,
    facility: FacilityId,
}

impl Trail {
    fn new() -> Trail {
        let db = TestDb::create();
        let config = TestApp::builder().config(&db.url);
        let keyring =
            custodian::app::keys::load_keyring(&config.crypto, &db.url, 2).expect("keyring");
        let facility =
            custodian::db::phi::insert_facility(&mut db.conn(), "General Hospital").unwrap();
        Trail {
            db,
            config,
            keyring,
            facility,
        }
    }

    fn person(&self, sub: &str, role: Role) -> UserId {
        let mut c = self.db.conn();
        let u = users::user_for(&mut c, "https://idp.test", sub, UserKind::Person).unwrap();
        users::grant_role(&mut c, u.id, role, "test setup", None).unwrap();
        u.id
    }

    fn patient(&self, mrn: &str, level: Confidentiality) -> PatientId {
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
        let mut c = self.db.conn();
        let id = insert_patient(&mut c, &self.keyring, &new).unwrap().id;
        custodian::db::break_glass::set_confidentiality(&mut c, id, level, "test setup", None)
            .unwrap();
        id
    }

    fn append(&self, events: &[AuditEvent]) {
        let policy = CheckpointPolicy {
            every_events: 1_000_000,
            every_secs: 1_000_000,
        };
        let key = self.config.audit.chain_key().unwrap();
        let signer = self.config.audit.signing_key().unwrap();
        for chunk in events.chunks(500) {
            append_batch(&mut self.db.conn(), &key, &signer, policy, chunk).unwrap();
        }
    }

    /// (kind, reason, user, patient) of every alert, sorted.
    fn alerts(&self) -> Vec<(String, String, Option<UserId>, Option<PatientId>)> {
        let mut rows: Vec<(String, String, Option<UserId>, Option<PatientId>)> = alerts::table
            .select((
                alerts::kind,
                alerts::reason,
                alerts::user_id,
                alerts::patient_id,
            ))
            .load(&mut self.db.conn())
            .unwrap();
        rows.sort();
        rows
    }

    fn cursor(&self) -> i64 {
        detector_cursor::table
            .select(detector_cursor::seq)
            .first(&mut self.db.conn())
            .unwrap()
    }
}

/// A fixed time at the start of a 10-minute window, so no test straddles one.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap() + Duration::seconds(secs)
}

fn access(user: UserId, patient: PatientId, outcome: Outcome, secs: i64) -> AuditEvent {
    let actor = Actor::user(
        user,
        vec![RoleCode::parse("clinician").unwrap()],
        AuthMethod::Bearer,
    );
    let mut e = AuditEvent::new(actor, AuditAction::Read, outcome);
    e.resource_type = Some(ResourceType::Patient);
    e.resource_id = Some(patient.as_uuid());
    e.patient_ids = vec![patient];
    e.occurred_at = at(secs);
    e
}

fn denial(user: UserId, patient: PatientId, secs: i64) -> AuditEvent {
    access(
        user,
        patient,
        Outcome::Deny(DenyReason::NoRelationship),
        secs,
    )
}

fn cfg() -> DetectConfig {
    DetectConfig {
        batch_max: 3,
        ..DetectConfig::default()
    }
}

/// Runs passes of `d` until it has caught up.
fn drain(d: &mut Detector, t: &Trail) -> Vec<AlertKind> {
    let mut conn = t.db.conn();
    let mut raised = Vec::new();
    loop {
        let pass = d.pass(&mut conn, Utc::now()).unwrap();
        assert!(pass.ran);
        raised.extend(pass.raised);
        if pass.consumed == 0 {
            return raised;
        }
    }
}

#[test]
fn each_detector_fires_on_its_pattern_against_the_database_and_not_on_the_near_miss() {
    let t = Trail::new();
    let nurse = t.person("nurse", Role::Clinician);
    let carer = t.person("carer", Role::Clinician);
    let colleague = t.person("colleague", Role::Clinician);
    let restricted = t.patient("MRN-R", Confidentiality::Restricted);
    let normal = t.patient("MRN-N", Confidentiality::Normal);
    let coworker = t.patient("MRN-W", Confidentiality::Normal);
    let mut c = t.db.conn();
    users::add_to_care_team(&mut c, restricted, carer, "test", None).unwrap();
    users::add_to_care_team(&mut c, coworker, carer, "test", None).unwrap();
    // The colleague is also a patient: their account is linked to the record.
    diesel::update(users_t::table.find(colleague))
        .set(users_t::patient_id.eq(Some(coworker)))
        .execute(&mut c)
        .unwrap();
    t.append(&[
        access(nurse, restricted, Outcome::Permit, 1),
        access(carer, restricted, Outcome::Permit, 2),
        access(nurse, normal, Outcome::Permit, 3),
        access(nurse, coworker, Outcome::Permit, 4),
        access(carer, coworker, Outcome::Permit, 5),
        access(colleague, coworker, Outcome::Permit, 6),
        denial(carer, normal, 7),
        denial(carer, normal, 8),
    ]);
    let raised = drain(&mut Detector::new(cfg()), &t);
    assert_eq!(raised.len(), 2, "{raised:?}");
    assert_eq!(
        t.alerts(),
        {
            let mut want = vec![
                (
                    "restricted-record".to_string(),
                    "restricted".to_string(),
                    Some(nurse),
                    Some(restricted),
                ),
                (
                    "workforce-patient".to_string(),
                    "linked-account".to_string(),
                    Some(nurse),
                    Some(coworker),
                ),
            ];
            want.sort();
            want
        },
        "two denials stay below the threshold of three"
    );
    // The third refusal within the window completes the pattern.
    t.append(&[denial(carer, normal, 9)]);
    assert_eq!(
        drain(&mut Detector::new(cfg()), &t),
        vec![AlertKind::RepeatedDenial]
    );
    // Each alert explains itself from codes and figures and points at its evidence.
    let (figures, evidence): (Vec<i64>, Vec<i64>) = alerts::table
        .filter(alerts::kind.eq("repeated-denial"))
        .select((alerts::figures, alerts::evidence_seqs))
        .first(&mut c)
        .unwrap();
    assert_eq!(figures, vec![3, 10, 3]);
    assert_eq!(evidence.len(), 3);
}

#[test]
fn a_restarted_runner_resumes_at_the_cursor_without_double_alerts_and_keeps_its_counts() {
    let t = Trail::new();
    let nurse = t.person("nurse", Role::Clinician);
    let other = t.person("other", Role::Clinician);
    let restricted = t.patient("MRN-R", Confidentiality::VeryRestricted);
    let normal = t.patient("MRN-N", Confidentiality::Normal);
    t.append(&[
        access(nurse, restricted, Outcome::Permit, 1),
        denial(other, normal, 2),
        denial(other, normal, 3),
    ]);
    let mut first = Detector::new(cfg());
    assert_eq!(drain(&mut first, &t), vec![AlertKind::RestrictedRecord]);
    let head = t.cursor();
    assert!(head >= 3);

    // A new process: nothing to re-read, nothing raised again.
    let mut second = Detector::new(cfg());
    let pass = second.pass(&mut t.db.conn(), Utc::now()).unwrap();
    assert_eq!((pass.consumed, pass.raised.len()), (0, 0));
    // The third refusal arrives after the restart: the new runner rebuilt the window's
    // count of two from the trail, so the pattern completes.
    t.append(&[denial(other, normal, 4)]);
    assert_eq!(drain(&mut second, &t), vec![AlertKind::RepeatedDenial]);

    // Even a runner that re-reads everything (cursor moved back by hand) raises nothing.
    diesel::update(detector_cursor::table)
        .set(detector_cursor::seq.eq(0))
        .execute(&mut t.db.conn())
        .unwrap();
    assert!(drain(&mut Detector::new(cfg()), &t).is_empty());
    assert_eq!(t.alerts().len(), 2);
}

#[test]
fn one_runner_works_at_a_time_and_two_runners_raise_each_alert_once() {
    let t = Trail::new();
    let normal = t.patient("MRN-N", Confidentiality::Normal);
    let restricted = t.patient("MRN-R", Confidentiality::Restricted);
    let people: Vec<UserId> = (0..12)
        .map(|i| t.person(&format!("p{i}"), Role::Clinician))
        .collect();
    let mut events = Vec::new();
    for (i, p) in people.iter().enumerate() {
        let s = i as i64 * 10;
        events.push(access(*p, restricted, Outcome::Permit, s));
        for k in 0..3 {
            events.push(denial(*p, normal, s + k + 1));
        }
    }
    t.append(&events);

    // While another connection holds the lock, a pass reads nothing.
    let mut holder = t.db.conn();
    holder
        .transaction(|h| {
            diesel::sql_query(format!(
                "SELECT pg_advisory_xact_lock({})",
                custodian::detect::LOCK_KEY
            ))
            .execute(h)?;
            let pass = Detector::new(cfg())
                .pass(&mut t.db.conn(), Utc::now())
                .unwrap();
            assert!(!pass.ran);
            assert_eq!(pass.consumed, 0);
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    assert_eq!(t.cursor(), 0);

    // Two runners side by side, small batches, until both see the head.
    let url = t.db.url.clone();
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                let mut d = Detector::new(cfg());
                let mut idle = 0;
                while idle < 3 {
                    let pass = d.pass(&mut conn, Utc::now()).unwrap();
                    if pass.ran && pass.consumed == 0 {
                        idle += 1;
                    }
                }
            })
        })
        .collect();
    for r in runners {
        r.join().unwrap();
    }
    let alerts = t.alerts();
    let count = |kind: &str| alerts.iter().filter(|a| a.0 == kind).count();
    assert_eq!(count("restricted-record"), people.len());
    assert_eq!(count("repeated-denial"), people.len());
    assert_eq!(alerts.len(), 2 * people.len());
    assert_eq!(t.cursor(), events.len() as i64);
}

#[tokio::test]
async fn refused_requests_from_one_address_raise_an_alert_through_the_running_server() {
    let app = TestApp::builder()
        .set("detect.enabled", true)
        .set("detect.poll_ms", 50)
        .set("detect.failures_threshold", 5)
        .set("metrics.listen", "127.0.0.1:0")
        .spawn()
        .await;
    let id = uuid::Uuid::new_v4();
    for _ in 0..6 {
        assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status(), 401);
    }
    let mut found = Vec::new();
    for _ in 0..100 {
        found = alerts::table
            .filter(alerts::kind.eq("auth-failure-spike"))
            .select((alerts::reason, alerts::source_ip, alerts::evidence_seqs))
            .load::<(String, Option<String>, Vec<i64>)>(&mut app.db.conn())
            .unwrap();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(found.len(), 1, "one alert for the address");
    let (reason, ip, evidence) = &found[0];
    assert_eq!(reason, "address");
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(evidence.len(), 5);

    let body = reqwest::get(format!("http://{}/metrics", app.metrics.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("custodian_detector_lag_events"), "{body}");
    assert!(
        body.contains("custodian_break_glass_active_grants 0"),
        "{body}"
    );
    assert!(
        body.contains("custodian_alerts_total{detector=\"auth-failure-spike\"}"),
        "{body}"
    );
    assert!(!body.contains(&id.to_string()));
}

#[test]
fn bulk_access_is_measured_against_the_persons_and_the_roles_own_history() {
    let t = Trail::new();
    let a = t.person("a", Role::Clinician);
    let b = t.person("b", Role::Clinician);
    let patients: Vec<PatientId> = (0..30)
        .map(|i| t.patient(&format!("MRN-{i}"), Confidentiality::Normal))
        .collect();
    let mut events = Vec::new();
    // The day before: two hours each; a saw 5 patients an hour, b 12. Role mean 8.5.
    for (who, n) in [(a, 5), (b, 12)] {
        for hour in [1, 3] {
            for p in &patients[..n] {
                events.push(access(who, *p, Outcome::Permit, -86_400 + hour * 3600));
            }
        }
    }
    // This hour both see 30 patients: a is above 3 × 8.5 (and 3 × 5), b is not above 3 × 12.
    for (i, p) in patients.iter().enumerate() {
        events.push(access(a, *p, Outcome::Permit, i as i64));
        events.push(access(b, *p, Outcome::Permit, i as i64));
    }
    t.append(&events);
    let cfg = DetectConfig {
        batch_max: 50,
        // Above b's 12 of the day before, which had no history to be measured against.
        bulk_min_patients: 13,
        ..DetectConfig::default()
    };
    assert_eq!(
        drain(&mut Detector::new(cfg), &t),
        vec![AlertKind::BulkAccess]
    );
    let (user, figures): (Option<UserId>, Vec<i64>) = alerts::table
        .select((alerts::user_id, alerts::figures))
        .first(&mut t.db.conn())
        .unwrap();
    assert_eq!(user, Some(a));
    // 26 distinct patients, 60 minutes, own mean 5, role mean 9 (8.5 rounded), at 26.
    assert_eq!(figures, vec![26, 60, 5, 9, 26]);
}

/// Makes the world's facility work around the clock (so off-hours never fires).
fn working_all_day(w: &crate::support::world::World) {
    use custodian::db::schema::facilities as f;
    diesel::update(f::table.find(w.facility))
        .set((
            f::work_start_hour.eq(Some(0i16)),
            f::work_end_hour.eq(Some(24i16)),
            f::time_zone.eq(Some("UTC")),
        ))
        .execute(&mut w.app.db.conn())
        .unwrap();
}

/// Waits (up to 10 s) for alerts of `kind`; returns (user, patient) of each.
async fn wait_for(
    db: &TestDb,
    kind: &str,
    want: usize,
) -> Vec<(Option<UserId>, Option<PatientId>)> {
    let mut found = Vec::new();
    for _ in 0..100 {
        found = alerts::table
            .filter(alerts::kind.eq(kind))
            .select((alerts::user_id, alerts::patient_id))
            .load(&mut db.conn())
            .unwrap();
        if found.len() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    found
}

#[tokio::test]
async fn the_family_name_claim_is_kept_as_a_blind_index_and_same_family_name_fires_outside_the_care_team()
 {
    use crate::support::world::{ALL_SCOPES, AUDIENCE, World, patient_json};
    use custodian::crypto::BlindKind;
    let w = World::with(|b, _| {
        b.set("detect.enabled", true)
            .set("detect.poll_ms", 50)
            .set("detect.name_search_threshold", 5)
    })
    .await;
    // Working hours all day long: off-hours stays out of this test whatever the time.
    working_all_day(&w);
    let token = |sub: &str, family: Option<&str>| {
        let now = crate::support::idp::now();
        let mut claims = serde_json::json!({
            "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": sub, "exp": now + 300,
            "iat": now, "client_id": "test-app", "scope": ALL_SCOPES,
        });
        if let Some(f) = family {
            claims["family_name"] = f.into();
        }
        w.signer.sign(&claims)
    };
    let (carer, _) = w.user("carer", &[Role::Clinician]);
    // Billing staff read the facility's records without a care relationship.
    let (kin, _) = w.user("kin", &[Role::Billing]);
    let (stranger, _) = w.user("stranger", &[Role::Billing]);
    // The carer writes the record (and so is on its care team); all three read it.
    let carer_token = token("carer", Some("Okafor"));
    let patient = PatientId::from(
        w.create(&carer_token, &patient_json("MRN-F1", "Okafor"))
            .await,
    );
    // The claim is normalised as the patients' index is (case, outer and inner spaces).
    let kin_token = token("kin", Some("  OKAFOR "));
    let stranger_token = token("stranger", Some("Mensah"));
    for (i, t) in [&carer_token, &kin_token, &stranger_token]
        .into_iter()
        .enumerate()
    {
        let res = w.get(&format!("/fhir/Patient/{patient}"), t).await;
        let status = res.status();
        assert_eq!(status, 200, "{i}: {}", res.text().await.unwrap());
    }
    let found = wait_for(&w.app.db, "same-family-name", 1).await;
    assert_eq!(found, vec![(Some(kin), Some(patient))]);

    // Stored: the blind index only, computed with the patients' key and normalisation.
    let rows: Vec<(UserId, Option<Vec<u8>>, Option<String>)> = users_t::table
        .filter(users_t::id.eq_any([carer, kin, stranger]))
        .select((
            users_t::id,
            users_t::family_index,
            users_t::family_index_source,
        ))
        .load(&mut w.app.db.conn())
        .unwrap();
    let okafor = w.keyring.blind_index(BlindKind::Family, "okafor").unwrap();
    for (user, index, source) in rows {
        assert_eq!(source.as_deref(), Some("provider"));
        assert_eq!(index.as_ref() == Some(&okafor), user != stranger);
    }
    // An administrator's value is not overwritten by a later claim.
    let mensah = w.keyring.blind_index(BlindKind::Family, "Mensah").unwrap();
    users::set_family_index(
        &mut w.app.db.conn(),
        kin,
        &mensah,
        users::FamilySource::Admin,
    )
    .unwrap();
    assert_eq!(
        w.get(&format!("/fhir/Patient/{patient}"), &kin_token)
            .await
            .status(),
        200
    );
    let kept: Option<Vec<u8>> = users_t::table
        .find(kin)
        .select(users_t::family_index)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(kept, Some(mensah));

    // name-search-sweep through the API: the stranger's five Patient searches in a
    // window raise it; the carer's two do not.
    for _ in 0..2 {
        let res = w.get("/fhir/Patient?family=Oka", &carer_token).await;
        assert_eq!(res.status(), 200);
    }
    for _ in 0..5 {
        let res = w.get("/fhir/Patient?family=Oka", &stranger_token).await;
        assert_eq!(res.status(), 200);
    }
    let found = wait_for(&w.app.db, "name-search-sweep", 1).await;
    assert_eq!(found, vec![(Some(stranger), None)]);
    // Nothing else fired (and the patient's name is in no alert).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let kinds: Vec<String> = alerts::table
        .select(alerts::kind)
        .load(&mut w.app.db.conn())
        .unwrap();
    let mut kinds = kinds;
    kinds.sort();
    assert_eq!(kinds, vec!["name-search-sweep", "same-family-name"]);
}

#[test]
fn off_hours_follows_the_facilitys_hours_and_time_zone_and_a_restart_raises_nothing_twice() {
    use custodian::db::schema::facilities as f;
    let t = Trail::new();
    let (east, plain) = (
        t.person("east", Role::Clinician),
        t.person("plain", Role::Clinician),
    );
    let patient = t.patient("MRN-O", Confidentiality::Normal);
    let mut c = t.db.conn();
    // The trail's 10:00 UTC is 05:00 in New York: before this facility's 08:00.
    let ny = custodian::db::phi::insert_facility(&mut c, "East Clinic").unwrap();
    diesel::update(f::table.find(ny))
        .set((
            f::work_start_hour.eq(Some(8i16)),
            f::work_end_hour.eq(Some(18i16)),
            f::time_zone.eq(Some("America/New_York")),
        ))
        .execute(&mut c)
        .unwrap();
    users::set_facility(&mut c, east, Some(ny)).unwrap();
    // `plain` has no facility: the defaults (07:00 to 19:00 UTC) hold, 10:00 is within.
    t.append(&[
        access(east, patient, Outcome::Permit, 1),
        access(east, patient, Outcome::Permit, 2),
        access(plain, patient, Outcome::Permit, 3),
    ]);
    assert_eq!(
        drain(&mut Detector::new(cfg()), &t),
        vec![AlertKind::OffHours]
    );
    let (user, figures, key): (Option<UserId>, Vec<i64>, Option<String>) = alerts::table
        .select((alerts::user_id, alerts::figures, alerts::dedup_key))
        .first(&mut c)
        .unwrap();
    assert_eq!(user, Some(east));
    assert_eq!(figures, vec![2, 8, 18]);
    assert!(key.unwrap().ends_with(":2026-01-05"));
    // A restart that re-reads everything raises nothing new.
    diesel::update(detector_cursor::table)
        .set(detector_cursor::seq.eq(0))
        .execute(&mut c)
        .unwrap();
    assert!(drain(&mut Detector::new(cfg()), &t).is_empty());
    assert_eq!(t.alerts().len(), 1);
}

#[test]
fn the_demo_history_plants_an_alert_of_every_detector_kind() {
    let t = Trail::new();
    for i in 0..60 {
        t.patient(&format!("SYN-{i:06}"), Confidentiality::Normal);
    }
    let key = t.config.audit.chain_key().unwrap();
    let signer = t.config.audit.signing_key().unwrap();
    let added = custodian::dev::history::seed_history(
        &mut t.db.conn(),
        &t.keyring,
        &key,
        &signer,
        "https://idp.test",
        Utc::now(),
    )
    .unwrap();
    assert!(added > 200, "{added}");
    let cfg = DetectConfig {
        batch_max: 500,
        ..DetectConfig::default()
    };
    drain(&mut Detector::new(cfg), &t);
    let kinds: std::collections::BTreeSet<String> = t.alerts().into_iter().map(|a| a.0).collect();
    // Every kind, break-glass-review-overdue included (the history plants a real grant
    // whose review is overdue).
    for kind in custodian::detect::KINDS {
        assert!(
            kinds.contains(kind.code()),
            "no {} alert in {kinds:?}",
            kind.code()
        );
    }
}

/// The administrator's family name (issue 15): set through the administration API (one
/// `Op`, a reason, audited), stored as the blind index only — no clear text in the user's
/// row, its history or the audit trail — and then the same-family-name detector fires on
/// the person's access to a patient of that name; a later claim does not replace it; an
/// administrator may not set their own; cleared, the claim applies again.
#[tokio::test]
async fn an_administrator_sets_a_family_name_through_the_api_and_same_family_name_fires() {
    use crate::support::world::{ALL_SCOPES, AUDIENCE, World, patient_json};
    use custodian::crypto::BlindKind;
    let w = World::with(|b, _| b).await;
    // Working hours all day long: off-hours stays out of this test whatever the time.
    working_all_day(&w);
    let (admin, _) = w.user("admin-1", &[Role::Admin]);
    let admin_token = w.token("admin-1", "admin");
    let (_, carer_token) = w.user("carer", &[Role::Clinician]);
    let (clerk, clerk_token) = w.user("clerk", &[Role::Billing]);
    let patient = PatientId::from(
        w.create(&carer_token, &patient_json("MRN-AF1", "Zabrowski"))
            .await,
    );
    let put = |user: UserId, body: serde_json::Value| {
        w.app
            .client
            .put(w.app.url(&format!("/api/admin/users/{user}/family-name")))
            .header("authorization", format!("Bearer {admin_token}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // Bad input: a fixed 422 that does not echo it.
    for body in [
        serde_json::json!({ "family_name": "", "reason": "HR record" }),
        serde_json::json!({ "family_name": "Zab\u{7}rowski", "reason": "HR record" }),
        serde_json::json!({ "family_name": "Zabrowski", "clear": true, "reason": "HR record" }),
        serde_json::json!({ "reason": "HR record" }),
        serde_json::json!({ "family_name": "Zabrowski" }),
    ] {
        let res = put(clerk, body.clone()).await.unwrap();
        assert_eq!(res.status(), 422, "{body}");
        assert!(!res.text().await.unwrap().contains("Zab"), "{body}");
    }
    // Not one's own (separation of duties: it decides whether one's look-ups alert).
    let res = put(
        admin,
        serde_json::json!({ "family_name": "Zabrowski", "reason": "HR record" }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);

    let res = put(
        clerk,
        serde_json::json!({ "family_name": "  ZABROWSKI ", "reason": "HR record 4711" }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let zab = w
        .keyring
        .blind_index(BlindKind::Family, "zabrowski")
        .unwrap();
    let (index, source): (Option<Vec<u8>>, Option<String>) = users_t::table
        .find(clerk)
        .select((users_t::family_index, users_t::family_index_source))
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(
        (index, source.as_deref()),
        (Some(zab.clone()), Some("admin"))
    );
    // No clear text anywhere it could land: the user's row, its history, the trail.
    #[derive(QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    for sql in [
        "SELECT string_agg(u::text, ' ') AS t FROM users u",
        "SELECT coalesce(string_agg(a::text, ' '), '') AS t FROM access_changes a",
        "SELECT string_agg(e::text, ' ') AS t FROM audit_events e",
    ] {
        let text = diesel::sql_query(sql)
            .get_result::<Text>(&mut w.app.db.conn())
            .unwrap()
            .t
            .to_lowercase();
        assert!(!text.contains("zabrowski"), "{sql}");
    }
    let history: Vec<(String, String)> = custodian::db::schema::access_changes::table
        .filter(custodian::db::schema::access_changes::user_id.eq(clerk))
        .select((
            custodian::db::schema::access_changes::change,
            custodian::db::schema::access_changes::reason,
        ))
        .load(&mut w.app.db.conn())
        .unwrap();
    assert!(history.contains(&("family_name_set".into(), "HR record 4711".into())));
    let events = w.audit_events();
    assert!(
        events.iter().any(|e| e.0 == "update" && e.1 == "permit"),
        "{events:?}"
    );

    // The clerk reads the patient (billing reads the facility's records): the detector
    // fires; the carer (on the care team) would not, and has another name anyway.
    let res = w
        .get(&format!("/fhir/Patient/{patient}"), &clerk_token)
        .await;
    assert_eq!(res.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut d = Detector::new(DetectConfig::default());
    let mut c = w.app.db.conn();
    while d.pass(&mut c, Utc::now()).unwrap().consumed > 0 {}
    let found: Vec<(Option<UserId>, Option<PatientId>)> = alerts::table
        .filter(alerts::kind.eq("same-family-name"))
        .select((alerts::user_id, alerts::patient_id))
        .load(&mut c)
        .unwrap();
    assert_eq!(found, vec![(Some(clerk), Some(patient))]);

    // A claim of another name does not replace the administrator's value…
    let now = crate::support::idp::now();
    let claimed = w.signer.sign(&serde_json::json!({
        "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": "clerk", "exp": now + 300,
        "iat": now, "client_id": "test-app", "scope": ALL_SCOPES, "family_name": "Mensah",
    }));
    assert_eq!(
        w.get(&format!("/fhir/Patient/{patient}"), &claimed)
            .await
            .status(),
        200
    );
    let kept: Option<Vec<u8>> = users_t::table
        .find(clerk)
        .select(users_t::family_index)
        .first(&mut c)
        .unwrap();
    assert_eq!(kept, Some(zab));
    // …until the administrator clears it: then the claim applies again.
    let res = put(
        clerk,
        serde_json::json!({ "clear": true, "reason": "left the family" }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let cleared: Option<Vec<u8>> = users_t::table
        .find(clerk)
        .select(users_t::family_index)
        .first(&mut c)
        .unwrap();
    assert_eq!(cleared, None);
    assert_eq!(
        w.get(&format!("/fhir/Patient/{patient}"), &claimed)
            .await
            .status(),
        200
    );
    let (index, source): (Option<Vec<u8>>, Option<String>) = users_t::table
        .find(clerk)
        .select((users_t::family_index, users_t::family_index_source))
        .first(&mut c)
        .unwrap();
    let mensah = w.keyring.blind_index(BlindKind::Family, "mensah").unwrap();
    assert_eq!((index, source.as_deref()), (Some(mensah), Some("provider")));
}
