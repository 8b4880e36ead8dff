//! The administration API end to end: real tokens from the local identity provider, the
//! one admin decision (admin role AND admin scope), changes that take effect on the
//! target's next request, reasons required, and an audit event for every call.

use crate::support::world::{World, patient_json};
use custodian::db::schema::role_assignments;
use custodian::domain::UserId;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const CLINICAL: &str = "user/Patient.cruds user/Observation.cruds";

async fn call(
    w: &World,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = w
        .app
        .client
        .request(method, w.app.url(path))
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    req.send().await.unwrap()
}

/// An admin (role) with a token carrying the `admin` scope.
fn admin(w: &World, sub: &str) -> (UserId, String) {
    let (id, _) = w.user(sub, &[Role::Admin]);
    (id, w.token(sub, "admin"))
}

fn last_event(w: &World) -> (String, String, Vec<Uuid>) {
    w.audit_events().pop().unwrap()
}

#[tokio::test]
async fn admin_assigns_role_and_care_team_which_take_effect_on_next_request() {
    let w = World::new().await;
    let (_, dr_a) = w.user("dr-a", &[Role::Clinician]);
    let patient = w.create(&dr_a, &patient_json("MRN-9001", "Adminson")).await;
    let (dr_b_id, _) = w.user("dr-b", &[]);
    let dr_b = w.token("dr-b", CLINICAL);
    let (_, root) = admin(&w, "root");
    let read = format!("/fhir/Patient/{patient}");

    assert_ne!(w.get(&read, &dr_b).await.status(), StatusCode::OK);

    let res = call(
        &w,
        Method::POST,
        "/api/admin/care-teams",
        &root,
        Some(json!({"patient_id": patient, "user_id": dr_b_id, "reason": "covering ward 3"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let ev = last_event(&w);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("care-relationship-change", "permit")
    );
    assert_eq!(ev.2, vec![patient]);

    // On the care team but without the clinician role: still refused.
    assert_ne!(w.get(&read, &dr_b).await.status(), StatusCode::OK);

    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{dr_b_id}/roles"),
        &root,
        Some(json!({"role": "clinician", "reason": "new hire, cardiology"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["roles"], json!(["clinician"]));
    let ev = last_event(&w);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("permission-change", "permit")
    );
    let reason: String = role_assignments::table
        .filter(role_assignments::user_id.eq(dr_b_id))
        .select(role_assignments::reason)
        .first(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(reason, "new hire, cardiology");

    // Same token, next request: the role is read fresh from the database.
    assert_eq!(w.get(&read, &dr_b).await.status(), StatusCode::OK);

    // Revoke (reason in the query) and remove from the care team (reason in the body).
    let res = call(
        &w,
        Method::DELETE,
        &format!("/api/admin/users/{dr_b_id}/roles/clinician?reason=left+the+ward"),
        &root,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(last_event(&w).0, "permission-change");
    assert_ne!(w.get(&read, &dr_b).await.status(), StatusCode::OK);
    let res = call(
        &w,
        Method::DELETE,
        "/api/admin/care-teams",
        &root,
        Some(json!({"patient_id": patient, "user_id": dr_b_id, "reason": "rotation ended"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let ev = last_event(&w);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("care-relationship-change", "permit")
    );
}

#[tokio::test]
async fn admin_api_refuses_non_admins_even_with_the_admin_scope() {
    let w = World::new().await;
    let (target, _) = w.user("someone", &[]);
    let _ = w.user("dr-a", &[Role::Clinician, Role::PrivacyOfficer]);
    let token = w.token("dr-a", "admin user/Patient.cruds");
    let before = w.audit_events().len();
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{target}/roles"),
        &token,
        Some(json!({"role": "admin", "reason": "let me in please"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.text().await.unwrap().contains("admin role"));
    let events = w.audit_events();
    assert_eq!(events.len(), before + 1);
    let ev = events.last().unwrap();
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("permission-change", "deny")
    );
    let n: i64 = role_assignments::table
        .filter(role_assignments::user_id.eq(target))
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(n, 0);

    let res = call(&w, Method::GET, "/api/admin/users", &token, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let ev = last_event(&w);
    assert_eq!((ev.0.as_str(), ev.1.as_str()), ("search", "deny"));
}

#[tokio::test]
async fn admin_role_without_admin_scope_is_refused() {
    let w = World::new().await;
    let _ = w.user("root", &[Role::Admin]);
    let token = w.token("root", "user/Patient.cruds audit.read");
    let res = call(&w, Method::GET, "/api/admin/users", &token, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("'admin' scope"));
    let ev = last_event(&w);
    assert_eq!((ev.0.as_str(), ev.1.as_str()), ("search", "deny"));
}

#[tokio::test]
async fn admin_changes_without_reason_are_422_naming_the_field() {
    let w = World::new().await;
    let (_, root) = admin(&w, "root");
    let (target, _) = w.user("dr-x", &[Role::Clinician]);
    for (method, path, body) in [
        (
            Method::POST,
            format!("/api/admin/users/{target}/roles"),
            Some(json!({"role": "billing"})),
        ),
        (
            Method::POST,
            format!("/api/admin/users/{target}/roles"),
            Some(json!({"role": "billing", "reason": "x"})),
        ),
        (
            Method::DELETE,
            format!("/api/admin/users/{target}/roles/clinician"),
            None,
        ),
        (
            Method::POST,
            format!("/api/admin/users/{target}/disable"),
            Some(json!({})),
        ),
    ] {
        let before = w.audit_events().len();
        let res = call(&w, method.clone(), &path, &root, body).await;
        assert_eq!(
            res.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path}"
        );
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let text = res.text().await.unwrap();
        assert!(text.contains("'reason'"), "{text}");
        let events = w.audit_events();
        assert_eq!(events.len(), before + 1, "the failed call is audited");
        assert_eq!(events.last().unwrap().1, "error");
    }
    // Nothing changed.
    let n: i64 = role_assignments::table
        .filter(role_assignments::user_id.eq(target))
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(n, 1);
    // An unknown role names its field too; unknown fields are refused.
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{target}/roles"),
        &root,
        Some(json!({"role": "superuser", "reason": "because"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("'role'"));
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{target}/roles"),
        &root,
        Some(json!({"role": "billing", "reason": "because", "extra": 1})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn admin_lists_users_with_paging() {
    let w = World::new().await;
    let (_, root) = admin(&w, "root");
    for i in 0..4 {
        w.user(&format!("user-{i}"), &[Role::Billing]);
    }
    let mut seen = Vec::new();
    let mut path = "/api/admin/users?limit=2".to_string();
    loop {
        let res = call(&w, Method::GET, &path, &root, None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["cache-control"], "no-store");
        let v: Value = res.json().await.unwrap();
        for u in v["users"].as_array().unwrap() {
            for field in [
                "id",
                "issuer",
                "subject",
                "kind",
                "display_name",
                "facility",
                "roles",
                "disabled",
            ] {
                assert!(u.get(field).is_some(), "{field}");
            }
            seen.push(u["subject"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["root", "user-0", "user-1", "user-2", "user-3"]);
    let ev = last_event(&w);
    assert_eq!((ev.0.as_str(), ev.1.as_str()), ("search", "permit"));
    let res = call(&w, Method::GET, "/api/admin/users?limit=0", &root, None).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn admin_manages_facilities_clients_and_disabled_accounts() {
    let w = World::new().await;
    let (root_id, root) = admin(&w, "root");

    let res = call(
        &w,
        Method::POST,
        "/api/admin/facilities",
        &root,
        Some(json!({"name": "North Clinic"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let ev = last_event(&w);
    assert_eq!((ev.0.as_str(), ev.1.as_str()), ("create", "permit"));
    let north: Value = res.json().await.unwrap();
    let north_id = north["id"].as_str().unwrap().to_string();
    let res = call(&w, Method::GET, "/api/admin/facilities", &root, None).await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["facilities"].as_array().unwrap().len(), 2);

    let (dr, dr_token) = w.user("dr-a", &[Role::Clinician]);
    let res = call(
        &w,
        Method::PUT,
        &format!("/api/admin/users/{dr}/facility"),
        &root,
        Some(json!({"facility_id": north_id, "reason": "moved to the north clinic"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let u: Value = res.json().await.unwrap();
    assert_eq!(u["facility"], north_id.as_str());
    assert_eq!(last_event(&w).0, "permission-change");

    // Disable: the target's next request is refused; enable restores it.
    let search = "/fhir/Patient?family=Nobody";
    assert_eq!(w.get(search, &dr_token).await.status(), StatusCode::OK);
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{dr}/disable"),
        &root,
        Some(json!({"reason": "left the organisation"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let ev = last_event(&w);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("permission-change", "permit")
    );
    assert_eq!(
        w.get(search, &dr_token).await.status(),
        StatusCode::FORBIDDEN
    );
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{dr}/enable"),
        &root,
        Some(json!({"reason": "returned from leave"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let ev = last_event(&w);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("permission-change", "permit")
    );
    assert_eq!(w.get(search, &dr_token).await.status(), StatusCode::OK);

    // No self lock-out.
    let res = call(
        &w,
        Method::POST,
        &format!("/api/admin/users/{root_id}/disable"),
        &root,
        Some(json!({"reason": "oops"})),
    )
    .await;
    // A separation-of-duties refusal (was 409 before the rule covered every own change).
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Service clients: a `service` user keyed by (auth.issuer, client_id).
    let res = call(
        &w,
        Method::POST,
        "/api/admin/clients",
        &root,
        Some(json!({"client_id": "lab-feed", "facility_id": north_id, "roles": ["service"]})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["kind"], "service");
    assert_eq!(c["subject"], "lab-feed");
    assert_eq!(c["issuer"], w.idp.issuer());
    assert_eq!(c["roles"], json!(["service"]));
    let ev = last_event(&w);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("permission-change", "permit")
    );
    let res = call(
        &w,
        Method::POST,
        "/api/admin/clients",
        &root,
        Some(json!({"client_id": "lab-feed", "facility_id": north_id, "roles": ["service"]})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = call(
        &w,
        Method::POST,
        "/api/admin/clients",
        &root,
        Some(json!({"client_id": "sneaky", "facility_id": north_id, "roles": ["admin"]})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn admin_changes_keep_their_reasons_in_the_user_history_not_in_the_audit_trail() {
    let w = World::new().await;
    let (_, dr_a) = w.user("dr-a", &[Role::Clinician]);
    let patient = w.create(&dr_a, &patient_json("MRN-9002", "Historic")).await;
    let (dr_b, _) = w.user("dr-b", &[]);
    let (root_id, root) = admin(&w, "root");
    let user_path = format!("/api/admin/users/{dr_b}");
    let steps: [(Method, String, Option<Value>); 6] = [
        (
            Method::POST,
            "/api/admin/care-teams".into(),
            Some(
                json!({"patient_id": patient, "user_id": dr_b, "reason": "ReasonCanary cover ward 3"}),
            ),
        ),
        (
            Method::POST,
            format!("{user_path}/roles"),
            Some(json!({"role": "clinician", "reason": "ReasonCanary new hire"})),
        ),
        (
            Method::DELETE,
            format!("{user_path}/roles/clinician?reason=ReasonCanary+left+the+ward"),
            None,
        ),
        (
            Method::POST,
            format!("{user_path}/disable"),
            Some(json!({"reason": "ReasonCanary on leave"})),
        ),
        (
            Method::POST,
            format!("{user_path}/enable"),
            Some(json!({"reason": "ReasonCanary back"})),
        ),
        (
            Method::DELETE,
            "/api/admin/care-teams".into(),
            Some(
                json!({"patient_id": patient, "user_id": dr_b, "reason": "ReasonCanary rotation ended"}),
            ),
        ),
    ];
    for (method, path, body) in steps {
        let res = call(&w, method.clone(), &path, &root, body).await;
        assert!(
            res.status().is_success(),
            "{method} {path}: {}",
            res.status()
        );
    }
    // Without a reason: still refused, and nothing is added to the history.
    let res = call(
        &w,
        Method::POST,
        &format!("{user_path}/disable"),
        &root,
        Some(json!({})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let res = call(&w, Method::GET, &user_path, &root, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let ev = last_event(&w);
    assert_eq!((ev.0.as_str(), ev.1.as_str()), ("read", "permit"));
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["disabled"], false);
    let history = user["history"].as_array().unwrap();
    let got: Vec<(String, Value, Value, String)> = history
        .iter()
        .map(|h| {
            assert_eq!(h["changed_by"], root_id.to_string());
            (
                h["change"].as_str().unwrap().to_string(),
                h["role"].clone(),
                h["patient_id"].clone(),
                h["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let p = json!(patient);
    let clin = json!("clinician");
    assert_eq!(
        got,
        vec![
            (
                "care_team_removed".into(),
                Value::Null,
                p.clone(),
                "ReasonCanary rotation ended".into()
            ),
            (
                "enabled".into(),
                Value::Null,
                Value::Null,
                "ReasonCanary back".into()
            ),
            (
                "disabled".into(),
                Value::Null,
                Value::Null,
                "ReasonCanary on leave".into()
            ),
            (
                "role_revoked".into(),
                clin.clone(),
                Value::Null,
                "ReasonCanary left the ward".into()
            ),
            (
                "role_granted".into(),
                clin,
                Value::Null,
                "ReasonCanary new hire".into()
            ),
            (
                "care_team_added".into(),
                Value::Null,
                p,
                "ReasonCanary cover ward 3".into()
            ),
        ],
        "newest first"
    );
    // The list view stays small: no history there.
    let res = call(&w, Method::GET, "/api/admin/users", &root, None).await;
    let list: Value = res.json().await.unwrap();
    assert!(
        list["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("history").is_none())
    );
    // Unknown user: 404.
    let res = call(
        &w,
        Method::GET,
        &format!("/api/admin/users/{}", Uuid::new_v4()),
        &root,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Reasons are not in the audit trail.
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT t::text AS row FROM audit_events t")
        .load(&mut w.app.db.conn())
        .unwrap();
    assert!(rows.len() > 7);
    assert!(rows.iter().all(|r| !r.row.contains("ReasonCanary")));
}

#[tokio::test]
async fn moving_a_user_to_another_facility_takes_a_reason_and_is_kept_in_the_history() {
    let w = World::new().await;
    let (root_id, root) = admin(&w, "root");
    let (dr, _) = w.user("dr-m", &[Role::Billing]);
    let res = call(
        &w,
        Method::POST,
        "/api/admin/facilities",
        &root,
        Some(json!({"name": "South Clinic"})),
    )
    .await;
    let south: Value = res.json().await.unwrap();
    let south_id = south["id"].as_str().unwrap().to_string();
    let path = format!("/api/admin/users/{dr}/facility");

    // Without a reason: refused, audited as the failed change, nothing moved.
    let before = w.audit_events().len();
    let res = call(
        &w,
        Method::PUT,
        &path,
        &root,
        Some(json!({"facility_id": south_id})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("'reason'"));
    let events = w.audit_events();
    assert_eq!(events.len(), before + 1);
    let ev = events.last().unwrap();
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("permission-change", "error")
    );

    let res = call(
        &w,
        Method::PUT,
        &path,
        &root,
        Some(json!({"facility_id": south_id, "reason": "FacilityCanary covers the south"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = call(
        &w,
        Method::GET,
        &format!("/api/admin/users/{dr}"),
        &root,
        None,
    )
    .await;
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["facility"], south_id.as_str());
    let history = user["history"].as_array().unwrap();
    // Newest first; the one before is the test setup's role grant.
    assert_eq!(history[0]["change"], "facility_set", "{history:?}");
    assert_eq!(
        history
            .iter()
            .filter(|h| h["change"] == "facility_set")
            .count(),
        1,
        "only the move that happened is kept: {history:?}"
    );
    assert_eq!(history[0]["facility_id"], south_id.as_str());
    assert_eq!(history[0]["reason"], "FacilityCanary covers the south");
    assert_eq!(history[0]["changed_by"], root_id.to_string());

    // The reason is not in the audit trail.
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT t::text AS row FROM audit_events t")
        .load(&mut w.app.db.conn())
        .unwrap();
    assert!(rows.iter().all(|r| !r.row.contains("FacilityCanary")));
}

#[tokio::test]
async fn calls_refused_before_the_handler_are_audited_with_the_routes_action() {
    let w = World::new().await;
    let (_, root) = admin(&w, "root");
    // A body that is not JSON never reaches the operation: the event still names the
    // care-relationship change the route performs (not a generic permission change).
    let before = w.audit_events().len();
    let res = w
        .app
        .client
        .post(w.app.url("/api/admin/care-teams"))
        .header("authorization", format!("Bearer {root}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let events = w.audit_events();
    assert_eq!(events.len(), before + 1);
    let ev = events.last().unwrap();
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        ("care-relationship-change", "error")
    );
    // A non-admin reading a user: a denied read, not a permission change.
    let _ = w.user("dr-r", &[Role::Clinician]);
    let token = w.token("dr-r", "admin");
    let res = call(
        &w,
        Method::GET,
        &format!("/api/admin/users/{}", Uuid::new_v4()),
        &token,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let ev = last_event(&w);
    assert_eq!((ev.0.as_str(), ev.1.as_str()), ("read", "deny"));
}

#[tokio::test]
async fn a_role_is_removed_with_the_reason_in_the_body_or_the_query_and_a_bad_body_is_refused() {
    let w = World::new().await;
    let (_, root) = admin(&w, "root");
    let (target, _) = w.user("dr-q", &[Role::Clinician, Role::Billing]);
    let base = format!("/api/admin/users/{target}/roles");
    let delete = |path: String, content_type: Option<&'static str>, body: &'static str| {
        let mut req = w
            .app
            .client
            .delete(w.app.url(&path))
            .header("authorization", format!("Bearer {root}"));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.body(body).send()
    };
    // A body that is not JSON is refused, not silently replaced by the query.
    let res = delete(
        format!("{base}/billing?reason=left+billing"),
        Some("application/json"),
        "{not json",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A JSON content type without a body: the query's reason.
    let res = delete(
        format!("{base}/billing?reason=left+billing"),
        Some("application/json"),
        "",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The reason in a JSON body.
    let res = delete(
        format!("{base}/clinician"),
        Some("application/json"),
        r#"{"reason": "left the ward"}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["roles"], json!([]));
}

#[tokio::test]
async fn the_caller_is_checked_before_the_body() {
    let w = World::new().await;
    let (target, _) = w.user("dr-b", &[]);
    let path = format!("/api/admin/users/{target}/roles");
    // No token and a body missing its fields: 401, not the body's 422.
    let res = w
        .app
        .client
        .post(w.app.url(&path))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A non-admin with a body that is not even JSON: 403, not 400.
    let _ = w.user("dr-c", &[Role::Clinician]);
    let token = w.token("dr-c", "admin");
    let res = w
        .app
        .client
        .post(w.app.url(&path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}
