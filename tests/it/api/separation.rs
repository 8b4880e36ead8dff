//! Separation of duties over the administration API (issue 18, finding 1): nobody changes
//! their own access, and a change that would give a holder of `admin` or
//! `privacy_officer` a path to PHI is kept for a second administrator instead of being
//! performed. (The approval itself is a console step: `tests/it/console/pages.rs`.)

use crate::support::world::{World, patient_json};
use custodian::db::schema::{audit_events as ae, care_team_members, pending_changes};
use custodian::domain::UserId;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn call(
    w: &World,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> reqwest::Response {
    w.app
        .client
        .request(method, w.app.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// (action, outcome, deny reason, resource id) of the last audit event.
fn last(w: &World) -> (String, String, Option<String>, Option<Uuid>) {
    ae::table
        .order(ae::seq.desc())
        .select((ae::action, ae::outcome, ae::deny_reason, ae::resource_id))
        .first(&mut w.app.db.conn())
        .unwrap()
}

fn roles(w: &World, user: UserId) -> Vec<String> {
    use custodian::db::schema::role_assignments as ra;
    ra::table
        .filter(ra::user_id.eq(user))
        .select(ra::role)
        .order(ra::role)
        .load(&mut w.app.db.conn())
        .unwrap()
}

fn on_care_team(w: &World, user: UserId, patient: Uuid) -> bool {
    diesel::select(diesel::dsl::exists(
        care_team_members::table
            .filter(care_team_members::user_id.eq(user))
            .filter(care_team_members::patient_id.eq(patient)),
    ))
    .get_result(&mut w.app.db.conn())
    .unwrap()
}

fn waiting(w: &World) -> i64 {
    pending_changes::table
        .filter(pending_changes::status.eq("pending"))
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap()
}

#[tokio::test]
async fn an_administrator_cannot_give_themself_access_to_a_patient() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let patient = w
        .create(&doc, &patient_json("MRN-SOD-1", "Targetson"))
        .await;
    let (me, _) = w.user("admin.demo", &[Role::Admin]);
    let token = w.token("admin.demo", "admin user/Patient.cruds");
    let north: Value = call(
        &w,
        Method::POST,
        "/api/admin/facilities",
        &token,
        json!({"name": "North"}),
    )
    .await
    .json()
    .await
    .unwrap();

    // The reported chain, step by step, and every other change to one's own access.
    let attempts = [
        (
            Method::POST,
            format!("/api/admin/users/{me}/roles"),
            json!({"role": "clinician", "reason": "covering ward 3"}),
            "permission-change",
        ),
        (
            Method::POST,
            "/api/admin/care-teams".to_string(),
            json!({"patient_id": patient, "user_id": me, "reason": "covering ward 3"}),
            "care-relationship-change",
        ),
        (
            Method::PUT,
            format!("/api/admin/users/{me}/facility"),
            json!({"facility_id": north["id"], "reason": "moving north"}),
            "permission-change",
        ),
        (
            Method::POST,
            format!("/api/admin/users/{me}/roles"),
            json!({"role": "privacy_officer", "reason": "also reviewing"}),
            "permission-change",
        ),
        (
            Method::DELETE,
            format!("/api/admin/users/{me}/roles/admin"),
            json!({"reason": "stepping down"}),
            "permission-change",
        ),
        (
            Method::POST,
            format!("/api/admin/users/{me}/disable"),
            json!({"reason": "leaving"}),
            "permission-change",
        ),
    ];
    for (method, path, body, action) in attempts {
        let res = call(&w, method.clone(), &path, &token, body).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let text = res.text().await.unwrap();
        assert!(text.contains("your own access"), "{text}");
        assert_eq!(
            last(&w),
            (
                action.to_string(),
                "deny".to_string(),
                Some("separation-of-duties".to_string()),
                Some(me.as_uuid())
            ),
            "{method} {path}"
        );
    }
    assert_eq!(roles(&w, me), vec!["admin"], "nothing changed");
    assert!(!on_care_team(&w, me, patient));
    assert_eq!(waiting(&w), 0, "an own change is refused, not queued");
    // And so the patient's record stays out of reach.
    let res = w.get(&format!("/fhir/Patient/{patient}"), &token).await;
    assert_ne!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_path_to_phi_for_an_administrator_waits_for_a_second_one() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let patient = w.create(&doc, &patient_json("MRN-SOD-2", "Queueson")).await;
    let (_, root) = (w.user("root", &[Role::Admin]).0, w.token("root", "admin"));
    let (other, _) = w.user("admin-2", &[Role::Admin]);
    let (po, _) = w.user("po-1", &[Role::PrivacyOfficer]);
    let (nurse, _) = w.user("nurse-1", &[Role::Clinician]);
    let other_token = w.token("admin-2", "user/Patient.cruds");

    let requests = [
        (
            format!("/api/admin/users/{other}/roles"),
            json!({"role": "clinician", "reason": "covering ward 3"}),
            other,
        ),
        (
            "/api/admin/care-teams".to_string(),
            json!({"patient_id": patient, "user_id": po, "reason": "case review"}),
            po,
        ),
        (
            format!("/api/admin/users/{nurse}/roles"),
            json!({"role": "admin", "reason": "ward administrator"}),
            nurse,
        ),
    ];
    for (i, (path, body, target)) in requests.into_iter().enumerate() {
        let before = roles(&w, target);
        let res = call(&w, Method::POST, &path, &root, body).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["status"], "pending");
        let id = Uuid::parse_str(v["pending_change_id"].as_str().unwrap()).unwrap();
        let ev = last(&w);
        assert_eq!(
            (ev.0.as_str(), ev.1.as_str(), ev.3),
            ("change-requested", "permit", Some(id))
        );
        assert_eq!(roles(&w, target), before, "not performed: {path}");
        assert_eq!(waiting(&w), i as i64 + 1);
    }
    assert!(!on_care_team(&w, po, patient));
    // Until approved, the administrator still reads no PHI.
    let res = w
        .get(&format!("/fhir/Patient/{patient}"), &other_token)
        .await;
    assert_ne!(res.status(), StatusCode::OK);

    // People without a console role are changed at once, as before.
    let (clerk, _) = w.user("clerk-1", &[]);
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{clerk}/roles"),
        &root,
        json!({"role": "billing", "reason": "billing office"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(roles(&w, clerk), vec!["billing"]);
    // Removing access never waits.
    let res = w
        .app
        .client
        .delete(w.app.url(&format!(
            "/api/admin/users/{nurse}/roles/clinician?reason=left+the+ward"
        )))
        .header("authorization", format!("Bearer {root}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(waiting(&w), 3);
}
