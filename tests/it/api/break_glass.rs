//! Break-glass and record confidentiality over HTTP, on PostgreSQL (issue 13): the
//! confidentiality of a record (N/R/V) set by an administrator with a reason and enforced
//! for every role; a clinician refused on a record told that break-glass is available
//! (404 stays for everyone else); `$break-glass` with its RFC 9470 step-up, its checks on
//! the request, the grant as a policy basis on every request (grant id and BTG in the
//! trail), expiry on the injectable clock, revocation by the requester and by an
//! administrator, and the limits.

use crate::api::resources::observation_json;
use crate::support::world::{ALL_SCOPES, AUDIENCE, World, patient_json};
use custodian::db::schema::{audit_events as ae, break_glass_grants as g, confidentiality_changes};
use custodian::domain::clock::Clock;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const WHY: &str = "Unconscious in the ED, treating team unreachable";

#[derive(QueryableByName)]
struct RowText {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}

/// A token for `sub` minted at the app's clock (which tests move forward), with the
/// sign-in claims of a multi-factor sign-in `auth_age` seconds ago when `mfa`.
fn token_at(w: &World, sub: &str, mfa: bool, auth_age: i64) -> String {
    let now = w.app.clock().now().timestamp();
    let mut claims = json!({
        "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": sub, "exp": now + 300,
        "iat": now, "client_id": "test-app", "scope": ALL_SCOPES,
        "auth_time": now - auth_age,
    });
    if mfa {
        claims["amr"] = json!(["pwd", "otp", "mfa"]);
    } else {
        claims["amr"] = json!(["pwd"]);
    }
    w.signer.sign(&claims)
}

async fn world() -> World {
    World::with(|b, _| b.manual_clock()).await
}

fn body(reason: &str, justification: &str, minutes: Option<i64>) -> Value {
    let mut parameter = vec![
        json!({ "name": "reason", "valueCoding": { "code": reason } }),
        json!({ "name": "justification", "valueString": justification }),
    ];
    if let Some(m) = minutes {
        parameter.push(json!({ "name": "minutes", "valueInteger": m }));
    }
    json!({ "resourceType": "Parameters", "parameter": parameter })
}

async fn break_glass(w: &World, token: &str, patient: &str, b: &Value) -> reqwest::Response {
    w.send(
        Method::POST,
        &format!("/fhir/Patient/{patient}/$break-glass"),
        token,
        Some(b),
    )
    .await
}

fn grant_count(w: &World) -> i64 {
    g::table.count().get_result(&mut w.app.db.conn()).unwrap()
}

/// (action, outcome, deny reason, purpose, grant id) of every audit event after `seq`.
type Row = (String, String, Option<String>, Option<String>, Option<Uuid>);
fn events_after(w: &World, seq: i64) -> Vec<Row> {
    ae::table
        .filter(ae::seq.gt(seq))
        .order(ae::seq)
        .select((
            ae::action,
            ae::outcome,
            ae::deny_reason,
            ae::purpose_of_use,
            ae::break_glass_grant_id,
        ))
        .load(&mut w.app.db.conn())
        .unwrap()
}

fn last_seq(w: &World) -> i64 {
    ae::table
        .select(diesel::dsl::max(ae::seq))
        .first::<Option<i64>>(&mut w.app.db.conn())
        .unwrap()
        .unwrap_or(0)
}

fn param<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {v}"))
}

async fn set_level(w: &World, admin: &str, patient: &str, level: &str) -> reqwest::Response {
    w.app
        .client
        .put(
            w.app
                .url(&format!("/api/admin/patients/{patient}/confidentiality")),
        )
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(json!({ "confidentiality": level, "reason": "public figure admitted" }).to_string())
        .send()
        .await
        .unwrap()
}

async fn security(w: &World, token: &str, patient: &str) -> Value {
    let res = w.get(&format!("/fhir/Patient/{patient}"), token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    v["meta"]["security"][0].clone()
}

#[tokio::test]
async fn confidentiality_is_set_with_a_reason_shown_in_meta_security_and_enforced() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-team", &[Role::Clinician]);
    let (_, billing) = w.user("billing-1", &[Role::Billing]);
    let (_, outsider) = w.user("dr-outside", &[Role::Clinician]);
    w.user("admin-1", &[Role::Admin]);
    let admin = w.token("admin-1", "admin");
    let id = w
        .create(&doc, &patient_json("MRN-C1", "Famous"))
        .await
        .to_string();
    let path = format!("/fhir/Patient/{id}");

    let s = security(&w, &doc, &id).await;
    assert_eq!(s["code"], "N");
    assert_eq!(
        s["system"],
        "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    );
    assert_eq!(w.get(&path, &billing).await.status(), StatusCode::OK);

    // Bad input changes nothing and is answered with a fixed message.
    let res = set_level(&w, &admin, &id, "X<b>").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!res.text().await.unwrap().contains("<b>"));
    let res = set_level(&w, &admin, &Uuid::new_v4().to_string(), "R").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = w
        .app
        .client
        .put(
            w.app
                .url(&format!("/api/admin/patients/{id}/confidentiality")),
        )
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(json!({ "confidentiality": "R" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "a reason");
    let history = || -> i64 {
        confidentiality_changes::table
            .count()
            .get_result(&mut w.app.db.conn())
            .unwrap()
    };
    assert_eq!(history(), 0);
    assert_eq!(security(&w, &doc, &id).await["code"], "N");
    // A clinician is no administrator.
    let res = set_level(&w, &doc, &id, "V").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // R: the care team keeps access; facility-basis access (billing) is gone, as for a
    // record that does not exist, in reads and in searches.
    let res = set_level(&w, &admin, &id, "R").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(history(), 1);
    let (reason, level, prev): (String, String, String) = confidentiality_changes::table
        .select((
            confidentiality_changes::reason,
            confidentiality_changes::confidentiality,
            confidentiality_changes::previous,
        ))
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(
        (reason.as_str(), level.as_str(), prev.as_str()),
        ("public figure admitted", "R", "N")
    );
    let res = w
        .app
        .client
        .get(
            w.app
                .url(&format!("/api/admin/patients/{id}/confidentiality")),
        )
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["confidentiality"], "R");
    assert_eq!(v["history"][0]["reason"], "public figure admitted");
    assert_eq!(v["history"][0]["previous"], "N");
    // The change's event, then the read of the history.
    let events = events_after(&w, 0);
    let (action, outcome, _, _, _) = &events[events.len() - 2];
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("confidentiality-change", "permit")
    );
    assert_eq!(security(&w, &doc, &id).await["code"], "R");
    assert_eq!(w.get(&path, &billing).await.status(), StatusCode::NOT_FOUND);
    let bundle: Value = w
        .get("/fhir/Patient?identifier=MRN-C1", &billing)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["total"].as_u64().unwrap_or(0), 0, "{bundle}");
    assert!(bundle["entry"].as_array().is_none_or(Vec::is_empty));
    // A clinician outside the care team: refused, and told that break-glass exists.
    let res = w.get(&path, &outsider).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("$break-glass"));

    // V: the care team is refused too (and told about break-glass); still searchable by
    // nobody but the patient.
    assert_eq!(
        set_level(&w, &admin, &id, "V").await.status(),
        StatusCode::OK
    );
    let res = w.get(&path, &doc).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("$break-glass"));
    let bundle: Value = w
        .get("/fhir/Patient?identifier=MRN-C1", &doc)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        bundle["entry"].as_array().is_none_or(Vec::is_empty),
        "{bundle}"
    );
    assert_eq!(w.get(&path, &billing).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn emergency_break_glass_opens_one_patient_until_it_expires() {
    let w = world().await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    let (doc_b_id, _) = w.user("dr-b", &[Role::Clinician]);
    let p = w
        .create(&doc_a, &patient_json("MRN-B1", "Emergent"))
        .await
        .to_string();
    let q = w
        .create(&doc_a, &patient_json("MRN-B2", "Other"))
        .await
        .to_string();
    let single = token_at(&w, "dr-b", false, 10);
    let stale = token_at(&w, "dr-b", true, 1000);
    let mfa = token_at(&w, "dr-b", true, 10);
    let path = format!("/fhir/Patient/{p}");

    // Nobody claims the purpose BTG: the pipeline sets it under a grant.
    let res = w
        .app
        .client
        .get(w.app.url(&path))
        .bearer_auth(&mfa)
        .header("x-purpose-of-use", "BTG")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Refused, with the way out named.
    let res = w.get(&path, &mfa).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let text = res.text().await.unwrap();
    assert!(text.contains("Break-glass is available"), "{text}");

    // Single-factor or stale sign-in: the RFC 9470 challenge, nothing stored.
    let good = body("emergency-treatment", WHY, Some(30));
    for (case, token) in [("single factor", &single), ("stale", &stale)] {
        let res = break_glass(&w, token, &p, &good).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{case}");
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer error=\"insufficient_user_authentication\""),
            "{case}: {challenge}"
        );
        assert!(challenge.contains("max_age=900"), "{challenge}");
        assert!(challenge.contains("acr_values=\""), "{challenge}");
        let (action, outcome, reason, _, _) = events_after(&w, 0).pop().unwrap();
        assert_eq!(
            (action.as_str(), outcome.as_str(), reason.as_deref()),
            ("break-glass-request", "deny", Some("step-up-required"))
        );
    }

    // Bad input: a clear 4xx, nothing stored, no echo.
    let long = "x".repeat(1001);
    let cases: Vec<(&str, String, Value, u16)> = vec![
        (
            "unknown reason",
            p.clone(),
            body("curiosity<i>", WHY, None),
            422,
        ),
        (
            "short justification",
            p.clone(),
            body("emergency-treatment", "because<i>", None),
            422,
        ),
        (
            "long justification",
            p.clone(),
            body("emergency-treatment", &long, None),
            422,
        ),
        (
            "too long",
            p.clone(),
            body("emergency-treatment", WHY, Some(241)),
            422,
        ),
        (
            "zero minutes",
            p.clone(),
            body("emergency-treatment", WHY, Some(0)),
            422,
        ),
        (
            "unknown patient",
            Uuid::new_v4().to_string(),
            good.clone(),
            404,
        ),
        (
            "malformed patient id",
            "not-a-uuid".into(),
            good.clone(),
            404,
        ),
        (
            "not Parameters",
            p.clone(),
            json!({"resourceType": "Patient"}),
            422,
        ),
        (
            "unknown parameter",
            p.clone(),
            json!({"resourceType": "Parameters", "parameter": [{"name": "scope", "valueString": "all"}]}),
            422,
        ),
    ];
    for (case, patient, b, status) in cases {
        let res = break_glass(&w, &mfa, &patient, &b).await;
        assert_eq!(res.status().as_u16(), status, "{case}");
        let text = res.text().await.unwrap();
        assert!(
            !text.contains("<i>") && !text.contains("xxxxxxxx"),
            "{case}: {text}"
        );
    }
    assert_eq!(grant_count(&w), 0, "nothing stored");
    assert_eq!(w.get(&path, &mfa).await.status(), StatusCode::FORBIDDEN);

    // The request: active at once.
    let before = last_seq(&w);
    let res = break_glass(&w, &mfa, &p, &good).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    assert_eq!(param(&v, "status")["valueCode"], "active");
    assert_eq!(param(&v, "mode")["valueCode"], "emergency");
    assert_eq!(param(&v, "minutesLeft")["valueInteger"], 30);
    let grant = Uuid::parse_str(param(&v, "grant")["valueId"].as_str().unwrap()).unwrap();
    let events = events_after(&w, before);
    let actions: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(actions, ["break-glass-request", "break-glass-start"]);
    assert!(events.iter().all(|e| e.4 == Some(grant)), "{events:?}");
    // The justification is sealed at rest: no clear text in the table (nor anywhere in
    // its rows), and it opens to what was sent.
    let (user, clear, sealed): (Uuid, Option<String>, Option<Vec<u8>>) = g::table
        .select((g::user_id, g::justification, g::justification_sealed))
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!((user, clear), (doc_b_id.as_uuid(), None));
    let sealed = sealed.unwrap();
    assert!(!sealed.windows(WHY.len()).any(|s| s == WHY.as_bytes()));
    let row_text: String =
        diesel::sql_query("SELECT string_agg(b::text, '') AS t FROM break_glass_grants b")
            .get_result::<RowText>(&mut w.app.db.conn())
            .unwrap()
            .t;
    assert!(!row_text.contains("Unconscious"), "{row_text}");
    let place = custodian::crypto::columns::break_glass_grants::JUSTIFICATION.at(grant);
    assert_eq!(w.keyring.open_str(&place, &sealed).unwrap(), WHY);

    // Every access under it carries the grant id and the purpose BTG: the patient and
    // its records; the clinical view (no SSN).
    let before = last_seq(&w);
    let res = w.get(&path, &mfa).await;
    assert_eq!(res.status(), StatusCode::OK);
    let patient: Value = res.json().await.unwrap();
    assert!(!patient.to_string().contains(crate::support::world::SSN));
    let obs = w
        .send(
            Method::POST,
            "/fhir/Observation",
            &mfa,
            Some(&observation_json(Uuid::parse_str(&p).unwrap())),
        )
        .await;
    assert_eq!(
        obs.status(),
        StatusCode::CREATED,
        "the clinical rows of the care team"
    );
    let events = events_after(&w, before);
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e.1, "permit");
        assert_eq!(e.3.as_deref(), Some("BTG"), "{events:?}");
        assert_eq!(e.4, Some(grant), "{events:?}");
    }
    // A grant for one patient never opens another.
    let res = w.get(&format!("/fhir/Patient/{q}"), &mfa).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (_, outcome, _, purpose, id) = events_after(&w, 0).pop().unwrap();
    assert_eq!(
        (outcome.as_str(), purpose.as_deref(), id),
        ("deny", Some("TREAT"), None)
    );
    // Asking again while the grant is active: nothing new stored.
    let res = break_glass(&w, &mfa, &p, &good).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(grant_count(&w), 1);

    // The requester polls it.
    let res = w
        .get(&format!("/fhir/Patient/{p}/$break-glass"), &mfa)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(param(&v, "status")["valueCode"], "active");

    // Expiry on the application's clock: access stops at once, even while no sweeper can
    // run (this test holds the sweep's advisory lock) — the decision point compares the
    // expiry with the clock, not the grant's status.
    let mut lock = w.app.db.conn();
    assert!(custodian::db::break_glass::try_lock_expiry(&mut lock).unwrap());
    w.app
        .clock()
        .advance(std::time::Duration::from_secs(31 * 60));
    let later = token_at(&w, "dr-b", true, 10);
    let before = last_seq(&w);
    assert_eq!(w.get(&path, &later).await.status(), StatusCode::FORBIDDEN);
    let res = w
        .get(&format!("/fhir/Patient/{p}/$break-glass"), &later)
        .await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(param(&v, "status")["valueCode"], "expired");
    tokio::time::sleep(custodian::access::expiry::SWEEP_EVERY + std::time::Duration::from_secs(1))
        .await;
    assert!(
        events_after(&w, before)
            .iter()
            .all(|e| e.0 != "break-glass-end"),
        "no sweep while the lock is held elsewhere"
    );
    let status: String = g::table
        .select(g::status)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(status, "active", "not swept yet");

    // Released: the sweeper records the expiry (once) without any request by the holder.
    custodian::db::break_glass::unlock_expiry(&mut lock).unwrap();
    let expiry = wait_for_expiry(&w, before, grant).await;
    assert_eq!(expiry.2.as_deref(), Some("break-glass-expired"));
    assert_eq!(expiry.1, "deny");
    let status: String = g::table
        .select(g::status)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(status, "expired");
    assert_eq!(w.get(&path, &later).await.status(), StatusCode::FORBIDDEN);
    tokio::time::sleep(custodian::access::expiry::SWEEP_EVERY).await;
    let ends = events_after(&w, before)
        .into_iter()
        .filter(|e| e.0 == "break-glass-end")
        .count();
    assert_eq!(ends, 1, "one expiry event");
}

/// Waits (up to a few sweeps) for the `break-glass-end` event of `grant` after `seq`.
async fn wait_for_expiry(w: &World, seq: i64, grant: Uuid) -> Row {
    for _ in 0..40 {
        if let Some(e) = events_after(w, seq)
            .into_iter()
            .find(|e| e.0 == "break-glass-end" && e.4 == Some(grant))
        {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("no expiry event for {grant}");
}

#[tokio::test]
async fn a_grant_ends_on_the_next_request_when_its_holder_or_an_administrator_revokes_it() {
    let w = world().await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    w.user("dr-b", &[Role::Clinician]);
    w.user("admin-1", &[Role::Admin]);
    let admin = w.token("admin-1", "admin");
    let p = w
        .create(&doc_a, &patient_json("MRN-R1", "Revoked"))
        .await
        .to_string();
    let mfa = token_at(&w, "dr-b", true, 10);
    let path = format!("/fhir/Patient/{p}");
    let good = body("patient-unable-to-consent", WHY, None);

    // The holder ends it.
    let res = break_glass(&w, &mfa, &p, &good).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(w.get(&path, &mfa).await.status(), StatusCode::OK);
    let end = format!("/fhir/Patient/{p}/$break-glass-end");
    let res = w.send(Method::POST, &end, &mfa, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (action, outcome, _, _, grant) = events_after(&w, 0).pop().unwrap();
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("break-glass-end", "permit")
    );
    assert!(grant.is_some());
    assert_eq!(w.get(&path, &mfa).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        w.send(Method::POST, &end, &mfa, None).await.status(),
        StatusCode::NOT_FOUND
    );

    // An administrator ends the next one, with a reason.
    let res = break_glass(&w, &mfa, &p, &good).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    let grant = param(&v, "grant")["valueId"].as_str().unwrap().to_string();
    assert_eq!(w.get(&path, &mfa).await.status(), StatusCode::OK);
    let revoke = |reason: Option<&str>| {
        let mut b = json!({});
        if let Some(r) = reason {
            b["reason"] = json!(r);
        }
        w.app
            .client
            .post(w.app.url(&format!("/api/admin/break-glass/{grant}/revoke")))
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/json")
            .body(b.to_string())
            .send()
    };
    assert_eq!(
        revoke(None).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        w.get(&path, &mfa).await.status(),
        StatusCode::OK,
        "still open"
    );
    assert_eq!(
        revoke(Some("not an emergency")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(w.get(&path, &mfa).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        revoke(Some("not an emergency")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let reason: Option<String> = g::table
        .filter(g::id.eq(Uuid::parse_str(&grant).unwrap()))
        .select(g::end_reason)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(reason.as_deref(), Some("not an emergency"));
}

#[tokio::test]
async fn break_glass_is_limited_to_clinicians_without_access_and_to_n_grants() {
    let w = World::with(|b, _| b.manual_clock().set("break_glass.max_active_grants", 1)).await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    w.user("dr-b", &[Role::Clinician]);
    w.user("billing-x", &[Role::Billing]);
    let p = w
        .create(&doc_a, &patient_json("MRN-L1", "One"))
        .await
        .to_string();
    let q = w
        .create(&doc_a, &patient_json("MRN-L2", "Two"))
        .await
        .to_string();
    let good = body("urgent-consult", WHY, Some(10));

    // A role that may not break glass: cannot ask, and a record outside its reach still
    // looks missing.
    let mut c = w.app.db.conn();
    let billing_user = custodian::db::users::user_for(
        &mut c,
        &w.idp.issuer(),
        "billing-x",
        custodian::db::users::UserKind::Person,
    )
    .unwrap();
    custodian::db::users::set_facility(&mut c, billing_user.id, None).unwrap();
    drop(c);
    let billing = token_at(&w, "billing-x", true, 10);
    let res = break_glass(&w, &billing, &p, &good).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        w.get(&format!("/fhir/Patient/{p}"), &billing)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // The care team needs no break-glass.
    let doc_a_mfa = token_at(&w, "dr-a", true, 10);
    let res = break_glass(&w, &doc_a_mfa, &p, &good).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(grant_count(&w), 0);

    // At most one active grant here.
    let mfa = token_at(&w, "dr-b", true, 10);
    assert_eq!(
        break_glass(&w, &mfa, &p, &good).await.status(),
        StatusCode::CREATED
    );
    let res = break_glass(&w, &mfa, &q, &good).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(res.text().await.unwrap().contains("max_active_grants"));
    assert_eq!(grant_count(&w), 1);
    // Once it has expired, another may be asked for.
    w.app
        .clock()
        .advance(std::time::Duration::from_secs(11 * 60));
    let mfa = token_at(&w, "dr-b", true, 10);
    assert_eq!(
        break_glass(&w, &mfa, &q, &good).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn the_identification_only_lookup_finds_a_patient_by_mrn_and_is_audited() {
    let w = World::new().await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    let (_, doc_b) = w.user("dr-b", &[Role::Clinician]);
    let (_, billing) = w.user("billing-1", &[Role::Billing]);
    let mut body = patient_json("MRN-LK1", "Lookup");
    body["telecom"] = json!([{ "system": "phone", "value": "555-0100" }]);
    let p = w.create(&doc_a, &body).await;
    let lookup = "/fhir/Patient/$break-glass-lookup";

    let before = last_seq(&w);
    let res = w.get(&format!("{lookup}?identifier=MRN-LK1"), &doc_b).await;
    assert_eq!(res.status(), StatusCode::OK);
    let bundle: Value = res.json().await.unwrap();
    assert_eq!(bundle["total"], 1);
    let found = &bundle["entry"][0]["resource"];
    assert_eq!(found["id"], p.to_string());
    assert_eq!(found["identifier"][0]["value"], "MRN-LK1");
    assert_eq!(found["name"][0]["family"], "Lookup");
    assert!(found.get("birthDate").is_some());
    for hidden in ["telecom", "address", "gender"] {
        assert!(found.get(hidden).is_none(), "identification only: {hidden}");
    }
    assert!(!bundle.to_string().contains("555-0100"));
    assert!(
        bundle.to_string().contains("$break-glass"),
        "the way to ask"
    );
    let events = events_after(&w, before);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("break-glass-lookup", "permit")
    );
    let patients: Vec<Uuid> = ae::table
        .order(ae::seq.desc())
        .select(ae::patient_ids)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(patients, vec![p]);

    // No match: nothing found (and still audited); bad input: 422; not a clinician: 403.
    let res = w
        .get(&format!("{lookup}?identifier=MRN-NONE"), &doc_b)
        .await;
    let bundle: Value = res.json().await.unwrap();
    assert_eq!(bundle["total"], 0);
    for bad in [
        "",
        "?identifier=a%20b",
        "?identifier=urn:other|MRN-LK1",
        "?family=Lookup",
    ] {
        let res = w.get(&format!("{lookup}{bad}"), &doc_b).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let res = w
        .get(&format!("{lookup}?identifier=MRN-LK1"), &billing)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(!res.text().await.unwrap().contains("Lookup"));
}

/// A token at the system clock with a multi-factor sign-in just now (for apps on the
/// system clock: a second `custodian serve` instance).
fn mfa_token_now(w: &World, sub: &str) -> String {
    let now = crate::support::idp::now();
    w.signer.sign(&json!({
        "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": sub, "exp": now + 300,
        "iat": now, "client_id": "test-app", "scope": ALL_SCOPES,
        "auth_time": now - 5, "amr": ["pwd", "otp", "mfa"],
    }))
}

/// A grant is read from the database on every request: a second instance (a real
/// `custodian serve` on the same database) honours it and refuses at the very next
/// request once it is ended; the holder and an administrator ending it at the same time
/// leave one consistent state (one ends it, the other is told it is not active; one
/// end event); and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_ended_on_one_instance_is_refused_by_another_and_concurrent_ends_agree() {
    use crate::support::serve::{Served, audit_verify};
    let w = World::new().await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    w.user("dr-b", &[Role::Clinician]);
    w.user("admin-1", &[Role::Admin]);
    let admin = w.token("admin-1", "admin");
    let p = w
        .create(&doc_a, &patient_json("MRN-I1", "Instances"))
        .await
        .to_string();
    let other = Served::start(&w.app.db.url, &w.idp.issuer()).await;
    let mfa = mfa_token_now(&w, "dr-b");
    let path = format!("/fhir/Patient/{p}");
    let on_other = |token: &str| {
        other
            .client
            .get(other.url(&path))
            .bearer_auth(token.to_string())
            .send()
    };
    assert_eq!(
        on_other(&mfa).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let res = break_glass(&w, &mfa, &p, &body("emergency-treatment", WHY, None)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    let grant = param(&v, "grant")["valueId"].as_str().unwrap().to_string();
    assert_eq!(on_other(&mfa).await.unwrap().status(), StatusCode::OK);

    // The holder (here) and an administrator (on the other instance) at the same time.
    let end_path = format!("/fhir/Patient/{p}/$break-glass-end");
    let end = w.send(Method::POST, &end_path, &mfa, None);
    let revoke = other
        .client
        .post(other.url(&format!("/api/admin/break-glass/{grant}/revoke")))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(json!({ "reason": "ended by the privacy office" }).to_string())
        .send();
    let (end, revoke) = tokio::join!(end, revoke);
    let mut statuses = [end.status().as_u16(), revoke.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 404], "exactly one ends it");
    let status: String = g::table
        .select(g::status)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(status, "revoked");
    let ends: i64 = ae::table
        .filter(
            ae::action
                .eq("break-glass-end")
                .and(ae::outcome.eq("permit")),
        )
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(ends, 1);
    assert_eq!(
        on_other(&mfa).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(w.get(&path, &mfa).await.status(), StatusCode::FORBIDDEN);
    let (ok, text) = audit_verify(&w.app.db.url);
    assert!(ok, "{text}");
}

/// Expiry is recorded by one sweeper at a time across instances (an advisory lock):
/// grants already past their expiry, two sweeps started at the same moment on one
/// instance plus the background sweepers of that instance and of a second `custodian
/// serve` on the same database — every grant ends `expired` with exactly one
/// `break-glass-end` event, none recorded as an error, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_record_each_expiry_once() {
    use crate::support::serve::{Served, audit_verify};
    let w = World::with(|b, _| b.extra_routes(crate::support::test_routes::add)).await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    let (doc_b, _) = w.user("dr-b", &[Role::Clinician]);
    let p = w.create(&doc_a, &patient_json("MRN-S1", "Swept")).await;
    let other = Served::start(&w.app.db.url, &w.idp.issuer()).await;
    let mut conn = w.app.db.conn();
    let facility: Uuid = custodian::db::schema::patients::table
        .find(p)
        .select(custodian::db::schema::patients::facility_id)
        .first(&mut conn)
        .unwrap();
    let before = last_seq(&w);
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = Uuid::new_v4();
        diesel::insert_into(g::table)
            .values((
                g::id.eq(id),
                g::user_id.eq(doc_b.as_uuid()),
                g::patient_id.eq(p),
                g::facility_id.eq(facility),
                g::mode.eq("emergency"),
                g::reason_code.eq("emergency-treatment"),
                g::justification.eq(WHY),
                g::minutes.eq(1),
                g::status.eq("active"),
                g::requested_at.eq(now - chrono::Duration::minutes(3)),
                g::activated_at.eq(Some(now - chrono::Duration::minutes(3))),
                g::expires_at.eq(Some(now - chrono::Duration::seconds(60 + i))),
                g::review_due_at.eq(now + chrono::Duration::days(7)),
            ))
            .execute(&mut conn)
            .unwrap();
        ids.push(id);
    }
    let res = w
        .app
        .client
        .post(w.app.url("/api/test/expiry-sweeps"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The background sweepers of both instances have had their turns too.
    tokio::time::sleep(custodian::access::expiry::SWEEP_EVERY * 2).await;
    let events = events_after(&w, before);
    for id in &ids {
        let ends: Vec<&Row> = events
            .iter()
            .filter(|e| e.0 == "break-glass-end" && e.4 == Some(*id))
            .collect();
        assert_eq!(ends.len(), 1, "{id}: {ends:?}");
        assert_eq!(ends[0].1, "deny");
    }
    let active: i64 = g::table
        .filter(g::status.eq("active"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(active, 0);
    // These rows were written as before justifications were sealed (clear text): what
    // start-up does with such rows seals them, and the clear column is emptied.
    let sealed = custodian::db::break_glass::seal_clear_text(&mut conn, &w.keyring).unwrap();
    assert_eq!(sealed, 40);
    let clear: i64 = g::table
        .filter(g::justification.is_not_null())
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(clear, 0);
    let place = custodian::crypto::columns::break_glass_grants::JUSTIFICATION.at(ids[0]);
    let sealed: Option<Vec<u8>> = g::table
        .find(ids[0])
        .select(g::justification_sealed)
        .first(&mut conn)
        .unwrap();
    assert_eq!(w.keyring.open_str(&place, &sealed.unwrap()).unwrap(), WHY);
    drop(other);
    let (ok, text) = audit_verify(&w.app.db.url);
    assert!(ok, "{text}");
}

/// A grant opens its patient in searches too (the search scope, not the handlers): the
/// holder finds the patient and its Observations, never another patient's; each patient
/// found because of a grant is audited under it (grant id, purpose BTG); revoked, and
/// past its expiry on the application clock (before any sweep), the searches are back
/// to the care team.
#[tokio::test]
async fn a_grant_widens_searches_to_its_patient_until_it_ends() {
    let w = world().await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    w.user("dr-b", &[Role::Clinician]);
    let p = w.create(&doc_a, &patient_json("MRN-W1", "Widened")).await;
    let q = w
        .create(&doc_a, &patient_json("MRN-W2", "Notgranted"))
        .await;
    for patient in [p, q] {
        let res = w
            .send(
                Method::POST,
                "/fhir/Observation",
                &doc_a,
                Some(&observation_json(patient)),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let entries = |v: &Value| -> Vec<String> {
        v["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let subjects = |v: &Value| -> Vec<String> {
        v["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        e["resource"]["subject"]["reference"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let search = |path: &'static str, token: String| {
        let w = &w;
        async move {
            let res = w.get(path, &token).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            res.json::<Value>().await.unwrap()
        }
    };
    let mfa = token_at(&w, "dr-b", true, 10);
    assert!(entries(&search("/fhir/Patient", mfa.clone()).await).is_empty());
    assert!(entries(&search("/fhir/Observation", mfa.clone()).await).is_empty());

    let res = break_glass(
        &w,
        &mfa,
        &p.to_string(),
        &body("emergency-treatment", WHY, Some(30)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    let grant = Uuid::parse_str(param(&v, "grant")["valueId"].as_str().unwrap()).unwrap();

    let before = last_seq(&w);
    assert_eq!(
        entries(&search("/fhir/Patient", mfa.clone()).await),
        [p.to_string()]
    );
    assert_eq!(
        subjects(&search("/fhir/Observation", mfa.clone()).await),
        [format!("Patient/{p}")]
    );
    let events = events_after(&w, before);
    let under: Vec<&Row> = events.iter().filter(|e| e.4 == Some(grant)).collect();
    assert_eq!(under.len(), 2, "{events:?}");
    for e in under {
        assert_eq!(
            (e.0.as_str(), e.1.as_str(), e.3.as_deref()),
            ("search", "permit", Some("BTG"))
        );
    }
    let patients_of_grant_events: Vec<Vec<Uuid>> = ae::table
        .filter(ae::seq.gt(before))
        .filter(ae::break_glass_grant_id.eq(grant))
        .select(ae::patient_ids)
        .load(&mut w.app.db.conn())
        .unwrap();
    assert!(patients_of_grant_events.iter().all(|ps| ps == &vec![p]));

    // Past its expiry on the clock (no sweep needed): back to the care team.
    w.app
        .clock()
        .advance(std::time::Duration::from_secs(31 * 60));
    let later = token_at(&w, "dr-b", true, 10);
    assert!(entries(&search("/fhir/Patient", later.clone()).await).is_empty());
    assert!(entries(&search("/fhir/Observation", later.clone()).await).is_empty());

    // A new grant, revoked by its holder: back to the care team at once.
    let res = break_glass(
        &w,
        &later,
        &p.to_string(),
        &body("emergency-treatment", WHY, Some(30)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        entries(&search("/fhir/Patient", later.clone()).await),
        [p.to_string()]
    );
    let res = w
        .send(
            Method::POST,
            &format!("/fhir/Patient/{p}/$break-glass-end"),
            &later,
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(entries(&search("/fhir/Patient", later.clone()).await).is_empty());
    assert!(entries(&search("/fhir/Observation", later).await).is_empty());
    // The care team still sees both.
    let doc_a = token_at(&w, "dr-a", false, 10);
    assert_eq!(entries(&search("/fhir/Patient", doc_a).await).len(), 2);
}

/// A key rotation re-seals the justifications and review notes (the grant and review
/// triggers let only their sealing change): afterwards they open with the new key alone
/// (the old one is retired and not loaded).
#[tokio::test]
async fn a_key_rotation_reseals_justifications_and_review_notes() {
    use custodian::crypto::rotation::{self, RotateOptions};
    use custodian::db::break_glass as grants;
    use custodian::domain::PatientId;
    use custodian::policy::break_glass::{Mode, ValidRequest};
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (b, _) = w.user("dr-b", &[Role::Clinician]);
    let (po, _) = w.user("po", &[Role::PrivacyOfficer]);
    let p = w.create(&doc, &patient_json("MRN-R1", "Rotated")).await;
    let mut conn = w.app.db.conn();
    let request = ValidRequest {
        reason: "urgent-consult".into(),
        justification: WHY.into(),
        minutes: 30,
    };
    let now = chrono::Utc::now();
    let grant = grants::insert(
        &mut conn,
        &w.keyring,
        b,
        PatientId(p),
        w.facility,
        Mode::Emergency,
        &request,
        now,
        7,
        None,
    )
    .unwrap();
    grants::add_review(
        &mut conn,
        &w.keyring,
        grant.id,
        "appropriate",
        "Rotated review notes",
        po,
        now,
    )
    .unwrap();
    let report =
        rotation::rotate_data_keys(&mut conn, &w.keyring, RotateOptions::default(), &mut |_| {})
            .unwrap();
    assert!(report.complete);
    let config = crate::support::TestApp::builder().config(&w.app.db.url);
    let fresh = custodian::app::keys::load_keyring(&config.crypto, &w.app.db.url, 2).unwrap();
    assert_eq!(fresh.loaded_versions(), vec![2]);
    let back = grants::get(&mut conn, grant.id).unwrap().unwrap();
    assert_eq!(back.justification(&fresh).unwrap(), WHY);
    let versions: (Option<i32>,) = g::table
        .find(grant.id.as_uuid())
        .select((g::key_version,))
        .first(&mut conn)
        .unwrap();
    assert_eq!(versions.0, Some(2));
    let reviews = grants::reviews_of(&mut conn, &fresh, grant.id).unwrap();
    assert_eq!(reviews[0].notes, "Rotated review notes");
}
