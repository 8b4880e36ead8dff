//! Console sign-in end to end against a real OpenID provider (npm oidc-provider, see
//! tests/oidc): OIDC code flow, TOTP enrolment and check, sessions, CSRF.

use crate::common::oidc::{self, Provider, location};
use crate::common::{TestApp, TestAppBuilder};
use custodian::db::users::{self, UserKind};
use custodian::policy::Role;
use uuid::Uuid;

/// A console user known to the app: (issuer, subject) with these roles.
fn user_with(app: &TestApp, idp: &Provider, subject: &str, roles: &[Role]) -> Uuid {
    let mut conn = app.db.conn();
    let user = users::user_for(&mut conn, &idp.issuer, subject, UserKind::Person).unwrap();
    for role in roles {
        users::grant_role(&mut conn, user.id, *role, "test bootstrap", None).unwrap();
    }
    user.id
}

async fn start(builder: TestAppBuilder) -> (TestApp, Provider) {
    oidc::console_app(builder).await
}

/// Text of the element with this id (`<code ... id="x">text</code>`), crude but enough
/// for our own templates.
fn text_by_id(html: &str, id: &str) -> String {
    let at = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[at..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap() + open;
    rest[open..close].trim().to_string()
}

fn hidden_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!(r#"name="{name}""#))
        .unwrap_or_else(|| panic!("no field {name} in {html}"));
    let rest = &html[at..];
    let v = rest.find("value=\"").unwrap() + 7;
    let end = rest[v..].find('"').unwrap() + v;
    rest[v..end].to_string()
}

fn totp_code(secret_b32: &str, at_secs: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).unwrap();
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(secret)
        .build()
        .unwrap()
        .generate(at_secs)
        .to_string()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn admin_signs_in_enrols_totp_and_sees_the_dashboard() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let callback = idp.authorize(&app, &app.client, "alice").await;
    assert!(callback.query().unwrap().contains("code="), "{callback}");
    let res = app.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    assert_eq!(location(&res).unwrap().path(), "/console/totp");
    let page = app.get("/console/totp").await.text().await.unwrap();
    let secret = text_by_id(&page, "totp-secret");
    let csrf = hidden_value(&page, "csrf_token");
    let res = app
        .client
        .post(app.url("/console/totp"))
        .header("origin", app.url(""))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("code", &totp_code(&secret, now_secs())),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res).unwrap().path(), "/console");
    let res = app.get("/console").await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.contains("alice"), "{body}");
}
