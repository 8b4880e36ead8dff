//! Console sign-in end to end against a real OpenID provider (npm oidc-provider, see
//! tests/oidc): OIDC code flow, TOTP enrolment and check, sessions, CSRF.

use crate::support::authenticator::{code_b32_at as totp_code, now_secs};
use crate::support::console_events as events;
use crate::support::oidc::{self, Provider, cookie_value, jar_client, location};
use crate::support::{TestApp, TestAppBuilder};
use custodian::db::users::{self, UserKind};
use custodian::domain::UserId;
use custodian::domain::clock::Clock;
use custodian::policy::Role;
use diesel::prelude::*;
use std::time::Duration;

const COOKIE: &str = "__Host-custodian";

/// A console user known to the app: (issuer, subject) with these roles.
fn user_with(app: &TestApp, idp: &Provider, subject: &str, roles: &[Role]) -> UserId {
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

/// One browser: a cookie jar the test can read.
struct CookieClient {
    client: reqwest::Client,
    jar: std::sync::Arc<reqwest::cookie::Jar>,
}

impl CookieClient {
    fn new() -> CookieClient {
        let (client, jar) = jar_client();
        CookieClient { client, jar }
    }

    fn session(&self, app: &TestApp) -> Option<String> {
        cookie_value(&self.jar, &app.url("/"), COOKIE)
    }

    async fn get(&self, app: &TestApp, path: &str) -> reqwest::Response {
        self.client.get(app.url(path)).send().await.unwrap()
    }

    /// POSTs a form from our own origin.
    async fn post(&self, app: &TestApp, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(app.url(path))
            .header("origin", app.url(""))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// OIDC sign-in as `subject` up to the TOTP page; returns that page.
    async fn oidc_sign_in(&self, app: &TestApp, idp: &Provider, subject: &str) -> String {
        let callback = idp.authorize(app, &self.client, subject).await;
        let res = self.client.get(callback.as_str()).send().await.unwrap();
        assert_callback_continues(&res);
        let res = self.get(app, "/console/totp").await;
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// Submits a TOTP code from the current TOTP page; returns the response.
    async fn submit_code(&self, app: &TestApp, page: &str, code: &str) -> reqwest::Response {
        let csrf = hidden_value(page, "csrf_token");
        self.post(
            app,
            "/console/totp",
            &[("csrf_token", &csrf), ("code", code)],
        )
        .await
    }

    /// Full first sign-in (OIDC, TOTP enrolment); returns the TOTP secret.
    async fn enrol(&self, app: &TestApp, idp: &Provider, subject: &str) -> String {
        self.enrol_with_codes(app, idp, subject).await.0
    }

    /// Full first sign-in; returns the TOTP secret and the recovery codes shown.
    async fn enrol_with_codes(
        &self,
        app: &TestApp,
        idp: &Provider,
        subject: &str,
    ) -> (String, Vec<String>) {
        let page = self.oidc_sign_in(app, idp, subject).await;
        let secret = text_by_id(&page, "totp-secret");
        let res = self
            .submit_code(app, &page, &totp_code(&secret, now_secs()))
            .await;
        assert_eq!(res.status(), 200, "TOTP enrolment shows the recovery codes");
        let page = res.text().await.unwrap();
        let codes = recovery_codes(&page);
        assert_eq!(self.get(app, "/console").await.status(), 200);
        (secret, codes)
    }

    /// Where GET `path` sends this browser (`None` when it answers 200).
    async fn lands(&self, app: &TestApp, path: &str) -> Option<String> {
        let res = self.get(app, path).await;
        if res.status() == 200 {
            return None;
        }
        assert_eq!(res.status(), 303, "GET {path}");
        Some(location(&res).unwrap().path().to_string())
    }
}

/// The codes listed on the recovery-codes page.
fn recovery_codes(page: &str) -> Vec<String> {
    let at = page
        .find(r#"id="recovery-codes""#)
        .unwrap_or_else(|| panic!("no recovery codes in {page}"));
    let list = &page[at..page[at..].find("</ul>").unwrap() + at];
    list.split("<code>")
        .skip(1)
        .map(|c| c[..c.find("</code>").unwrap()].to_string())
        .collect()
}

/// Sessions that belong to a user (past the OIDC step).
fn user_sessions(app: &TestApp) -> i64 {
    use custodian::db::schema::console_sessions::dsl::*;
    console_sessions
        .filter(user_id.is_not_null())
        .count()
        .get_result(&mut app.db.conn())
        .unwrap()
}

/// Every `Set-Cookie` for the session cookie in `res`.
fn session_set_cookies(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .filter(|v| v.starts_with(&format!("{COOKIE}=")))
        .collect()
}

/// The callback's answer: our own page that refreshes to the TOTP step (a same-site
/// navigation, so the browser sends the new SameSite=Strict cookie; a redirect would not).
fn assert_callback_continues(res: &reqwest::Response) {
    assert_eq!(res.status(), 200, "callback");
    let refresh = res.headers().get("refresh").map(|v| v.to_str().unwrap());
    assert_eq!(refresh, Some("0; url=/console/totp"));
}

fn assert_cookie_flags(set_cookie: &str) {
    assert_cookie_flags_same_site(set_cookie, "Strict");
}

fn assert_cookie_flags_same_site(set_cookie: &str, same_site: &str) {
    let same_site = format!("SameSite={same_site}");
    for part in ["Secure", "HttpOnly", &same_site, "Path=/"] {
        assert!(
            set_cookie.split("; ").any(|p| p == part),
            "{set_cookie} lacks {part}"
        );
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");
}

/// A code that is none of the codes valid around now.
fn wrong_code(secret: &str) -> String {
    let now = now_secs();
    let valid: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| totp_code(secret, *t))
        .collect();
    (0..1000)
        .map(|n| format!("{:06}", 123_456 + n))
        .find(|c| !valid.contains(c))
        .unwrap()
}

/// Sends `path` with only this cookie (as a copied cookie would be).
async fn get_with_cookie(app: &TestApp, path: &str, session: &str) -> reqwest::Response {
    let (client, _) = jar_client();
    client
        .get(app.url(path))
        .header("cookie", format!("{COOKIE}={session}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_signs_in_enrols_totp_and_sees_the_dashboard() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();

    // The pre-login session: state, nonce and PKCE verifier kept server-side.
    let res = b.get(&app, "/console/login").await;
    assert_eq!(res.status(), 303);
    let set = session_set_cookies(&res);
    assert_eq!(set.len(), 1, "{set:?}");
    // Lax, not Strict: the provider sends the browser back from another site.
    assert_cookie_flags_same_site(&set[0], "Lax");
    let authorize = location(&res).unwrap();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert!(
        q.contains_key("state") && q.contains_key("nonce"),
        "{authorize}"
    );
    // `openid` once (it was sent as `openid openid`).
    assert_eq!(
        q.get("scope").map(String::as_str),
        Some("openid"),
        "{authorize}"
    );
    let pre_login = b.session(&app).unwrap();

    let callback = idp
        .authorize_from(
            &authorize,
            &app.url("/console/callback"),
            &b.client,
            "alice",
        )
        .await;
    let cq: std::collections::HashMap<_, _> = callback.query_pairs().into_owned().collect();
    assert_eq!(cq.get("iss"), Some(&idp.issuer), "RFC 9207 iss: {callback}");
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_callback_continues(&res);
    let set = session_set_cookies(&res);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_cookie_flags(&set[0]);
    let after_login = b.session(&app).unwrap();
    assert_ne!(
        after_login, pre_login,
        "a new session id after the OIDC login"
    );
    // The pre-login id is dead.
    let res = get_with_cookie(&app, "/console/totp", &pre_login).await;
    assert_eq!(location(&res).unwrap().path(), "/console/signin");
    // Not signed in yet: the dashboard sends us to the TOTP step.
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/totp")
    );

    // Enrolment: the secret as text, a confirmation code required.
    let page = b.get(&app, "/console/totp").await.text().await.unwrap();
    let secret = text_by_id(&page, "totp-secret");
    assert!(page.contains("otpauth://totp/"), "{page}");
    // The same link as a QR code, drawn inline (no script, no image request).
    assert!(
        page.contains(r#"<svg class="qr" id="totp-qr" role="img""#),
        "{page}"
    );
    assert!(page.contains(r#"<path d="M4,4h1v1h-1z"#), "{page}");
    let res = b
        .submit_code(&app, &page, &totp_code(&secret, now_secs()))
        .await;
    assert!(
        res.status() == 303 || res.status() == 200,
        "{}",
        res.status()
    );
    let set = session_set_cookies(&res);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_cookie_flags(&set[0]);
    let after_totp = b.session(&app).unwrap();
    assert_ne!(
        after_totp, after_login,
        "a new session id after the TOTP check"
    );
    let res = get_with_cookie(&app, "/console", &after_login).await;
    assert_eq!(location(&res).unwrap().path(), "/console/signin");

    let res = b.get(&app, "/console").await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.contains("alice"), "{body}");
    let ev = events(&app);
    assert!(
        ev.iter().any(|e| e.0 == "login" && e.1 == "permit"),
        "{ev:?}"
    );
    // The TOTP check that completes the sign-in is recorded as a sign-in with MFA, not as
    // a step-up (a step-up is a later check before a sensitive change).
    assert!(!ev.iter().any(|e| e.0 == "step-up"), "{ev:?}");
    let methods: Vec<String> = {
        use custodian::db::schema::audit_events::dsl::*;
        audit_events
            .filter(action.eq("login").and(outcome.eq("permit")))
            .order(seq)
            .select(auth_method)
            .load(&mut app.db.conn())
            .unwrap()
    };
    assert_eq!(
        methods,
        ["session", "session-mfa"],
        "OIDC, then OIDC + TOTP"
    );

    // The same callback again is refused (its pre-login session is gone).
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn user_without_console_role_sees_no_access_and_is_audited() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "dr-bob", &[Role::Clinician]);
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "dr-bob").await;
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let body = res.text().await.unwrap();
    assert!(body.contains("No console access"), "{body}");
    assert_eq!(user_sessions(&app), 0);
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/signin")
    );
    let ev = events(&app);
    assert!(
        ev.iter()
            .any(|e| e.0 == "login-failed" && e.2.as_deref() == Some("missing-role")),
        "{ev:?}"
    );
}

/// After a refused callback: no user session exists and the console sends us to sign in.
async fn assert_no_session(app: &TestApp, b: &CookieClient) {
    assert_eq!(user_sessions(app), 0);
    assert_eq!(
        b.lands(app, "/console").await.as_deref(),
        Some("/console/signin")
    );
    assert_eq!(
        b.lands(app, "/console/totp").await.as_deref(),
        Some("/console/signin")
    );
}

fn with_param(url: &url::Url, name: &str, value: &str) -> url::Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

#[tokio::test]
async fn mismatched_state_gives_no_session() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "alice").await;
    let bad = with_param(&callback, "state", "not-the-state-we-sent");
    let res = b.client.get(bad.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &b).await;
    // The attempt used up the pre-login session: the genuine callback fails too now.
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &b).await;
}

#[tokio::test]
async fn callback_replayed_in_another_browser_gives_no_session() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let victim = CookieClient::new();
    let callback = idp.authorize(&app, &victim.client, "alice").await;
    // A browser with no session at all.
    let attacker = CookieClient::new();
    let res = attacker.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &attacker).await;
    // A browser with its own pre-login session (its own state).
    let res = attacker.get(&app, "/console/login").await;
    assert_eq!(res.status(), 303);
    let res = attacker.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &attacker).await;
    // Both callbacks without a live pre-login session of their own are audited.
    assert_eq!(
        refused_sign_ins(&app).len(),
        2,
        "{:?}",
        refused_sign_ins(&app)
    );
}

#[tokio::test]
async fn wrong_iss_parameter_gives_no_session() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "alice").await;
    let bad = with_param(&callback, "iss", "https://evil.example");
    assert_ne!(bad, callback);
    let res = b.client.get(bad.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &b).await;
}

/// The provider issues a bad ID token in `mode`: the callback is refused.
async fn bad_id_token_gives_no_session(mode: &str) {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    idp.set_mode(mode).await;
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "alice").await;
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400, "mode {mode}");
    let body = res.text().await.unwrap();
    assert!(body.contains("Sign-in could not be completed"), "{body}");
    // The rejected ID token is one audit event (nobody matched yet).
    assert_eq!(
        refused_sign_ins(&app),
        vec![(
            "login-failed".into(),
            "deny".into(),
            Some("invalid-credentials".into()),
            None
        )],
        "mode {mode}"
    );
    assert_no_session(&app, &b).await;
}

/// (action, outcome, deny reason, actor) of every refused sign-in step.
fn refused_sign_ins(app: &TestApp) -> Vec<(String, String, Option<String>, Option<uuid::Uuid>)> {
    use custodian::db::schema::audit_events as ae;
    ae::table
        .filter(ae::action.eq("login-failed"))
        .order(ae::seq)
        .select((ae::action, ae::outcome, ae::deny_reason, ae::actor_user_id))
        .load(&mut app.db.conn())
        .unwrap()
}

fn without_param(url: &url::Url, name: &str) -> url::Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

#[tokio::test]
async fn refused_code_exchange_is_audited() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "alice").await;
    // A code the provider never issued: its token endpoint refuses the exchange.
    let bad = with_param(&callback, "code", "not-a-code-the-provider-issued");
    let res = b.client.get(bad.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &b).await;
    assert_eq!(
        refused_sign_ins(&app),
        vec![(
            "login-failed".into(),
            "deny".into(),
            Some("invalid-credentials".into()),
            None
        )]
    );
}

#[tokio::test]
async fn callback_without_iss_is_refused_when_the_provider_advertises_it() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    // The test provider advertises RFC 9207 support in its discovery document.
    let meta: serde_json::Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "alice").await;
    let bad = without_param(&callback, "iss");
    assert_ne!(bad, callback);
    let res = b.client.get(bad.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_no_session(&app, &b).await;
    assert_eq!(refused_sign_ins(&app).len(), 1, "the refusal is audited");
}

#[tokio::test]
async fn unknown_subject_is_refused_without_being_added_to_the_users_table() {
    let (app, idp) = start(TestApp::builder()).await;
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "stranger").await;
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(user_sessions(&app), 0);
    let found = {
        let mut conn = app.db.conn();
        users::find(&mut conn, &idp.issuer, "stranger").unwrap()
    };
    assert!(
        found.is_none(),
        "a refused sign-in adds nobody to the users table"
    );
    assert_eq!(
        refused_sign_ins(&app),
        vec![(
            "login-failed".into(),
            "deny".into(),
            Some("missing-role".into()),
            None
        )]
    );
}

/// Live pre-login sessions in the database.
fn pre_login_sessions(app: &TestApp) -> i64 {
    use custodian::db::schema::console_sessions::dsl::*;
    console_sessions
        .filter(stage.eq("pre_login"))
        .count()
        .get_result(&mut app.db.conn())
        .unwrap()
}

#[tokio::test]
async fn pre_login_sessions_are_bounded_per_address_and_expire_soon() {
    use custodian::console::store::session::{PRE_LOGIN_MAX_AGE_SECS, PRE_LOGIN_PER_ADDRESS};
    let (app, idp) = start(TestApp::builder().manual_clock()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    // A sign-in started and left at the provider…
    let b = CookieClient::new();
    let callback = idp.authorize(&app, &b.client, "alice").await;
    // …and unauthenticated GET /console/login from the same address, each a new row, up
    // to the bound.
    let anon = reqwest_anon();
    for i in 1..PRE_LOGIN_PER_ADDRESS {
        let res = anon.get(app.url("/console/login")).send().await.unwrap();
        assert_eq!(res.status(), 303, "pre-login {i}");
    }
    assert_eq!(pre_login_sessions(&app), PRE_LOGIN_PER_ADDRESS);
    let res = anon.get(app.url("/console/login")).send().await.unwrap();
    assert_eq!(res.status(), 429, "over the bound for this address");
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(pre_login_sessions(&app), PRE_LOGIN_PER_ADDRESS);
    assert_eq!(
        refused_sign_ins(&app),
        vec![(
            "login-failed".into(),
            "deny".into(),
            Some("rate-limited".into()),
            None
        )],
        "the refusal is audited"
    );
    // A pre-login session lives minutes, not the idle timeout: past its age the callback
    // of the sign-in left at the provider is refused…
    let idle: i64 = app_config_idle(&app);
    assert!(PRE_LOGIN_MAX_AGE_SECS < idle);
    advance(&app, u64::try_from(PRE_LOGIN_MAX_AGE_SECS).unwrap() + 1);
    let res = b.client.get(callback.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 400, "the pre-login session expired");
    // …and the next sign-in sweeps the expired ones away.
    let res = anon.get(app.url("/console/login")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(pre_login_sessions(&app), 1);
}

/// The console's idle timeout (default settings).
fn app_config_idle(_app: &TestApp) -> i64 {
    custodian::config::registry::setting("console.idle_timeout_secs")
        .unwrap()
        .default
        .parse()
        .unwrap()
}

/// A client without a cookie jar: every GET /console/login is a new browser.
fn reqwest_anon() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(crate::support::test_cert().cert_pem.as_bytes())
                .unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn id_token_with_wrong_nonce_gives_no_session() {
    bad_id_token_gives_no_session("nonce").await;
}

#[tokio::test]
async fn id_token_for_another_audience_gives_no_session() {
    bad_id_token_gives_no_session("aud").await;
}

#[tokio::test]
async fn id_token_from_another_issuer_gives_no_session() {
    bad_id_token_gives_no_session("iss").await;
}

#[tokio::test]
async fn id_token_signed_with_an_unknown_key_gives_no_session() {
    bad_id_token_gives_no_session("key").await;
}

#[tokio::test]
async fn expired_id_token_gives_no_session() {
    bad_id_token_gives_no_session("exp").await;
}

#[tokio::test]
async fn id_token_re_signed_unchanged_is_accepted() {
    // Guards the negative tests above: the harness's re-signing alone breaks nothing, so
    // each of them fails because of the one claim or key it changes.
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    idp.set_mode("same").await;
    let b = CookieClient::new();
    b.oidc_sign_in(&app, &idp, "alice").await;
    assert_eq!(user_sessions(&app), 1);
}

/// Moves the app's clock forward by `secs` (the app was started with a manual clock).
fn advance(app: &TestApp, secs: u64) {
    app.clock().advance(Duration::from_secs(secs));
}

/// The app's time in seconds since the epoch (what its TOTP check compares codes with).
fn app_secs(app: &TestApp) -> u64 {
    u64::try_from(app.clock().now().timestamp()).unwrap()
}

#[tokio::test]
async fn idle_session_expires() {
    let (app, idp) = start(
        TestApp::builder()
            .manual_clock()
            .set("console.idle_timeout_secs", 600),
    )
    .await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    b.enrol(&app, &idp, "alice").await;
    // Used within the idle time it lives on, well past one idle time in total.
    for _ in 0..3 {
        advance(&app, 590);
        assert_eq!(b.lands(&app, "/console").await, None);
    }
    advance(&app, 601);
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/signin")
    );
    assert_eq!(user_sessions(&app), 0);
}

#[tokio::test]
async fn absolute_lifetime_ends_a_busy_session() {
    let (app, idp) = start(
        TestApp::builder()
            .manual_clock()
            .set("console.idle_timeout_secs", 600)
            .set("console.absolute_timeout_secs", 3600),
    )
    .await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    b.enrol(&app, &idp, "alice").await;
    // Busy (never idle for long), it lives until its absolute lifetime…
    for _ in 0..7 {
        advance(&app, 500);
        assert_eq!(b.lands(&app, "/console").await, None, "ended too early");
    }
    // …and every page counts down to it: 100 s of the 3600 are left.
    let page = b.get(&app, "/console").await.text().await.unwrap();
    let left = text_by_id(&page, "time-left");
    assert!(left.starts_with("1 min "), "{left}");
    advance(&app, 101);
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/signin"),
        "the session outlived its absolute lifetime"
    );
    assert_eq!(user_sessions(&app), 0);
}

#[tokio::test]
async fn cookie_copied_before_logout_is_dead_after_it() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    b.enrol(&app, &idp, "alice").await;
    let copied = b.session(&app).unwrap();
    assert_eq!(
        get_with_cookie(&app, "/console", &copied).await.status(),
        200
    );
    let page = b.get(&app, "/console").await.text().await.unwrap();
    let csrf = hidden_value(&page, "csrf_token");
    let res = b
        .post(&app, "/console/logout", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res).unwrap().path(), "/console/signin");
    let res = get_with_cookie(&app, "/console", &copied).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res).unwrap().path(), "/console/signin");
    assert_eq!(user_sessions(&app), 0);
    assert!(events(&app).iter().any(|e| e.0 == "logout"));
}

#[tokio::test]
async fn removing_the_role_ends_the_session_on_the_next_request() {
    let (app, idp) = start(TestApp::builder()).await;
    let alice = user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    b.enrol(&app, &idp, "alice").await;
    assert_eq!(b.lands(&app, "/console").await, None);
    assert!(
        users::revoke_role(
            &mut app.db.conn(),
            alice,
            Role::Admin,
            "test: role removed",
            None
        )
        .unwrap()
    );
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/signin")
    );
    assert_eq!(user_sessions(&app), 0);
    // Granting it back does not revive the old session.
    users::grant_role(&mut app.db.conn(), alice, Role::Admin, "back again", None).unwrap();
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/signin")
    );
}

#[tokio::test]
async fn disabling_the_user_ends_the_session_on_the_next_request() {
    let (app, idp) = start(TestApp::builder()).await;
    let alice = user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    b.enrol(&app, &idp, "alice").await;
    users::set_disabled(&mut app.db.conn(), alice, true, "test: user disabled", None).unwrap();
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/signin")
    );
    assert_eq!(user_sessions(&app), 0);
}

#[tokio::test]
async fn a_used_totp_code_is_refused_the_second_time() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let page = b.oidc_sign_in(&app, &idp, "alice").await;
    let secret = text_by_id(&page, "totp-secret");
    let code = totp_code(&secret, now_secs());
    let res = b.submit_code(&app, &page, &code).await;
    assert_eq!(res.status(), 200, "enrolment confirmed");

    // A second sign-in (another browser) with the same code: refused.
    let b2 = CookieClient::new();
    let page = b2.oidc_sign_in(&app, &idp, "alice").await;
    assert!(
        !page.contains("totp-secret"),
        "enrolled: no secret shown again"
    );
    let res = b2.submit_code(&app, &page, &code).await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("That code was not accepted"), "{page}");
    assert_eq!(
        b2.lands(&app, "/console").await.as_deref(),
        Some("/console/totp")
    );
    // The next step's code (inside the ±1 window, never used) is accepted.
    let res = b2
        .submit_code(&app, &page, &totp_code(&secret, now_secs() + 30))
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(b2.lands(&app, "/console").await, None);
}

#[tokio::test]
async fn five_wrong_codes_lock_the_totp_check() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let mut page = b.oidc_sign_in(&app, &idp, "alice").await;
    let secret = text_by_id(&page, "totp-secret");
    for _ in 0..5 {
        let res = b.submit_code(&app, &page, &wrong_code(&secret)).await;
        assert_eq!(res.status(), 200);
        page = res.text().await.unwrap();
    }
    assert!(page.contains("Too many wrong codes"), "{page}");
    // Now even the right code is refused.
    let res = b
        .submit_code(&app, &page, &totp_code(&secret, now_secs()))
        .await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("Too many wrong codes"), "{page}");
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/totp")
    );
    let ev = events(&app);
    let failures: Vec<_> = ev.iter().filter(|e| e.0 == "login-failed").collect();
    assert_eq!(failures.len(), 6, "{ev:?}");
    assert!(
        failures
            .iter()
            .filter(|e| e.2.as_deref() == Some("rate-limited"))
            .count()
            >= 2,
        "the lock-out is audited: {ev:?}"
    );
}

#[tokio::test]
async fn the_totp_lock_out_ends_after_its_time() {
    let (app, idp) = start(
        TestApp::builder()
            .manual_clock()
            .set("console.idle_timeout_secs", 3600)
            .set("console.totp_lockout_secs", 900),
    )
    .await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let mut page = b.oidc_sign_in(&app, &idp, "alice").await;
    let secret = text_by_id(&page, "totp-secret");
    for _ in 0..5 {
        let res = b.submit_code(&app, &page, &wrong_code(&secret)).await;
        page = res.text().await.unwrap();
    }
    assert!(page.contains("Too many wrong codes"), "{page}");
    // Just before the lock-out ends, the right code is still refused…
    advance(&app, 880);
    let res = b
        .submit_code(&app, &page, &totp_code(&secret, app_secs(&app)))
        .await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("Too many wrong codes"), "{page}");
    // …and after it, accepted (no sleeping: the app's clock moved).
    advance(&app, 30);
    let res = b
        .submit_code(&app, &page, &totp_code(&secret, app_secs(&app)))
        .await;
    assert_eq!(
        res.status(),
        200,
        "enrolment confirmed: recovery codes shown"
    );
    assert_eq!(recovery_codes(&res.text().await.unwrap()).len(), 10);
    assert_eq!(b.lands(&app, "/console").await, None);
}

#[tokio::test]
async fn the_totp_lock_out_doubles_until_a_code_is_accepted() {
    let (app, idp) = start(
        TestApp::builder()
            .manual_clock()
            .set("console.idle_timeout_secs", 7200)
            .set("console.totp_lockout_secs", 900),
    )
    .await;
    let alice = user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let mut page = b.oidc_sign_in(&app, &idp, "alice").await;
    let secret = text_by_id(&page, "totp-secret");
    let lock = |page: String| {
        let b = &b;
        let app = &app;
        let secret = secret.clone();
        async move {
            let mut page = page;
            for _ in 0..5 {
                let res = b.submit_code(app, &page, &wrong_code(&secret)).await;
                page = res.text().await.unwrap();
            }
            assert!(page.contains("Too many wrong codes"), "{page}");
            page
        }
    };
    page = lock(page).await;
    // The first lock-out: 900 s.
    advance(&app, 910);
    // Five more wrong codes: the second lock-out is twice as long…
    page = lock(page).await;
    advance(&app, 910);
    let res = b
        .submit_code(&app, &page, &totp_code(&secret, app_secs(&app)))
        .await;
    let page = res.text().await.unwrap();
    assert!(
        page.contains("Too many wrong codes"),
        "still locked after 910 s of an 1800 s lock-out: {page}"
    );
    // …and over after 1800 s.
    advance(&app, 900);
    let res = b
        .submit_code(&app, &page, &totp_code(&secret, app_secs(&app)))
        .await;
    assert_eq!(
        res.status(),
        200,
        "enrolment confirmed: recovery codes shown"
    );
    // An accepted code starts the count afresh.
    let lockouts: i32 = {
        use custodian::db::schema::console_totp::dsl::*;
        console_totp
            .filter(user_id.eq(alice.as_uuid()))
            .select(lockouts)
            .first(&mut app.db.conn())
            .unwrap()
    };
    assert_eq!(lockouts, 0);
    // Each lock-out is audited (the failure that starts it and each refused code after).
    let ev = events(&app);
    assert!(
        ev.iter()
            .filter(|e| e.0 == "login-failed" && e.2.as_deref() == Some("rate-limited"))
            .count()
            >= 3,
        "{ev:?}"
    );
}

#[tokio::test]
async fn posts_without_csrf_token_or_from_a_foreign_origin_are_403() {
    let (app, idp) = start(TestApp::builder()).await;
    user_with(&app, &idp, "alice", &[Role::Admin]);
    let b = CookieClient::new();
    let page = b.oidc_sign_in(&app, &idp, "alice").await;
    let secret = text_by_id(&page, "totp-secret");
    let csrf = hidden_value(&page, "csrf_token");
    let code = totp_code(&secret, now_secs());
    // No token.
    let res = b.post(&app, "/console/totp", &[("code", &code)]).await;
    assert_eq!(res.status(), 403);
    // A wrong token.
    let res = b
        .post(
            &app,
            "/console/totp",
            &[("csrf_token", "x".repeat(43).as_str()), ("code", &code)],
        )
        .await;
    assert_eq!(res.status(), 403);
    // The right token from another site.
    let res = b
        .client
        .post(app.url("/console/totp"))
        .header("origin", "https://evil.example")
        .form(&[("csrf_token", csrf.as_str()), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Neither Origin nor Referer.
    let res = b
        .client
        .post(app.url("/console/totp"))
        .form(&[("csrf_token", csrf.as_str()), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/totp")
    );
    // The same form from our own origin goes through.
    let res = b.submit_code(&app, &page, &code).await;
    assert_eq!(res.status(), 200, "enrolment confirmed");
    assert_eq!(b.lands(&app, "/console").await, None);
    // Sign-out too.
    let dash = b.get(&app, "/console").await.text().await.unwrap();
    let csrf = hidden_value(&dash, "csrf_token");
    let res = b.post(&app, "/console/logout", &[]).await;
    assert_eq!(res.status(), 403);
    let res = b
        .client
        .post(app.url("/console/logout"))
        .header("origin", "https://evil.example")
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(b.lands(&app, "/console").await, None, "still signed in");
}

#[tokio::test]
async fn recovery_codes_are_shown_once_stored_hashed_and_work_once_each() {
    let (app, idp) = start(TestApp::builder()).await;
    let alice = user_with(&app, &idp, "alice", &[Role::Admin]);
    let (_, codes) = CookieClient::new()
        .enrol_with_codes(&app, &idp, "alice")
        .await;
    assert_eq!(codes.len(), 10, "{codes:?}");
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    // Stored as argon2id hashes only.
    let stored: Vec<String> = {
        use custodian::db::schema::console_recovery_codes::dsl::*;
        console_recovery_codes
            .filter(user_id.eq(alice))
            .select(code_hash)
            .load(&mut app.db.conn())
            .unwrap()
    };
    assert_eq!(stored.len(), 10);
    for h in &stored {
        assert!(h.starts_with("$argon2id$"), "{h}");
        for c in &codes {
            assert!(!h.contains(c.as_str()) && !h.contains(&c.replace('-', "")));
        }
    }

    // A recovery code in place of the TOTP code signs in (no new codes are shown).
    let b = CookieClient::new();
    let page = b.oidc_sign_in(&app, &idp, "alice").await;
    assert!(!page.contains("recovery-codes"));
    let res = b.submit_code(&app, &page, &codes[3]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res).unwrap().path(), "/console");
    assert_eq!(b.lands(&app, "/console").await, None);

    // The same code a second time is refused.
    let b = CookieClient::new();
    let page = b.oidc_sign_in(&app, &idp, "alice").await;
    let res = b.submit_code(&app, &page, &codes[3]).await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("That code was not accepted"), "{page}");
    assert_eq!(
        b.lands(&app, "/console").await.as_deref(),
        Some("/console/totp")
    );
    // Another unused one still works, typed in capitals without dashes.
    let typed = codes[7].replace('-', "").to_uppercase();
    let res = b.submit_code(&app, &page, &typed).await;
    assert_eq!(res.status(), 303);
    assert_eq!(b.lands(&app, "/console").await, None);
}
