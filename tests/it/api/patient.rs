//! The PHI API for Patient, end to end: real tokens from a local identity provider, roles
//! and care teams in PostgreSQL, the decision point, views, paging, versioned updates,
//! input checks and the audit event of every request.

use crate::support::world::{ALL_SCOPES, World, patient_json};
use custodian::db::users;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn clinician_creates_and_reads_a_patient_in_the_clinical_view() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-1001", "Canaryson")).await;

    let res = w.get(&format!("/fhir/Patient/{id}"), &doc).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "W/\"1\"");
    assert_eq!(res.headers()["content-type"], "application/fhir+json");
    let p: Value = res.json().await.unwrap();
    crate::api::resources::check_patient(&p);
    assert_eq!(p["name"][0]["family"], "Canaryson");
    assert_eq!(p["name"][0]["given"], json!(["Avery", "Quinn"]));
    assert_eq!(p["birthDate"], "1970-03-04");
    let idents = p["identifier"].as_array().unwrap();
    assert_eq!(idents.len(), 1, "clinicians see the MRN but not the SSN");
    assert_eq!(idents[0]["value"], "MRN-1001");
    assert!(!p.to_string().contains("123-45-6789"));

    let events = w.audit_events();
    let last = events.last().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("read", "permit"));
    assert_eq!(last.2, vec![id]);
}

#[tokio::test]
async fn a_disabled_account_reads_nothing_even_with_bad_input() {
    // Patient read loads the account, decides and fetches in one blocking hop: the account
    // checks still come first, before any input error or any PHI.
    let w = World::new().await;
    let (doc_id, doc) = w.user("dr-gone", &[Role::Clinician]);
    let id = w
        .create(&doc, &patient_json("MRN-1002", "Disabledson"))
        .await;
    assert_eq!(
        w.get(&format!("/fhir/Patient/{id}"), &doc).await.status(),
        StatusCode::OK
    );
    diesel::sql_query("UPDATE users SET disabled_at = now() WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(doc_id)
        .execute(&mut w.app.db.conn())
        .unwrap();
    for path in [
        format!("/fhir/Patient/{id}"),
        format!("/fhir/Patient/{id}?_elements=secretField"),
        format!("/fhir/Patient/{id}?unknown=1"),
        "/fhir/Patient/not-a-uuid".to_string(),
    ] {
        let before = crate::api::attribution::last_seq(&w.app);
        let res = w.get(&path, &doc).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("Disabledson"), "{path}");
        let events = w.audit_events();
        let last = events.last().unwrap();
        // Authentication succeeded: a refused read by a known account, not a failed login
        // (this test expected `login-failed` by nobody before attribution was fixed).
        assert_eq!(
            (last.0.as_str(), last.1.as_str()),
            ("read", "deny"),
            "{path}"
        );
        assert!(last.2.is_empty(), "{path}");
        let new = crate::api::attribution::events_after(&w.app, before);
        assert_eq!(new.len(), 1, "{path}");
        assert_eq!(new[0].reason.as_deref(), Some("revoked"), "{path}");
        assert_eq!(new[0].actor, Some(doc_id.as_uuid()), "{path}");
    }
}

#[tokio::test]
async fn clinician_outside_the_care_team_is_denied_and_audited() {
    let w = World::new().await;
    let (_, doc_a) = w.user("dr-a", &[Role::Clinician]);
    let (_, doc_b) = w.user("dr-b", &[Role::Clinician]);
    let id = w
        .create(&doc_a, &patient_json("MRN-2001", "Privateer"))
        .await;

    // A clinician may break glass: refused, and told how (issue 13); nothing of the
    // record is revealed. (Roles that may not break glass still get 404:
    // `api/break_glass.rs`, and the route walk.)
    let res = w.get(&format!("/fhir/Patient/{id}"), &doc_b).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "break-glass is available to a clinician"
    );
    let text = res.text().await.unwrap();
    assert!(!text.contains("Privateer"));
    assert!(text.contains("$break-glass"), "{text}");
    let last = w.audit_events().pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("read", "deny"));
    assert_eq!(last.2, vec![id]);

    // Search never reveals the other clinician's patients either.
    let res = w.get("/fhir/Patient?family=Privateer", &doc_b).await;
    let bundle: Value = res.json().await.unwrap();
    // No match: no `entry` at all (FHIR JSON has no empty arrays).
    assert!(bundle.get("entry").is_none(), "{bundle}");
}

#[tokio::test]
async fn admins_and_privacy_officers_read_no_clinical_phi() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-3001", "Guarded")).await;
    for (sub, role) in [("admin-1", Role::Admin), ("po-1", Role::PrivacyOfficer)] {
        let (_, token) = w.user(sub, &[role]);
        let res = w.get(&format!("/fhir/Patient/{id}"), &token).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{role:?}");
        let body = res.text().await.unwrap();
        assert!(body.contains("role does not permit"), "{body}");
        assert!(!body.contains("Guarded"));
    }
}

#[tokio::test]
async fn a_removed_role_takes_effect_on_the_next_request_with_the_same_token() {
    let w = World::new().await;
    let (doc_id, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-4001", "Revocable")).await;
    assert_eq!(
        w.get(&format!("/fhir/Patient/{id}"), &doc).await.status(),
        StatusCode::OK
    );
    users::revoke_role(
        &mut w.app.db.conn(),
        doc_id,
        Role::Clinician,
        "left the team",
        None,
    )
    .unwrap();
    assert_eq!(
        w.get(&format!("/fhir/Patient/{id}"), &doc).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_new_user_has_no_access_until_a_role_is_granted() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-4501", "Nobody")).await;
    let stranger = w.token("first-time-user", ALL_SCOPES);
    assert_eq!(
        w.get(&format!("/fhir/Patient/{id}"), &stranger)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.get("/fhir/Patient?family=Nobody", &stranger)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn missing_scope_denies_even_with_the_role() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-5001", "Scoped")).await;
    let narrow = w.token("dr-a", "user/Observation.rs");
    let res = w.get(&format!("/fhir/Patient/{id}"), &narrow).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("scope"));
}

#[tokio::test]
async fn billing_sees_the_ssn_and_elements_can_only_narrow_a_view() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, billing) = w.user("billing-1", &[Role::Billing]);
    let id = w.create(&doc, &patient_json("MRN-6001", "Payer")).await;

    let p: Value = w
        .get(&format!("/fhir/Patient/{id}"), &billing)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        p.to_string().contains("123-45-6789"),
        "billing's view has the SSN"
    );
    assert!(p.get("telecom").is_none(), "billing's view has no telecom");

    let p: Value = w
        .get(&format!("/fhir/Patient/{id}?_elements=identifier"), &doc)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !p.to_string().contains("123-45-6789"),
        "_elements cannot add the SSN"
    );
    assert!(p.get("name").is_none(), "_elements narrows");
    assert!(p.get("identifier").is_some());

    let bad = w
        .get(&format!("/fhir/Patient/{id}?_elements=secretField"), &doc)
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn patients_read_only_their_own_record() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let mine = w.create(&doc, &patient_json("MRN-7001", "Selfton")).await;
    let other = w.create(&doc, &patient_json("MRN-7002", "Otherton")).await;
    let (pid, _) = w.user("patient-1", &[Role::Patient]);
    users::link_patient(&mut w.app.db.conn(), pid, Some(mine.into())).unwrap();
    let token = w.token("patient-1", "patient/Patient.rs");
    assert_eq!(
        w.get(&format!("/fhir/Patient/{mine}"), &token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        w.get(&format!("/fhir/Patient/{other}"), &token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn search_pages_with_opaque_cursors_that_cannot_be_forged() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    for i in 0..5 {
        w.create(&doc, &patient_json(&format!("MRN-80{i}"), "Pager"))
            .await;
    }
    w.create(&doc, &patient_json("MRN-8099", "Elsewhere")).await;

    let mut seen = Vec::new();
    let mut next = Some("/fhir/Patient?family=pager&_count=2".to_string());
    while let Some(url) = next.take() {
        let res = w.get(&url, &doc).await;
        assert_eq!(res.status(), StatusCode::OK);
        let b: Value = res.json().await.unwrap();
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().unwrap() {
            assert_eq!(e["resource"]["name"][0]["family"], "Pager");
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
        }
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 5);
    let last = w.audit_events().pop().unwrap();
    assert_eq!(last.0, "search");

    let forged = w
        .get(
            "/fhir/Patient?family=pager&_cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &doc,
        )
        .await;
    assert_eq!(forged.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let too_many = w.get("/fhir/Patient?_count=1000", &doc).await;
    assert_eq!(too_many.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = w.get("/fhir/Patient?nickname=x", &doc).await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome: Value = unknown.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(outcome.to_string().contains("/fhir/metadata"), "{outcome}");
    assert!(
        !outcome.to_string().contains("nickname"),
        "unknown names are not echoed"
    );

    // Another user cannot use my cursor.
    let (_, doc_b) = w.user("dr-b", &[Role::Clinician]);
    let first: Value = w
        .get("/fhir/Patient?family=pager&_count=2", &doc)
        .await
        .json()
        .await
        .unwrap();
    let next = first["link"][1]["url"].as_str().unwrap().to_string();
    assert_eq!(
        w.get(&next, &doc_b).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn search_by_identifier_uses_the_blind_index() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-9001", "Indexed")).await;
    for q in [
        "identifier=mrn-9001",
        "identifier=urn:custodian:mrn|MRN9001",
        "birthdate=1970-03-04&given=avery%20quinn",
    ] {
        let b: Value = w
            .get(&format!("/fhir/Patient?{q}"), &doc)
            .await
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![id.to_string().as_str()], "{q}");
    }
}

#[tokio::test]
async fn concurrent_conflicting_updates_exactly_one_wins() {
    // The 428 at the end needs the setting that makes If-Match mandatory.
    let w = World::with(|b, _| b.set("fhir.require_if_match", true)).await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-9101", "Racer")).await;
    let path = format!("/fhir/Patient/{id}");
    let update = |family: &str| {
        let mut body = patient_json("MRN-9101", family);
        body["id"] = json!(id.to_string());
        w.app
            .client
            .put(w.app.url(&path))
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(body.to_string())
            .send()
    };
    let (a, b) = tokio::join!(update("Winner"), update("Loser"));
    let mut statuses = vec![a.unwrap().status(), b.unwrap().status()];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::OK, StatusCode::PRECONDITION_FAILED]
    );
    let p: Value = w.get(&path, &doc).await.json().await.unwrap();
    assert_eq!(p["meta"]["versionId"], "2");

    let mut body = patient_json("MRN-9101", "NoEtag");
    body["id"] = json!(id.to_string());
    let res = w.send(reqwest::Method::PUT, &path, &doc, Some(&body)).await;
    assert_eq!(res.status(), StatusCode::PRECONDITION_REQUIRED);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut v = patient_json("MRN-9201", "Fine");
    v["nickname"] = json!("CANARY-UNKNOWN");
    cases.push(("unknown field", v));
    let mut v = patient_json("MRN-9201", &"CANARYLONG".repeat(20));
    v["gender"] = json!("female");
    cases.push(("oversize string", v));
    let mut v = patient_json("MRN-9201", "Fine");
    v["telecom"] = json!(
        (0..50)
            .map(|_| json!({"system":"phone","value":"1"}))
            .collect::<Vec<_>>()
    );
    cases.push(("oversize array", v));
    let mut v = patient_json("MRN-9201", "Fine");
    v["birthDate"] = json!("1970-02-30");
    cases.push(("bad date", v));
    let mut v = patient_json("MRN-9201", "Fine");
    v["gender"] = json!("CANARY-GENDER");
    cases.push(("bad code", v));
    let mut v = patient_json("MRN-9201", "Fine");
    v["identifier"][0]["value"] = json!("<script>alert(1)</script>");
    cases.push(("script markup in an identifier", v));
    for (case, body) in cases {
        let res = w
            .send(reqwest::Method::POST, "/fhir/Patient", &doc, Some(&body))
            .await;
        assert!(res.status().is_client_error(), "{case}: {}", res.status());
        let text = res.text().await.unwrap();
        let outcome: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{case}");
        assert!(
            !text.contains("CANARY") && !text.contains("<script>"),
            "{case}: {text}"
        );
    }
    let count: i64 = custodian::db::schema::patients::table
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(count, 0, "nothing stored on rejection");
}

#[tokio::test]
async fn a_tampered_or_moved_ciphertext_is_a_generic_500_never_garbage() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let a = w.create(&doc, &patient_json("MRN-9301", "Tampered")).await;
    let b = w.create(&doc, &patient_json("MRN-9302", "Donor")).await;
    let mut c = w.app.db.conn();
    // Flip one byte of a's family name.
    diesel::sql_query(
        "UPDATE patients SET family_sealed = overlay(family_sealed placing decode(lpad(to_hex((get_byte(family_sealed, 30) + 1) % 256), 2, '0'), 'hex') from 31 for 1) WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(a)
    .execute(&mut c)
    .unwrap();
    let res = w.get(&format!("/fhir/Patient/{a}"), &doc).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("Tampered") && !text.contains("MRN-9301"),
        "{text}"
    );

    // Move a's (valid) given-name ciphertext onto b's row.
    diesel::sql_query("UPDATE patients SET given_sealed = (SELECT given_sealed FROM patients WHERE id = $2) WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(b)
        .bind::<diesel::sql_types::Uuid, _>(a)
        .execute(&mut c)
        .unwrap();
    let res = w.get(&format!("/fhir/Patient/{b}"), &doc).await;
    assert_eq!(
        res.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "a value moved from another row does not open"
    );
    assert!(!res.text().await.unwrap().contains("Avery"));
}

#[tokio::test]
async fn every_request_to_a_phi_route_leaves_exactly_one_audit_event() {
    // "no If-Match" is a refusal only when the setting makes If-Match mandatory.
    let w = World::with(|b, _| b.set("fhir.require_if_match", true)).await;
    let (doc_id, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-9401", "Counted")).await;
    let path = format!("/fhir/Patient/{id}");
    let mut body = patient_json("MRN-9401", "Counted");
    body["id"] = json!(id.to_string());
    let c = &w.app.client;
    let auth = format!("Bearer {doc}");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "read",
            c.get(w.app.url(&path)).header("authorization", &auth),
            200,
        ),
        (
            "bad _elements",
            c.get(w.app.url(&format!("{path}?_elements=x")))
                .header("authorization", &auth),
            422,
        ),
        (
            "unknown search parameter",
            c.get(w.app.url("/fhir/Patient?nickname=x"))
                .header("authorization", &auth),
            422,
        ),
        (
            "unknown field",
            c.post(w.app.url("/fhir/Patient"))
                .header("authorization", &auth)
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Patient", "bogus": 1}).to_string()),
            422,
        ),
        (
            "wrong content type",
            c.post(w.app.url("/fhir/Patient"))
                .header("authorization", &auth)
                .header("content-type", "text/plain")
                .body("x"),
            415,
        ),
        (
            "no If-Match",
            c.put(w.app.url(&path))
                .header("authorization", &auth)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
            428,
        ),
        (
            "data after the JSON document",
            c.post(w.app.url("/fhir/Patient"))
                .header("authorization", &auth)
                .header("content-type", "application/fhir+json")
                .body(format!("{}{{}}", patient_json("MRN-9402", "Twice"))),
            400,
        ),
        (
            "malformed JSON",
            c.post(w.app.url("/fhir/Patient"))
                .header("authorization", &auth)
                .header("content-type", "application/fhir+json")
                .body("{"),
            400,
        ),
        ("no token", c.get(w.app.url(&path)), 401),
        (
            "no token, a bad query",
            c.get(w.app.url("/fhir/Patient?nickname=x")),
            401,
        ),
        (
            "no token, a token in the query",
            c.get(w.app.url("/fhir/Patient?access_token=x")),
            401,
        ),
        (
            "no token, a bad body",
            c.post(w.app.url("/fhir/Patient"))
                .header("content-type", "text/plain")
                .body("x"),
            401,
        ),
        (
            "garbage token",
            c.get(w.app.url(&path))
                .header("authorization", "Bearer abc.def.ghi"),
            401,
        ),
        (
            "bad purpose of use",
            c.get(w.app.url(&path))
                .header("authorization", &auth)
                .header("x-purpose-of-use", "SNOOP"),
            400,
        ),
    ];
    for (case, req, status) in cases {
        let before = w.audit_events().len();
        let seq = crate::api::attribution::last_seq(&w.app);
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{case}");
        let events = w.audit_events();
        assert_eq!(events.len(), before + 1, "{case}: exactly one audit event");
        // The actor whenever authentication succeeded, nobody otherwise.
        let new = crate::api::attribution::events_after(&w.app, seq);
        let actor = if status == 401 {
            None
        } else {
            Some(doc_id.as_uuid())
        };
        assert_eq!(new[0].actor, actor, "{case}: the actor");
        let last = events.last().unwrap();
        let expected_outcome = if status == 200 {
            "permit"
        } else if status == 401 {
            "deny"
        } else {
            "error"
        };
        assert_eq!(last.1, expected_outcome, "{case}");
    }
}

/// A write and its audit event commit together: when the event cannot be stored, the
/// client gets 503 and the change is not there either.
#[tokio::test]
async fn a_write_whose_audit_event_fails_is_rolled_back_with_503() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-9201", "Before")).await;
    let path = format!("/fhir/Patient/{id}");
    let events_before = w.audit_events().len();
    let mut c = w.app.db.conn();
    diesel::sql_query(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'audit store refused (test)'; END $$",
    )
    .execute(&mut c)
    .unwrap();
    diesel::sql_query(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    )
    .execute(&mut c)
    .unwrap();

    let mut body = patient_json("MRN-9201", "After");
    body["id"] = json!(id.to_string());
    let res = w
        .app
        .client
        .put(w.app.url(&path))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A create fails the same way and leaves nothing behind.
    let res = w
        .send(
            reqwest::Method::POST,
            "/fhir/Patient",
            &doc,
            Some(&patient_json("MRN-9202", "Never")),
        )
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    diesel::sql_query("DROP TRIGGER refuse_audit ON audit_events")
        .execute(&mut c)
        .unwrap();
    let res = w.get(&path, &doc).await;
    assert_eq!(res.status(), StatusCode::OK);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["meta"]["versionId"], "1", "the update was rolled back");
    assert_eq!(p["name"][0]["family"], "Before");
    let n: i64 = custodian::db::schema::patients::table
        .count()
        .get_result(&mut c)
        .unwrap();
    assert_eq!(n, 1, "the create was rolled back");
    // Only the read above was audited since the trigger went.
    assert_eq!(w.audit_events().len(), events_before + 1);

    // With the audit store back, the same update goes through.
    let res = w
        .app
        .client
        .put(w.app.url(&path))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Patient answers like the other resources: a denied search is a 403 (not a 404), an
/// update answers the full resource in the caller's view (not a stub), and a create
/// answers the caller's view (not a fixed demographic field set).
#[tokio::test]
async fn patient_answers_like_the_other_resources() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-9401", "Sameson")).await;

    // Create: the clinical view, telecom and address included, SSN not.
    let res = w
        .send(
            reqwest::Method::POST,
            "/fhir/Patient",
            &doc,
            Some(&patient_json("MRN-9402", "Viewson")),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["name"][0]["family"], "Viewson");
    assert_eq!(created["telecom"][0]["value"], "555-0100");
    assert_eq!(created["address"][0]["city"], "Testville");
    assert!(!created.to_string().contains("123-45-6789"));

    // Update: the full resource in the view, with the new version.
    let mut body = patient_json("MRN-9401", "Renamedson");
    body["id"] = json!(id.to_string());
    let res = w
        .app
        .client
        .put(w.app.url(&format!("/fhir/Patient/{id}")))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "W/\"2\"");
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["name"][0]["family"], "Renamedson");
    assert_eq!(updated["birthDate"], "1970-03-04");
    assert_eq!(updated["telecom"][0]["value"], "555-0100");
    assert!(!updated.to_string().contains("123-45-6789"));

    // A billing user without a facility: the same 403 on every search.
    let sub = "billing-nowhere";
    let mut c = w.app.db.conn();
    let u = users::user_for(&mut c, &w.idp.issuer(), sub, users::UserKind::Person).unwrap();
    users::grant_role(&mut c, u.id, Role::Billing, "test setup", None).unwrap();
    drop(c);
    let token = w.token(sub, "user/Patient.rs user/Claim.rs");
    for path in ["/fhir/Patient", "/fhir/Claim"] {
        let before = w.audit_events().len();
        let res = w.get(path, &token).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
        let events = w.audit_events();
        assert_eq!(events.len(), before + 1, "{path}");
        assert_eq!(events.last().unwrap().1, "deny", "{path}");
    }
}
