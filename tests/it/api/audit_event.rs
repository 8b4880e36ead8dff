//! The audit trail as FHIR `AuditEvent` resources (`/fhir/AuditEvent`): a privacy
//! officer searches it by each parameter and reads one event; a patient sees only the
//! events about their own record, each naming no other patient; callers without the
//! `audit.read` scope or a reviewing role are refused; no name or MRN reaches an event;
//! and every read and search of the trail is itself recorded. (The resources are
//! validated as R4 by the independent validator in `api/interop.rs`.)

use crate::api::attribution::{events_after, last_seq};
use crate::support::world::{World, patient_json};
use custodian::db::users;
use custodian::policy::Role;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

async fn bundle(w: &World, query: &str, token: &str) -> Value {
    let res = w.get(&format!("/fhir/AuditEvent{query}"), token).await;
    assert_eq!(res.status(), StatusCode::OK, "{query}");
    res.json().await.unwrap()
}

fn entries(b: &Value) -> Vec<Value> {
    b["entry"]
        .as_array()
        .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

fn names_patient(e: &Value, p: Uuid) -> bool {
    e["entity"].as_array().is_some_and(|es| {
        es.iter()
            .any(|x| x["what"]["reference"] == format!("Patient/{p}"))
    })
}

fn patients_named(e: &Value) -> Vec<String> {
    e["entity"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|x| x["what"]["reference"].as_str())
                .filter(|r| r.starts_with("Patient/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

struct Trail {
    w: World,
    doc_id: Uuid,
    mine: Uuid,
    other: Uuid,
}

/// A clinician creates two patients, reads each, searches both and is refused once.
async fn trail() -> Trail {
    let w = World::new().await;
    let (doc_id, doc) = w.user("dr-a", &[Role::Clinician]);
    let mine = w.create(&doc, &patient_json("MRN-8001", "Trailer")).await;
    let other = w.create(&doc, &patient_json("MRN-8002", "Trailer")).await;
    for p in [mine, other] {
        let res = w.get(&format!("/fhir/Patient/{p}"), &doc).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let found: Value = w
        .get("/fhir/Patient?family=trailer", &doc)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["entry"].as_array().unwrap().len(), 2);
    // A denial: the clinician may not read claims.
    let res = w.get(&format!("/fhir/Claim?patient={mine}"), &doc).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    Trail {
        w,
        doc_id: doc_id.as_uuid(),
        mine,
        other,
    }
}

#[tokio::test]
async fn a_privacy_officer_searches_by_each_parameter_reads_one_event_and_is_recorded() {
    let Trail {
        w,
        doc_id,
        mine,
        other,
    } = trail().await;
    w.user("po", &[Role::PrivacyOfficer]);
    let po = w.token("po", "audit.read");

    // patient: every event naming the patient, the search that returned both included.
    let about = entries(&bundle(&w, &format!("?patient={mine}"), &po).await);
    assert!(about.iter().all(|e| names_patient(e, mine)), "{about:?}");
    let subtypes: Vec<&str> = about
        .iter()
        .map(|e| e["subtype"][0]["code"].as_str().unwrap())
        .collect();
    // Newest first: the search, the read, the create (the refused claim search was
    // refused before the patient it named was looked at, so it names nobody).
    assert_eq!(subtypes, vec!["search-type", "read", "create"], "{about:?}");
    let search = &about[0];
    assert_eq!(search["type"]["code"], "rest");
    assert_eq!(search["action"], "E");
    assert_eq!(search["outcome"], "0");
    assert_eq!(
        search["agent"][0]["who"]["identifier"]["value"],
        doc_id.to_string()
    );
    // A reviewer sees every patient a search returned.
    assert!(names_patient(search, other), "{search}");
    // The Patient/{p} form is the same search — and now finds, first, the reviewer's
    // own search of the trail, which named the patients its answer referenced.
    let again = entries(&bundle(&w, &format!("?patient=Patient/{mine}"), &po).await);
    assert_eq!(again[1..], about[..]);
    assert_eq!(
        again[0]["agent"][0]["role"][0]["coding"][0]["code"],
        "privacy_officer"
    );
    assert_eq!(again[0]["subtype"][1]["code"], "search");
    assert_eq!(again[0]["purposeOfEvent"][0]["coding"][0]["code"], "HCOMPL");

    // agent: the clinician's events only (the reviewer's own are not among them).
    let by_doc = entries(&bundle(&w, &format!("?agent={doc_id}"), &po).await);
    assert_eq!(by_doc.len(), 6, "{by_doc:?}");
    assert!(
        by_doc
            .iter()
            .all(|e| e["agent"][0]["who"]["identifier"]["value"] == doc_id.to_string())
    );
    // outcome: the one denial, with its reason.
    let denied = entries(&bundle(&w, &format!("?agent={doc_id}&outcome=4"), &po).await);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["outcomeDesc"], "missing-role");
    // action, type and subtype name sets of actions; combined they are ANDed.
    let created = entries(&bundle(&w, &format!("?agent={doc_id}&action=C"), &po).await);
    assert_eq!(created.len(), 2);
    let reads = entries(&bundle(&w, &format!("?agent={doc_id}&subtype=read"), &po).await);
    assert_eq!(reads.len(), 2);
    let ours = entries(
        &bundle(
            &w,
            &format!("?agent={doc_id}&subtype=urn:custodian:audit-action|create"),
            &po,
        )
        .await,
    );
    assert_eq!(ours, created);
    let rest = entries(&bundle(&w, &format!("?agent={doc_id}&type=rest"), &po).await);
    assert_eq!(rest.len(), 6);
    let none = entries(&bundle(&w, &format!("?agent={doc_id}&type=110114"), &po).await);
    assert!(none.is_empty());
    let both = entries(&bundle(&w, &format!("?agent={doc_id}&action=C&subtype=read"), &po).await);
    assert!(both.is_empty());
    // date, with prefixes.
    let today = chrono::Utc::now().date_naive();
    let q = |d: &str| format!("?agent={doc_id}&date={d}");
    assert_eq!(
        entries(&bundle(&w, &q(&format!("ge{today}")), &po).await).len(),
        6
    );
    assert_eq!(
        entries(&bundle(&w, &q(&today.to_string()), &po).await).len(),
        6
    );
    assert!(entries(&bundle(&w, &q("lt2020-01-01"), &po).await).is_empty());
    assert!(
        entries(&bundle(&w, &q(&format!("gt{today}")), &po).await).is_empty(),
        "after today"
    );

    // Paging: two pages of three, no event twice.
    let mut seen = Vec::new();
    let mut page = bundle(&w, &format!("?agent={doc_id}&_count=3"), &po).await;
    loop {
        seen.extend(entries(&page).iter().map(|e| e["id"].clone()));
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        let Some(next) = next else { break };
        let rel = &next[next.find("/fhir/").unwrap()..];
        let res = w.get(rel, &po).await;
        assert_eq!(res.status(), StatusCode::OK);
        page = res.json().await.unwrap();
    }
    assert_eq!(
        seen,
        by_doc.iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );

    // Read by id answers the searched resource; an unknown id is a 404.
    let id = about[0]["id"].as_str().unwrap();
    let res = w.get(&format!("/fhir/AuditEvent/{id}"), &po).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), about[0]);
    let missing = w
        .get(&format!("/fhir/AuditEvent/{}", Uuid::new_v4()), &po)
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // No name or MRN anywhere in the trail.
    let all = bundle(&w, "?_count=100", &po).await.to_string();
    assert!(
        !all.contains("Trailer") && !all.contains("trailer"),
        "{all}"
    );
    assert!(!all.contains("MRN-800"), "{all}");

    // Bad input: a clear 4xx that does not echo the value.
    for bad in [
        "?date=ne2026-01-01",
        "?date=2026-01-01,2026-02-01",
        "?outcome=SECRET-9",
        "?agent=SECRET-x",
        "?patient=SECRET-x",
        "?_cursor=SECRET-x",
        "?nickname=SECRET-x",
        "?_count=1000",
    ] {
        let res = w.get(&format!("/fhir/AuditEvent{bad}"), &po).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(!res.text().await.unwrap().contains("SECRET"), "{bad}");
    }

    // Reading the trail is recorded: as the reviewer, purpose HCOMPL, naming the
    // patients the answer referenced.
    let before = last_seq(&w.app);
    bundle(&w, &format!("?patient={mine}"), &po).await;
    let res = w.get(&format!("/fhir/AuditEvent/{id}"), &po).await;
    assert_eq!(res.status(), StatusCode::OK);
    let recorded = events_after(&w.app, before);
    let kinds: Vec<(&str, Option<&str>, &str)> = recorded
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.resource_type.as_deref(),
                e.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("search", Some("AuditLog"), "permit"),
            ("read", Some("AuditLog"), "permit")
        ]
    );
    let rows = w.audit_events();
    let (_, _, named) = &rows[rows.len() - 2];
    assert!(named.contains(&mine) && named.contains(&other), "{named:?}");
    use diesel::prelude::*;
    let purposes: Vec<Option<String>> = {
        use custodian::db::schema::audit_events::dsl::*;
        audit_events
            .filter(seq.gt(before))
            .select(purpose_of_use)
            .load(&mut w.app.db.conn())
            .unwrap()
    };
    assert!(purposes.iter().all(|p| p.as_deref() == Some("HCOMPL")));
}

#[tokio::test]
async fn a_patient_sees_only_events_about_their_own_record_naming_no_one_else() {
    let Trail { w, mine, other, .. } = trail().await;
    let (pid, _) = w.user("patient-1", &[Role::Patient]);
    users::link_patient(&mut w.app.db.conn(), pid, Some(mine.into())).unwrap();
    let token = w.token("patient-1", "audit.read");

    let seen = entries(&bundle(&w, "?_count=100", &token).await);
    // Create, read and the search of the clinician, and no event about the other
    // patient alone.
    assert_eq!(seen.len(), 3, "{seen:?}");
    for e in &seen {
        assert_eq!(patients_named(e), vec![format!("Patient/{mine}")], "{e}");
        assert!(e["agent"][0].get("network").is_none(), "{e}");
    }
    assert!(
        !serde_json::to_string(&seen)
            .unwrap()
            .contains(&other.to_string())
    );
    // Asking for another patient finds nothing.
    assert!(entries(&bundle(&w, &format!("?patient={other}"), &token).await).is_empty());
    // Another patient's event answers like a missing one, and the refusal is recorded.
    let theirs: Uuid = {
        use custodian::db::schema::audit_events::dsl::*;
        use diesel::prelude::*;
        audit_events
            .filter(patient_ids.eq(vec![other]))
            .select(event_id)
            .first(&mut w.app.db.conn())
            .unwrap()
    };
    let before = last_seq(&w.app);
    let res = w.get(&format!("/fhir/AuditEvent/{theirs}"), &token).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let recorded = events_after(&w.app, before);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, "deny");
    assert_eq!(recorded[0].reason.as_deref(), Some("no-relationship"));
    // Their own event reads.
    let own = seen[0]["id"].as_str().unwrap();
    let res = w.get(&format!("/fhir/AuditEvent/{own}"), &token).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn other_roles_and_tokens_without_audit_read_are_refused_and_recorded() {
    let Trail { w, .. } = trail().await;
    w.user("dr-b", &[Role::Clinician, Role::Billing]);
    w.user("po", &[Role::PrivacyOfficer]);
    for (sub, scope) in [
        ("dr-b", "audit.read user/*.cruds"),
        ("po", "user/*.cruds admin"),
    ] {
        let before = last_seq(&w.app);
        let res = w.get("/fhir/AuditEvent", &w.token(sub, scope)).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{sub}");
        let recorded = events_after(&w.app, before);
        assert_eq!(recorded.len(), 1, "{sub}");
        assert_eq!(recorded[0].outcome, "deny", "{sub}");
        assert_eq!(recorded[0].resource_type.as_deref(), Some("AuditLog"));
    }
}
