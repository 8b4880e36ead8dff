//! The console's administration pages over real HTTPS with a cookie-keeping client:
//! signed-in sessions are created directly in the database (no OpenID provider needed),
//! with a known TOTP secret sealed by the app's own keys so step-up codes can be made.

use crate::support::authenticator::{self, now_secs};
use crate::support::{TestApp, idp::Provider, idp::Signer, test_cert};
use custodian::crypto::Keyring;
use custodian::db::schema::{console_sessions, console_totp, role_assignments, users as users_t};
use custodian::db::users::{self, UserKind};
use custodian::domain::FacilityId;
use custodian::domain::clock::Clock;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use sha2::Digest;
use std::sync::Arc;
use uuid::Uuid;

const SECRET: &[u8] = b"console-pages-test-secret-20b";
const XSS: &str = "<img src=x onerror=alert(1)>";

/// (action, outcome, deny reason, auth method, resource id) of an audit event.
type Event = (String, String, Option<String>, String, Option<Uuid>);

struct Console {
    app: TestApp,
    _idp: Provider,
    /// Signs the API's bearer tokens (issuer `issuer`, audience `custodian-test`).
    signer: Signer,
    issuer: String,
    keyring: Keyring,
    facility: FacilityId,
    config: custodian::config::Config,
}

/// A browser: its own cookie jar, holding one console session.
struct CookieClient {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    session_id: String,
    csrf: String,
}

fn code_at(unix: u64) -> String {
    authenticator::code_at(SECRET, unix)
}

impl Console {
    async fn start() -> Console {
        Console::start_with(TestApp::builder()).await
    }

    /// On a manual clock ([`TestApp::clock`]): the test moves the app's time.
    async fn start_clocked() -> Console {
        Console::start_with(TestApp::builder().manual_clock()).await
    }

    async fn start_with(builder: crate::support::TestAppBuilder) -> Console {
        let signer = Signer::es256("k1");
        let idp = Provider::start(&[&signer]).await;
        let issuer = idp.issuer();
        let builder = builder
            .set("auth.issuer", issuer.clone())
            .set("auth.audience", "custodian-test")
            .set("console.issuer", issuer.clone())
            .set("console.client_id", "custodian-console")
            .set("console.client_secret", "test-secret")
            .set(
                "console.redirect_url",
                "https://localhost:8443/console/callback",
            )
            .set("console.step_up_secs", 300);
        let db = crate::support::TestDb::create();
        let config = builder.config(&db.url);
        let app = builder.database(db).spawn().await;
        let keyring =
            custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).expect("keyring");
        let facility =
            custodian::db::phi::insert_facility(&mut app.db.conn(), "General Hospital").unwrap();
        Console {
            app,
            _idp: idp,
            signer,
            issuer,
            keyring,
            facility,
            config,
        }
    }

    /// Another Custodian instance on the same database, as behind a load balancer; its
    /// address (the same host name, so a browser sends it the same cookies).
    async fn second_instance(&self) -> std::net::SocketAddr {
        let app = custodian::app::Application::build(
            self.config.clone(),
            custodian::app::Options {
                extra_routes: None,
                disable_signals: true,
                dev_jwks: None,
                dev_idp: None,
                clock: None,
            },
        )
        .await
        .expect("second instance starts");
        let addr = app.https_addr();
        tokio::spawn(app.run());
        addr
    }

    fn origin(&self) -> String {
        format!("https://localhost:{}", self.app.https.port())
    }

    /// A person with these roles (and optionally a display name) in the test facility.
    fn user(&self, sub: &str, roles: &[Role], display: Option<&str>) -> Uuid {
        let mut c = self.app.db.conn();
        let u = users::user_for(&mut c, &self.issuer, sub, UserKind::Person).unwrap();
        for r in roles {
            users::grant_role(&mut c, u.id, *r, "test setup", None).unwrap();
        }
        users::set_facility(&mut c, u.id, Some(self.facility)).unwrap();
        diesel::update(users_t::table.find(u.id))
            .set(users_t::display_name.eq(display))
            .execute(&mut c)
            .unwrap();
        u.id.as_uuid()
    }

    /// A confirmed TOTP enrolment with [`SECRET`], sealed with the app's keys.
    fn enrol(&self, user: Uuid) {
        let mut c = self.app.db.conn();
        let id = Uuid::new_v4();
        let sealer = self.keyring.sealer_for_write(&mut c).unwrap();
        let place = custodian::crypto::columns::console_totp::SECRET.at(id);
        let sealed = sealer.seal(&place, SECRET).unwrap();
        diesel::insert_into(console_totp::table)
            .values((
                console_totp::id.eq(id),
                console_totp::user_id.eq(user),
                console_totp::secret_sealed.eq(sealed),
                console_totp::key_version.eq(sealer.version()),
                console_totp::confirmed_at.eq(Some(chrono::Utc::now())),
            ))
            .execute(&mut c)
            .unwrap();
    }

    /// A fully signed-in browser (stage active, TOTP passed just now) for `user`.
    fn sign_in(&self, user: Uuid) -> CookieClient {
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
            .cookie_provider(jar.clone())
            .build()
            .unwrap();
        CookieClient {
            client,
            jar,
            session_id,
            csrf,
        }
    }

    /// Makes the browser's last TOTP check older than the step-up window.
    fn make_stale(&self, b: &CookieClient) {
        let hash = sha2::Sha256::digest(b.session_id.as_bytes()).to_vec();
        diesel::update(console_sessions::table.filter(console_sessions::id_hash.eq(hash)))
            .set(
                console_sessions::totp_at.eq(Some(chrono::Utc::now() - chrono::Duration::hours(1))),
            )
            .execute(&mut self.app.db.conn())
            .unwrap();
    }

    /// Moves the app's clock forward by `secs`.
    fn advance(&self, secs: u64) {
        self.app
            .clock()
            .advance(std::time::Duration::from_secs(secs));
    }

    /// The current code by the app's clock (what its TOTP check compares with).
    fn code_now(&self) -> String {
        code_at(u64::try_from(self.app.clock().now().timestamp()).unwrap())
    }

    async fn get(&self, b: &CookieClient, path: &str) -> reqwest::Response {
        b.client.get(self.app.url(path)).send().await.unwrap()
    }

    /// A form POST from our own origin; `fields` without the CSRF token.
    async fn post(
        &self,
        b: &CookieClient,
        path: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut all = vec![("csrf_token", b.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(b, path, &all, Some(&self.origin())).await
    }

    async fn post_raw(
        &self,
        b: &CookieClient,
        path: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = b
            .client
            .post(self.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.unwrap()
    }

    fn roles_of(&self, user: Uuid) -> Vec<(String, String)> {
        role_assignments::table
            .filter(role_assignments::user_id.eq(user))
            .select((role_assignments::role, role_assignments::reason))
            .order(role_assignments::role)
            .load(&mut self.app.db.conn())
            .unwrap()
    }

    /// (action, outcome, deny reason, auth method, resource id) of every audit event.
    fn events(&self) -> Vec<Event> {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .order(ae::seq)
            .select((
                ae::action,
                ae::outcome,
                ae::deny_reason,
                ae::auth_method,
                ae::resource_id,
            ))
            .load(&mut self.app.db.conn())
            .unwrap()
    }
}

impl Console {
    /// (action, outcome, deny reason, auth method, resource id) of the events `actor`
    /// is named in.
    fn events_of(&self, actor: Uuid) -> Vec<Event> {
        use custodian::db::schema::audit_events as ae;
        ae::table
            .filter(ae::actor_user_id.eq(actor))
            .order(ae::seq)
            .select((
                ae::action,
                ae::outcome,
                ae::deny_reason,
                ae::auth_method,
                ae::resource_id,
            ))
            .load(&mut self.app.db.conn())
            .unwrap()
    }
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The id of the kept change a step-up page shows (submitted with its code).
fn pending_id(html: &str) -> String {
    html.split("name=\"pending_id\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no pending_id on {html}"))
        .to_string()
}

/// The HTML error message names the field (quotes are escaped in HTML).
fn names_reason(html: &str) -> bool {
    html.contains("&#39;reason&#39;")
        || html.contains("&#x27;reason&#x27;")
        || html.contains("'reason'")
}

/// An admin signed in with a confirmed authenticator.
fn admin(c: &Console, sub: &str) -> (Uuid, CookieClient) {
    let id = c.user(sub, &[Role::Admin], Some("Ada Admin"));
    c.enrol(id);
    (id, c.sign_in(id))
}

#[tokio::test]
async fn users_list_searches_and_pages() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    for i in 0..30 {
        c.user(
            &format!("staff-{i:02}"),
            &[Role::Clinician],
            Some(&format!("Staff {i}")),
        );
    }
    c.user("zed", &[], Some("Zed Example"));

    let page1 = c.get(&a, "/console/users?q=staff-").await;
    assert_eq!(page1.status(), StatusCode::OK);
    let html = page1.text().await.unwrap();
    assert_eq!(html.matches("/console/users/").count(), 25, "{html}");
    assert!(
        html.contains("Signed in as"),
        "layout shows who is signed in"
    );
    assert!(
        html.contains("id=\"session-left\""),
        "layout shows the time left"
    );
    let next = html
        .split("id=\"next-page\"")
        .next()
        .and_then(|before| before.rsplit("href=\"").next())
        .map(|h| {
            h.split('"')
                .next()
                .unwrap()
                .replace("&#38;", "&")
                .replace("&amp;", "&")
        })
        .unwrap();
    assert!(next.starts_with("/console/users?q=staff-&after="), "{next}");
    let html2 = c.get(&a, &next).await.text().await.unwrap();
    assert_eq!(html2.matches("/console/users/").count(), 5, "{html2}");
    assert!(!html2.contains("id=\"next-page\""));
    assert!(html2.contains("id=\"first-page\""));

    let zed = c
        .get(&a, "/console/users?q=zed+ex")
        .await
        .text()
        .await
        .unwrap();
    assert!(zed.contains("Zed Example"));
    assert!(!zed.contains("Staff 1"));
    // Pattern characters are literal: '%' matches nobody here.
    let none = c
        .get(&a, "/console/users?q=%25")
        .await
        .text()
        .await
        .unwrap();
    assert!(none.contains("No users found"), "{none}");
    // Searching is audited (metadata only).
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "search" && e.3 == "session-mfa")
    );
}

#[tokio::test]
async fn role_added_with_reason_is_shown_and_audited() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], Some("Dr New"));

    let res = c
        .post(
            &a,
            &format!("/console/users/{target}/grant-role"),
            &[("role", "clinician"), ("reason", "new hire on ward 3")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&res),
        format!("/console/users/{target}?done=role-granted")
    );
    assert_eq!(
        c.roles_of(target),
        vec![("clinician".to_string(), "new hire on ward 3".to_string())]
    );
    let page = c.get(&a, &location(&res)).await.text().await.unwrap();
    assert!(
        page.contains("<span class=\"role\">clinician</span>"),
        "{page}"
    );
    assert!(page.contains("The role was granted."));
    assert!(page.contains("Disable account"), "{page}");
    assert!(page.contains("Signed in as <strong id=\"signed-in-as\">root</strong>"));

    let last_change = c
        .events()
        .into_iter()
        .rfind(|e| e.0 == "permission-change")
        .unwrap();
    assert_eq!(
        last_change,
        (
            "permission-change".into(),
            "permit".into(),
            None,
            "session-mfa".into(),
            Some(target)
        )
    );
    // The audit page shows it (metadata only).
    let audit = c.get(&a, "/console/audit").await.text().await.unwrap();
    assert!(audit.contains("permission-change"), "{audit}");
    assert!(
        audit.contains(&format!("RoleAssignment {target}")),
        "{audit}"
    );
    assert!(
        !audit.contains("new hire on ward 3"),
        "reasons are not audit data"
    );
}

#[tokio::test]
async fn role_added_without_reason_is_400_naming_reason() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    let path = format!("/console/users/{target}/grant-role");

    let res = c.post(&a, &path, &[("role", "clinician")]).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(names_reason(&res.text().await.unwrap()));
    let res = c
        .post(&a, &path, &[("role", "clinician"), ("reason", " ")])
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(names_reason(&res.text().await.unwrap()));
    assert!(c.roles_of(target).is_empty());
    // The failed change is audited as an error.
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "permission-change" && e.1 == "error")
    );
}

#[tokio::test]
async fn stale_totp_asks_for_a_code_then_performs_the_original_change() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    c.make_stale(&a);
    let path = format!("/console/users/{target}/grant-role");

    let res = c
        .post(
            &a,
            &path,
            &[("role", "billing"), ("reason", "moved to billing office")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("action=\"/console/step-up\""), "{html}");
    assert!(html.contains("Grant the role billing"), "{html}");
    let pending = pending_id(&html);
    assert!(
        c.roles_of(target).is_empty(),
        "nothing changes before the code"
    );
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "permission-change" && e.2.as_deref() == Some("step-up-required"))
    );

    // A wrong code: asked again, still nothing changed.
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &pending), ("code", "000000")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("not accepted"));
    assert_eq!(
        pending_id(&html),
        pending,
        "asked again for the same change"
    );
    assert!(c.roles_of(target).is_empty());

    // A valid code: new session id, then the original change with its form data.
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &pending), ("code", &code_at(now_secs()))],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{:?}", res.headers());
    assert_eq!(
        location(&res),
        format!("/console/users/{target}?done=role-granted")
    );
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("__Host-custodian="));
    assert!(
        !set_cookie.contains(&a.session_id),
        "the session id is renewed"
    );
    assert_eq!(
        c.roles_of(target),
        vec![("billing".to_string(), "moved to billing office".to_string())]
    );
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "step-up" && e.1 == "permit")
    );

    // The old id no longer works; the renewed one does and counts as fresh.
    let old = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = old
        .get(c.app.url("/console/users"))
        .header("cookie", format!("__Host-custodian={}", a.session_id))
        .send()
        .await
        .unwrap();
    assert_eq!(location(&res), "/console/signin");
    let page = c.get(&a, &format!("/console/users/{target}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let fresh = CookieClient {
        client: a.client.clone(),
        jar: a.jar.clone(),
        session_id: String::new(),
        csrf,
    };
    let res = c
        .post(
            &fresh,
            &path,
            &[("role", "clinician"), ("reason", "also covers wards")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "fresh after step-up");
}

#[tokio::test]
async fn step_up_freshness_follows_the_apps_clock() {
    let c = Console::start_clocked().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    let path = format!("/console/users/{target}/grant-role");
    // Signed in with a code just now: a sensitive change goes straight through.
    let res = c
        .post(
            &a,
            &path,
            &[("role", "billing"), ("reason", "billing office")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // Within the window (300 s) it still does…
    c.advance(290);
    let res = c
        .post(
            &a,
            &format!("/console/users/{target}/revoke-role"),
            &[("role", "billing"), ("reason", "left billing")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // …past it, the next one waits for a code.
    c.advance(20);
    let res = c
        .post(
            &a,
            &path,
            &[("role", "clinician"), ("reason", "covers wards")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("action=\"/console/step-up\"")
    );
    assert!(
        c.roles_of(target).is_empty(),
        "nothing changes before the code"
    );
}

#[tokio::test]
async fn a_change_that_waited_too_long_for_its_code_is_not_performed() {
    let c = Console::start_clocked().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    let path = format!("/console/users/{target}/grant-role");
    // Waiting just under ten minutes, the change is still performed after the code.
    c.make_stale(&a);
    let res = c
        .post(
            &a,
            &path,
            &[("role", "billing"), ("reason", "billing office")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let pending = pending_id(&res.text().await.unwrap());
    c.advance(590);
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &pending), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(c.roles_of(target).len(), 1);
    // The renewed session's CSRF token, from the page the change lands on.
    let html = c.get(&a, &location(&res)).await.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let a = CookieClient {
        client: a.client.clone(),
        jar: a.jar.clone(),
        session_id: String::new(),
        csrf,
    };
    // Stale again (the step-up window is 300 s): the next change waits for a code…
    c.advance(301);
    let res = c
        .post(
            &a,
            &path,
            &[("role", "clinician"), ("reason", "covers wards")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let pending = pending_id(&res.text().await.unwrap());
    // …longer than ten minutes: the code no longer performs it.
    c.advance(601);
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &pending), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(
        res.text().await.unwrap().contains("waited too long"),
        "the expired change is refused"
    );
    assert_eq!(
        c.roles_of(target),
        vec![("billing".to_string(), "billing office".to_string())]
    );
}

#[tokio::test]
async fn revoked_sessions_land_on_sign_in() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let (b_id, b) = admin(&c, "second");
    let (c_id, b2) = admin(&c, "third");
    assert_eq!(c.get(&b, "/console/users").await.status(), StatusCode::OK);

    let res = c
        .post(&a, &format!("/console/users/{b_id}/revoke-sessions"), &[])
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = c.get(&b, "/console/users").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/signin");
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "session-revoked" && e.4 == Some(b_id))
    );

    // Removing a role (any role) ends the user's sessions too.
    assert_eq!(c.get(&b2, "/console/users").await.status(), StatusCode::OK);
    let res = c
        .post(
            &a,
            &format!("/console/users/{c_id}/revoke-role"),
            &[("role", "admin"), ("reason", "left the team")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&c.get(&b2, "/console").await), "/console/signin");
    // The administrator's own session is untouched.
    assert_eq!(c.get(&a, "/console/users").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn sessions_are_shared_by_instances_behind_a_load_balancer() {
    let c = Console::start().await;
    let other = c.second_instance().await;
    let at = |path: &str| format!("https://localhost:{}{path}", other.port());
    let (_, a) = admin(&c, "root");
    let (b_id, b) = admin(&c, "second");
    // A session made on one instance works on the other, and a change made there...
    assert_eq!(
        b.client
            .get(at("/console/users"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf_token", a.csrf.as_str())])
        .finish();
    let res = a
        .client
        .post(at(&format!("/console/users/{b_id}/revoke-sessions")))
        .header("origin", format!("https://localhost:{}", other.port()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // ...ends the session on both at once.
    let res = c.get(&b, "/console/users").await;
    assert_eq!(location(&res), "/console/signin");
    let res = b.client.get(at("/console/users")).send().await.unwrap();
    assert_eq!(location(&res), "/console/signin");
    assert_eq!(c.get(&a, "/console/users").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn posts_need_the_csrf_token_and_our_origin() {
    let c = Console::start().await;
    let (a_id, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    let path = format!("/console/users/{target}/grant-role");
    let fields = [("role", "clinician"), ("reason", "new hire")];
    let origin = c.origin();

    let res = c.post_raw(&a, &path, &fields, Some(&origin)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no token");
    let with_token = [
        ("csrf_token", a.csrf.as_str()),
        ("role", "clinician"),
        ("reason", "new hire"),
    ];
    let res = c
        .post_raw(&a, &path, &with_token, Some("https://evil.example"))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "foreign origin");
    let res = c.post_raw(&a, &path, &with_token, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no origin or referer");
    let wrong = [
        ("csrf_token", "x".repeat(43)),
        ("role", "clinician".into()),
        ("reason", "new hire".into()),
    ];
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = c.post_raw(&a, &path, &wrong, Some(&origin)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "wrong token");
    let res = c
        .post_raw(&a, "/console/step-up", &[("code", "123456")], Some(&origin))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "step-up without token");
    assert!(c.roles_of(target).is_empty());
    // Each forged POST is one audit event, naming the signed-in administrator.
    let refused: Vec<_> = c
        .events_of(a_id)
        .into_iter()
        .filter(|e| e.1 == "deny")
        .collect();
    assert_eq!(refused.len(), 5, "{refused:?}");

    let res = c.post_raw(&a, &path, &with_token, Some(&origin)).await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "the same form, done right"
    );
}

#[tokio::test]
async fn display_names_are_escaped() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("mallory", &[], Some(XSS));
    for path in [
        "/console/users".to_string(),
        format!("/console/users/{target}"),
    ] {
        let html = c.get(&a, &path).await.text().await.unwrap();
        assert!(!html.contains(XSS), "{path}: {html}");
        assert!(
            html.contains("&#60;img src=x onerror=alert(1)&#62;")
                || html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}: {html}"
        );
    }
}

#[tokio::test]
async fn error_pages_show_the_request_id() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    for res in [
        c.get(&a, "/console/users/not-a-user").await,
        c.get(&a, &format!("/console/users/{}", Uuid::new_v4()))
            .await,
        c.post(
            &a,
            &format!("/console/users/{}/grant-role", Uuid::new_v4()),
            &[],
        )
        .await,
    ] {
        assert!(res.status().is_client_error());
        let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = res.text().await.unwrap();
        assert!(html.contains(&id), "{html}");
        assert!(html.contains("Request id"), "{html}");
    }
}

#[tokio::test]
async fn privacy_officers_see_audit_events_but_cannot_administer() {
    let c = Console::start().await;
    let po = c.user("privacy", &[Role::PrivacyOfficer], None);
    c.enrol(po);
    let p = c.sign_in(po);
    assert_eq!(
        c.get(&p, "/console/users").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.get(&p, "/console/clients").await.status(),
        StatusCode::FORBIDDEN
    );
    let res = c
        .post(
            &p,
            &format!("/console/users/{po}/grant-role"),
            &[("role", "admin"), ("reason", "self-promotion")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(c.roles_of(po).len(), 1);
    // Each refused attempt is one audit event naming the privacy officer.
    let refused: Vec<_> = c
        .events_of(po)
        .into_iter()
        .filter(|e| e.1 == "deny")
        .map(|e| (e.0, e.2))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("read".to_string(), Some("missing-role".to_string())),
            ("read".to_string(), Some("missing-role".to_string())),
            (
                "permission-change".to_string(),
                Some("missing-role".to_string())
            ),
        ]
    );
    // The dashboard offers only what the role may open.
    let dash = c.get(&p, "/console").await.text().await.unwrap();
    assert!(!dash.contains("href=\"/console/users\""), "{dash}");
    assert!(!dash.contains("href=\"/console/clients\""), "{dash}");
    assert!(dash.contains("href=\"/console/audit\""), "{dash}");
    let audit = c.get(&p, "/console/audit").await;
    assert_eq!(audit.status(), StatusCode::OK);
    // Not signed in at all: the sign-in page.
    let anon = c.app.get("/console/audit").await;
    assert_eq!(location(&anon), "/console/signin");
}

#[tokio::test]
async fn service_clients_are_added_and_disabled() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let facility = c.facility.to_string();
    let res = c
        .post(
            &a,
            "/console/clients",
            &[
                ("client_id", "lab-feed"),
                ("facility_id", &facility),
                ("roles", "service"),
                ("roles", "clinician"),
                ("reason", "lab results interface"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let html = c.get(&a, "/console/clients").await.text().await.unwrap();
    assert!(html.contains("lab-feed"), "{html}");
    assert!(html.contains("clinician, service"), "{html}");
    let client: Uuid = users_t::table
        .filter(users_t::subject.eq("lab-feed"))
        .select(users_t::id)
        .first(&mut c.app.db.conn())
        .unwrap();

    let res = c
        .post(
            &a,
            "/console/clients",
            &[
                ("client_id", "bad-admin"),
                ("facility_id", &facility),
                ("roles", "admin"),
                ("reason", "should fail"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    let res = c
        .post(
            &a,
            &format!("/console/clients/{client}/disable"),
            &[("reason", "interface retired")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let disabled: Option<chrono::DateTime<chrono::Utc>> = users_t::table
        .find(client)
        .select(users_t::disabled_at)
        .first(&mut c.app.db.conn())
        .unwrap();
    assert!(disabled.is_some());
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "client-revoked" && e.4 == Some(client))
    );
}

#[tokio::test]
async fn totp_reset_forgets_the_authenticator_and_ends_sessions() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let (b_id, b) = admin(&c, "second");
    let res = c
        .post(&a, &format!("/console/users/{b_id}/reset-totp"), &[])
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let left: i64 = console_totp::table
        .filter(console_totp::user_id.eq(b_id))
        .count()
        .get_result(&mut c.app.db.conn())
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(location(&c.get(&b, "/console").await), "/console/signin");
}

#[tokio::test]
async fn a_kept_change_runs_once_and_a_failing_one_keeps_the_renewed_session() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    c.make_stale(&a);

    // Asked for a code for a change that will fail (no reason).
    let res = c
        .post(
            &a,
            &format!("/console/users/{target}/grant-role"),
            &[("role", "clinician")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let pending = pending_id(&res.text().await.unwrap());
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &pending), ("code", &code_at(now_secs()))],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(
        res.headers().contains_key("set-cookie"),
        "new id even on failure"
    );
    assert!(names_reason(&res.text().await.unwrap()));
    assert!(c.roles_of(target).is_empty());

    // The renewed session still works, and nothing is left waiting for a code.
    let page = c.get(&a, "/console/users").await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let renewed = CookieClient {
        client: a.client.clone(),
        jar: a.jar.clone(),
        session_id: String::new(),
        csrf,
    };
    let res = c
        .post(
            &renewed,
            "/console/step-up",
            &[
                ("pending_id", &pending),
                ("code", &code_at(now_secs() + 30)),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(c.roles_of(target).is_empty());
}

#[tokio::test]
async fn emergency_sign_in_attempts_are_limited_across_instances_and_every_refusal_is_audited() {
    let c = Console::start().await;
    let other = c.second_instance().await;
    let limit = c
        .config
        .console
        .as_ref()
        .unwrap()
        .emergency_attempts_per_minute;
    assert!(limit > 1);
    let post = |port: u16| {
        let client = c.app.client.clone();
        async move {
            client
                .post(format!("https://localhost:{port}/console/emergency"))
                .header("origin", format!("https://localhost:{port}"))
                .form(&[
                    ("name", "nobody"),
                    ("password", "not the password at all"),
                    ("code", "123456"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let ports = [c.app.https.port(), other.port()];
    // The attempts alternate between the two instances behind the load balancer...
    for i in 0..limit {
        let port = ports[usize::try_from(i % 2).unwrap()];
        assert_eq!(post(port).await, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // ...and the limit is one limit: both instances refuse the next attempt.
    for port in ports {
        assert_eq!(post(port).await, StatusCode::TOO_MANY_REQUESTS);
    }
    let refused = c
        .events()
        .iter()
        .filter(|e| e.0 == "login-failed" && e.2.as_deref() == Some("rate-limited"))
        .count();
    assert_eq!(refused, 2, "a rate-limited attempt is audited");
}

#[tokio::test]
async fn administrators_see_the_administration_links_on_the_dashboard() {
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let dash = c.get(&a, "/console").await.text().await.unwrap();
    assert!(dash.contains("href=\"/console/users\""), "{dash}");
    assert!(dash.contains("href=\"/console/clients\""), "{dash}");
}

/// Posts a sensitive change from a stale session; returns the kept change's id.
async fn kept(c: &Console, b: &CookieClient, target: Uuid, role: &str) -> String {
    let res = c
        .post(
            b,
            &format!("/console/users/{target}/grant-role"),
            &[("role", role), ("reason", "covers the ward")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains(&format!("Grant the role {role}")), "{html}");
    let id = pending_id(&html);
    assert!(
        html.contains(&format!("id=\"pending-id\">{id}<")),
        "the page shows it: {html}"
    );
    id
}

#[tokio::test]
async fn a_second_change_does_not_replace_the_one_waiting_for_a_code() {
    let c = Console::start_clocked().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    c.make_stale(&a);
    // Change A waits for a code; change B is posted from the same session meanwhile.
    let a_id = kept(&c, &a, target, "billing").await;
    let b_id = kept(&c, &a, target, "admin").await;
    assert_ne!(a_id, b_id);
    // The code typed on A's page performs A, not B.
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &a_id), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        c.roles_of(target),
        vec![("billing".to_string(), "covers the ward".to_string())]
    );
    // B is still kept, separately, and only its own id (and a code) performs it.
    let html = c.get(&a, &location(&res)).await.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let renewed = CookieClient {
        client: a.client.clone(),
        jar: a.jar.clone(),
        session_id: String::new(),
        csrf,
    };
    c.advance(30);
    let res = c
        .post(
            &renewed,
            "/console/step-up",
            &[("pending_id", &a_id), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "A was used once");
    assert_eq!(c.roles_of(target).len(), 1);
    // Without an id, nothing is performed.
    let res = c
        .post(&renewed, "/console/step-up", &[("code", &c.code_now())])
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.roles_of(target).len(), 1);
}

#[tokio::test]
async fn cancel_discards_the_kept_change_and_is_audited() {
    let c = Console::start_clocked().await;
    let (a_uid, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    c.make_stale(&a);
    let id = kept(&c, &a, target, "admin").await;
    // Cancel is a form (a POST with the CSRF token), not a link.
    let res = c
        .post_raw(
            &a,
            "/console/step-up/cancel",
            &[("pending_id", &id)],
            Some(&c.origin()),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let res = c
        .post(&a, "/console/step-up/cancel", &[("pending_id", &id)])
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // A later code performs nothing.
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[("pending_id", &id), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(c.roles_of(target).is_empty());
    assert!(
        c.events_of(a_uid)
            .iter()
            .any(|e| e.0 == "permission-change" && e.2.as_deref() == Some("cancelled")),
        "{:?}",
        c.events_of(a_uid)
    );
}

#[tokio::test]
async fn forwarded_host_headers_count_only_from_configured_proxies() {
    let forged = |c: &Console, b: &CookieClient, target: Uuid| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("csrf_token", b.csrf.as_str()),
                ("role", "clinician"),
                ("reason", "new hire"),
            ])
            .finish();
        b.client
            .post(c.app.url(&format!("/console/users/{target}/grant-role")))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "https://evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "host=evil.example;proto=https")
            .body(body)
            .send()
    };
    // No proxy configured: the headers are the client's own words, and refused.
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    let res = forged(&c, &a, target).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(c.roles_of(target).is_empty());
    // Behind a configured proxy (here: the test client's address), they name the host.
    let c = Console::start_with(
        crate::support::TestApp::builder().set("console.trusted_proxies", vec!["127.0.0.1"]),
    )
    .await;
    let (_, a) = admin(&c, "root");
    let target = c.user("dr-new", &[], None);
    let res = forged(&c, &a, target).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

/// The browser after a step-up renewed its session: same cookie jar, the CSRF token read
/// again from a page.
async fn renewed(c: &Console, b: &CookieClient) -> CookieClient {
    let html = c.get(b, "/console").await.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    CookieClient {
        client: b.client.clone(),
        jar: b.jar.clone(),
        session_id: String::new(),
        csrf,
    }
}

fn user_facility(c: &Console, user: Uuid) -> Option<Uuid> {
    users_t::table
        .find(user)
        .select(users_t::facility_id)
        .first(&mut c.app.db.conn())
        .unwrap()
}

/// (id, status, decided_by) of every pending change, oldest first.
fn pending_changes(c: &Console) -> Vec<(Uuid, String, Option<Uuid>)> {
    use custodian::db::schema::pending_changes as pc;
    pc::table
        .order(pc::requested_at)
        .select((pc::id, pc::status, pc::decided_by))
        .load(&mut c.app.db.conn())
        .unwrap()
}

#[tokio::test]
async fn own_access_changes_from_the_console_are_refused_and_audited() {
    let c = Console::start().await;
    let (me, a) = admin(&c, "root");
    let north = custodian::db::phi::insert_facility(&mut c.app.db.conn(), "North").unwrap();
    let north = north.as_uuid().to_string();
    let patient = Uuid::new_v4().to_string();
    let attempts: [(&str, Vec<(&str, &str)>); 6] = [
        (
            "grant-role",
            vec![("role", "clinician"), ("reason", "covering ward 3")],
        ),
        (
            "add-care-team",
            vec![("patient_id", &patient), ("reason", "covering ward 3")],
        ),
        (
            "facility",
            vec![("facility_id", &north), ("reason", "moving north")],
        ),
        (
            "revoke-role",
            vec![("role", "admin"), ("reason", "stepping down")],
        ),
        ("disable", vec![("reason", "leaving")]),
        (
            "grant-role",
            vec![("role", "privacy_officer"), ("reason", "also reviewing")],
        ),
    ];
    for (i, (action, fields)) in attempts.iter().enumerate() {
        // Half of them with a stale code: refused before a code is asked for.
        if i % 2 == 1 {
            c.make_stale(&a);
        }
        let res = c
            .post(&a, &format!("/console/users/{me}/{action}"), fields)
            .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{action}");
        assert!(
            res.text().await.unwrap().contains("your own access"),
            "{action}"
        );
        let last = c.events().pop().unwrap();
        assert_eq!(
            (last.1.as_str(), last.2.as_deref(), last.4),
            ("deny", Some("separation-of-duties"), Some(me)),
            "{action}: {last:?}"
        );
    }
    assert_eq!(
        c.roles_of(me).into_iter().map(|r| r.0).collect::<Vec<_>>(),
        vec!["admin"]
    );
    assert_eq!(user_facility(&c, me), Some(c.facility.as_uuid()));
    assert!(pending_changes(&c).is_empty(), "refused, not queued");
    // The page says why the forms do nothing on one's own account.
    let html = c
        .get(&a, &format!("/console/users/{me}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("id=\"own-access\""), "{html}");
}

#[tokio::test]
async fn an_administrators_clinical_role_waits_for_a_second_administrator() {
    let c = Console::start_clocked().await;
    let (_, a) = admin(&c, "root");
    let (b_id, b) = admin(&c, "admin-b");
    let c_id = c.user("admin-c", &[Role::Admin], Some("Cleo Checker"));
    c.enrol(c_id);
    let approver = c.sign_in(c_id);

    // Root asks for clinician for admin B: kept, not performed.
    let res = c
        .post(
            &a,
            &format!("/console/users/{b_id}/grant-role"),
            &[("role", "clinician"), ("reason", "covering ward 3 tonight")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/approvals?done=change-requested");
    let roles = |u: Uuid| c.roles_of(u).into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(roles(b_id), vec!["admin"]);
    let changes = pending_changes(&c);
    assert_eq!(changes.len(), 1);
    let change = changes[0].0;
    let last = c.events().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.4),
        ("change-requested", "permit", Some(change))
    );

    // The queue shows it; only a third administrator gets the buttons.
    let approve = format!("/console/approvals/{change}/approve");
    for (who, browser, buttons) in [
        ("requester", &a, false),
        ("target", &b, false),
        ("other", &approver, true),
    ] {
        let res = c.get(browser, "/console/approvals").await;
        assert_eq!(res.status(), StatusCode::OK, "{who}");
        let html = res.text().await.unwrap();
        assert!(
            html.contains(&format!("Grant the role clinician to user {b_id}")),
            "{who}: {html}"
        );
        assert!(html.contains("covering ward 3 tonight"), "{who}");
        assert_eq!(
            html.contains(&format!("action=\"{approve}\"")),
            buttons,
            "{who}"
        );
    }

    // The requester and the target cannot approve it: refused before a code, audited.
    for (who, browser) in [("requester", &a), ("target", &b)] {
        let res = c
            .post(browser, &approve, &[("reason", "looks fine to me")])
            .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{who}");
        let last = c.events().pop().unwrap();
        assert_eq!(
            (last.0.as_str(), last.2.as_deref(), last.4),
            (
                "change-approved",
                Some("separation-of-duties"),
                Some(change)
            ),
            "{who}"
        );
    }
    assert_eq!(roles(b_id), vec!["admin"]);

    // A second administrator approves with a reason, always after a code (even though
    // they signed in with one just now).
    let res = c
        .post(&approver, &approve, &[("reason", "rota confirmed")])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("action=\"/console/step-up\""), "{html}");
    assert!(
        html.contains(&format!("Approve the pending change {change}")),
        "{html}"
    );
    assert_eq!(roles(b_id), vec!["admin"], "nothing before the code");
    let res = c
        .post(
            &approver,
            "/console/step-up",
            &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{:?}", res.headers());
    assert_eq!(location(&res), "/console/approvals?done=change-approved");
    assert_eq!(
        roles(b_id),
        vec!["admin", "clinician"],
        "performed on approval"
    );
    assert_eq!(
        pending_changes(&c),
        vec![(change, "approved".to_string(), Some(c_id))]
    );
    let events = c.events();
    let n = events.len();
    assert_eq!(
        (
            events[n - 2].0.as_str(),
            events[n - 2].1.as_str(),
            events[n - 2].4
        ),
        ("change-approved", "permit", Some(change))
    );
    assert_eq!(
        (
            events[n - 1].0.as_str(),
            events[n - 1].1.as_str(),
            events[n - 1].4
        ),
        ("permission-change", "permit", Some(b_id))
    );
    // Decided once.
    let approver = renewed(&c, &approver).await;
    c.advance(30);
    let res = c.post(&approver, &approve, &[("reason", "again")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    let res = c
        .post(
            &approver,
            "/console/step-up",
            &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Now a clinician too, B's facility move needs approval as well; denied, nothing moves.
    let north = custodian::db::phi::insert_facility(&mut c.app.db.conn(), "North").unwrap();
    let res = c
        .post(
            &a,
            &format!("/console/users/{b_id}/facility"),
            &[
                ("facility_id", &north.as_uuid().to_string()),
                ("reason", "moving north"),
            ],
        )
        .await;
    assert_eq!(location(&res), "/console/approvals?done=change-requested");
    let second = pending_changes(&c)[1].0;
    let approver = renewed(&c, &approver).await;
    c.advance(30);
    let res = c
        .post(
            &approver,
            &format!("/console/approvals/{second}/deny"),
            &[("reason", "not on the rota")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    let res = c
        .post(
            &approver,
            "/console/step-up",
            &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(location(&res), "/console/approvals?done=change-denied");
    assert_eq!(user_facility(&c, b_id), Some(c.facility.as_uuid()));
    assert_eq!(pending_changes(&c)[1].1, "denied");
    let last = c.events().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.4),
        ("change-denied", "permit", Some(second))
    );
}

/// A bearer token for `sub` at the app's clock, from a multi-factor sign-in just now (as
/// break-glass requires).
fn mfa_token(c: &Console, sub: &str) -> String {
    let now = c.app.clock().now().timestamp();
    c.signer.sign(&serde_json::json!({
        "iss": c.issuer, "aud": "custodian-test", "sub": sub, "exp": now + 300, "iat": now,
        "client_id": "test-app", "scope": "user/Patient.cruds user/Observation.cruds",
        "auth_time": now - 5, "amr": ["pwd", "otp", "mfa"],
    }))
}

async fn api(
    c: &Console,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut req = c
        .app
        .client
        .request(method, c.app.url(path))
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    req.send().await.unwrap()
}

fn grant_param(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Approval mode (issue 13): a break-glass request waits in the approval queue; its
/// requester cannot approve it; another administrator approves it after a fresh code, and
/// only then does the grant open the record and its clock start; the requester polls the
/// outcome with the approver's reason; a denied request never opens anything.
#[tokio::test]
async fn a_break_glass_request_in_approval_mode_waits_for_another_administrator() {
    use custodian::db::schema::break_glass_grants as g;
    use reqwest::Method;
    let c = Console::start_with(
        TestApp::builder()
            .manual_clock()
            .set("break_glass.mode", "approval"),
    )
    .await;
    c.user("dr-a", &[Role::Clinician], None);
    // The requester is a clinician who also administers: still not their own approver.
    let b_id = c.user("dr-b", &[Role::Clinician, Role::Admin], Some("Bea Both"));
    c.enrol(b_id);
    let b_console = c.sign_in(b_id);
    let (approver_id, approver) = admin(&c, "approver");
    let doc_a = mfa_token(&c, "dr-a");
    let doc_b = mfa_token(&c, "dr-b");
    let mut p = crate::support::world::patient_json("MRN-AP1", "Waiting");
    p["managingOrganization"] =
        serde_json::json!({ "reference": format!("Organization/{}", c.facility) });
    let res = api(&c, Method::POST, "/fhir/Patient", &doc_a, Some(p)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let patient: serde_json::Value = res.json().await.unwrap();
    let patient = patient["id"].as_str().unwrap().to_string();
    let record = format!("/fhir/Patient/{patient}");
    let op = format!("/fhir/Patient/{patient}/$break-glass");
    let request = |minutes: i64| {
        serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "reason", "valueCode": "urgent-consult"},
            {"name": "justification", "valueString": "Consult requested by the night team <b>"},
            {"name": "minutes", "valueInteger": minutes},
        ]})
    };

    // Pending: nothing opens.
    let res = api(&c, Method::POST, &op, &doc_b, Some(request(20))).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(grant_param(&v, "status")["valueCode"], "pending");
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::FORBIDDEN
    );
    let changes = pending_changes(&c);
    assert_eq!(changes.len(), 1);
    let change = changes[0].0;

    // The queue shows it to the approver (the justification escaped).
    let html = c
        .get(&approver, "/console/approvals")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(&format!("Break-glass: user {b_id} asks for 20 minutes")),
        "{html}"
    );
    assert!(
        html.contains("Consult requested by the night team &#60;b&#62;")
            && !html.contains("team <b>"),
        "{html}"
    );
    let approve = format!("/console/approvals/{change}/approve");
    assert!(html.contains(&format!("action=\"{approve}\"")));

    // The requester cannot approve it (refused before a code, audited).
    let res = c
        .post(&b_console, &approve, &[("reason", "trust me")])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let last = c.events().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.2.as_deref()),
        ("change-approved", Some("separation-of-duties"))
    );

    // Another administrator approves after a fresh code; the clock starts then.
    c.advance(600);
    let res = c
        .post(&approver, &approve, &[("reason", "consult confirmed")])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert_eq!(
        api(&c, Method::GET, &record, &mfa_token(&c, "dr-b"), None)
            .await
            .status(),
        StatusCode::FORBIDDEN,
        "nothing before the code"
    );
    let res = c
        .post(
            &approver,
            "/console/step-up",
            &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        pending_changes(&c),
        vec![(change, "approved".to_string(), Some(approver_id))]
    );
    let doc_b = mfa_token(&c, "dr-b");
    let res = api(&c, Method::GET, &record, &doc_b, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (requested, activated): (
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = g::table
        .select((g::requested_at, g::activated_at))
        .first(&mut c.app.db.conn())
        .unwrap();
    assert!(
        activated.unwrap() - requested >= chrono::Duration::seconds(600),
        "the clock starts at approval, on the application's clock"
    );
    let events = c.events();
    let actions: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    for a in [
        "break-glass-request",
        "break-glass-decision",
        "break-glass-start",
    ] {
        assert!(actions.contains(&a), "{a}: {actions:?}");
    }
    // The requester polls: active, with the approver's reason.
    let res = api(&c, Method::GET, &op, &doc_b, None).await;
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(grant_param(&v, "status")["valueCode"], "active");
    assert_eq!(
        grant_param(&v, "decisionReason")["valueString"],
        "consult confirmed"
    );

    // A replayed approval form changes nothing: the request was decided once.
    let approver = renewed(&c, &approver).await;
    c.advance(30);
    let res = c
        .post(&approver, &approve, &[("reason", "consult confirmed")])
        .await;
    let html = res.text().await.unwrap();
    let res = c
        .post(
            &approver,
            "/console/step-up",
            &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let starts = c
        .events()
        .iter()
        .filter(|e| e.0 == "break-glass-start")
        .count();
    assert_eq!(starts, 1, "activated once");

    // A request that is denied never opens anything.
    let res = api(
        &c,
        Method::POST,
        &format!("/fhir/Patient/{patient}/$break-glass-end"),
        &doc_b,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = api(&c, Method::POST, &op, &doc_b, Some(request(15))).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let second = pending_changes(&c)
        .into_iter()
        .find(|(_, status, _)| status == "pending")
        .unwrap()
        .0;
    // (A step-up renews the console session: read its new form token; a code is used
    // once, so the next one is 30 seconds later.)
    let approver = renewed(&c, &approver).await;
    c.advance(30);
    let res = c
        .post(
            &approver,
            &format!("/console/approvals/{second}/deny"),
            &[("reason", "no consult on file")],
        )
        .await;
    let html = res.text().await.unwrap();
    let res = c
        .post(
            &approver,
            "/console/step-up",
            &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let v: serde_json::Value = api(&c, Method::GET, &op, &doc_b, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(grant_param(&v, "status")["valueCode"], "denied");
    assert_eq!(
        grant_param(&v, "decisionReason")["valueString"],
        "no consult on file"
    );
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[derive(QueryableByName)]
struct RawText {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}

/// A requester withdraws their own waiting break-glass request (issue 13): it leaves the
/// approval queue (the approver no longer sees it, and approving it afterwards changes
/// nothing), audited as `break-glass-withdraw`. A withdrawal and an approval at the same
/// moment end one way: withdrawn (the approval refused), or approved (the withdrawal
/// refused, or the grant ended right after) — never both, never a 5xx, and each outcome
/// in the audit trail.
#[tokio::test]
async fn a_requester_withdraws_a_waiting_request_and_a_racing_approval_ends_one_way() {
    use custodian::db::schema::break_glass_grants as g;
    use reqwest::Method;
    let c = Console::start_with(
        TestApp::builder()
            .manual_clock()
            .set("break_glass.mode", "approval"),
    )
    .await;
    c.user("dr-a", &[Role::Clinician], None);
    c.user("dr-b", &[Role::Clinician], None);
    let (_, mut approver) = admin(&c, "approver");
    let doc_a = mfa_token(&c, "dr-a");
    let mut p = crate::support::world::patient_json("MRN-WD1", "Withdrawn");
    p["managingOrganization"] =
        serde_json::json!({ "reference": format!("Organization/{}", c.facility) });
    let res = api(&c, Method::POST, "/fhir/Patient", &doc_a, Some(p)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let patient: serde_json::Value = res.json().await.unwrap();
    let patient = patient["id"].as_str().unwrap().to_string();
    let record = format!("/fhir/Patient/{patient}");
    let op = format!("/fhir/Patient/{patient}/$break-glass");
    let end = format!("/fhir/Patient/{patient}/$break-glass-end");
    let request = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueCode": "urgent-consult"},
        {"name": "justification", "valueString": "Consult requested by the night team"},
    ]});
    let waiting = |c: &Console| {
        pending_changes(c)
            .into_iter()
            .find(|(_, status, _)| status == "pending")
            .map(|(id, _, _)| id)
    };
    let grant_status = |c: &Console| -> String {
        g::table
            .order(g::requested_at.desc())
            .select(g::status)
            .first(&mut c.app.db.conn())
            .unwrap()
    };

    // Withdrawn while it waits: gone from the queue, audited.
    let doc_b = mfa_token(&c, "dr-b");
    let res = api(&c, Method::POST, &op, &doc_b, Some(request.clone())).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let change = waiting(&c).unwrap();
    let approve = format!("/console/approvals/{change}/approve");
    let html = c
        .get(&approver, "/console/approvals")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("action=\"{approve}\"")), "{html}");
    let res = api(&c, Method::POST, &end, &doc_b, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(grant_param(&v, "status")["valueCode"], "withdrawn");
    let last = c.events().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("break-glass-withdraw", "permit")
    );
    assert_eq!(grant_status(&c), "withdrawn");
    assert_eq!(waiting(&c), None);
    let html = c
        .get(&approver, "/console/approvals")
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains(&approve), "{html}");
    // Approving it afterwards (a stale form) changes nothing.
    c.advance(30);
    let res = c
        .post(&approver, &approve, &[("reason", "consult confirmed")])
        .await;
    let html = res.text().await.unwrap();
    if html.contains("name=\"pending_id\"") {
        let res = c
            .post(
                &approver,
                "/console/step-up",
                &[("pending_id", &pending_id(&html)), ("code", &c.code_now())],
            )
            .await;
        assert!(res.status().is_client_error(), "{}", res.status());
        approver = renewed(&c, &approver).await;
    }
    assert_eq!(grant_status(&c), "withdrawn");
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::FORBIDDEN
    );
    // Withdrawing twice: nothing left to withdraw.
    let res = api(&c, Method::POST, &end, &doc_b, None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // The approval's last step (the code) and the withdrawal at the same moment.
    let mut outcomes = std::collections::BTreeSet::new();
    for _ in 0..4 {
        c.advance(30);
        let doc_b = mfa_token(&c, "dr-b");
        let res = api(&c, Method::POST, &op, &doc_b, Some(request.clone())).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let change = waiting(&c).unwrap();
        let before = c.events().len();
        let res = c
            .post(
                &approver,
                &format!("/console/approvals/{change}/approve"),
                &[("reason", "consult confirmed")],
            )
            .await;
        let html = res.text().await.unwrap();
        let code = c.code_now();
        let pending = pending_id(&html);
        let form = [("pending_id", pending.as_str()), ("code", code.as_str())];
        let (approved, withdrawn) = tokio::join!(
            c.post(&approver, "/console/step-up", &form),
            api(&c, Method::POST, &end, &doc_b, None),
        );
        let (approved, withdrawn) = (approved.status(), withdrawn.status());
        assert!(!approved.is_server_error() && !withdrawn.is_server_error());
        let queue = pending_changes(&c)
            .into_iter()
            .find(|(id, _, _)| *id == change)
            .unwrap()
            .1;
        let status = grant_status(&c);
        let events: Vec<(String, String)> = c.events()[before..]
            .iter()
            .map(|e| (e.0.clone(), e.1.clone()))
            .collect();
        let count = |a: &str| events.iter().filter(|e| e.0 == a).count();
        match (queue.as_str(), status.as_str()) {
            ("withdrawn", "withdrawn") => {
                assert_eq!(withdrawn, StatusCode::OK);
                assert!(approved.is_client_error(), "{approved}");
                assert_eq!(
                    (count("break-glass-withdraw"), count("break-glass-start")),
                    (1, 0)
                );
            }
            ("approved", "active") => {
                assert_eq!(approved, StatusCode::SEE_OTHER);
                assert_eq!(withdrawn, StatusCode::CONFLICT);
                assert_eq!(
                    (count("break-glass-start"), count("break-glass-withdraw")),
                    (1, 0)
                );
                let res = api(&c, Method::POST, &end, &doc_b, None).await;
                assert_eq!(res.status(), StatusCode::OK);
            }
            ("approved", "revoked") => {
                assert_eq!(approved, StatusCode::SEE_OTHER);
                assert_eq!(withdrawn, StatusCode::OK);
                assert_eq!(
                    (count("break-glass-start"), count("break-glass-end")),
                    (1, 1)
                );
            }
            other => panic!("inconsistent: {other:?} {events:?}"),
        }
        assert_eq!(
            count("break-glass-decision"),
            usize::from(queue == "approved")
        );
        outcomes.insert(queue);
        assert_eq!(
            api(&c, Method::GET, &record, &doc_b, None).await.status(),
            StatusCode::FORBIDDEN,
            "nothing left open"
        );
        approver = renewed(&c, &approver).await;
    }
    eprintln!("outcomes: {outcomes:?}");
}

/// The console's break-glass pages (issue 13): an active grant with its time left; a
/// privacy officer ends it (effective on the holder's next request); the review page lists
/// every access made under it from the audit trail; a verdict is appended (never changed,
/// never by the grant's holder); the dashboard shows the alerts and the overdue reviews.
#[tokio::test]
async fn privacy_officers_see_revoke_and_review_break_glass_grants() {
    use custodian::db::schema::{alerts, break_glass_grants as g, break_glass_reviews};
    use reqwest::Method;
    let c = Console::start_clocked().await;
    c.user("dr-a", &[Role::Clinician], None);
    c.user("dr-b", &[Role::Clinician], None);
    // A privacy officer who is also a clinician with a grant of their own.
    let po_id = c.user(
        "po",
        &[Role::PrivacyOfficer, Role::Clinician],
        Some("Pat Privacy"),
    );
    c.enrol(po_id);
    let po = c.sign_in(po_id);
    let doc_a = mfa_token(&c, "dr-a");
    let doc_b = mfa_token(&c, "dr-b");
    let mut p = crate::support::world::patient_json("MRN-PO1", "Reviewed");
    p["managingOrganization"] =
        serde_json::json!({ "reference": format!("Organization/{}", c.facility) });
    let res = api(&c, Method::POST, "/fhir/Patient", &doc_a, Some(p)).await;
    let patient: serde_json::Value = res.json().await.unwrap();
    let patient = patient["id"].as_str().unwrap().to_string();
    let record = format!("/fhir/Patient/{patient}");
    let ask = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueCode": "emergency-treatment"},
        {"name": "justification", "valueString": "Collapsed in radiology, no team on call"},
    ]});
    let res = api(
        &c,
        Method::POST,
        &format!("{record}/$break-glass"),
        &doc_b,
        Some(ask.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: serde_json::Value = res.json().await.unwrap();
    let grant = grant_param(&v, "grant")["valueId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::OK
    );
    let mine = {
        let po_token = mfa_token(&c, "po");
        let res = api(
            &c,
            Method::POST,
            &format!("{record}/$break-glass"),
            &po_token,
            Some(ask),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let v: serde_json::Value = res.json().await.unwrap();
        grant_param(&v, "grant")["valueId"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // The dashboard shows the alerts: a request and a first use, once each.
    let kinds: Vec<String> = alerts::table
        .filter(alerts::grant_id.eq(Uuid::parse_str(&grant).unwrap()))
        .order(alerts::created_at)
        .select(alerts::kind)
        .load(&mut c.app.db.conn())
        .unwrap();
    assert_eq!(kinds, ["break-glass-request", "break-glass-first-use"]);
    let html = c.get(&po, "/console").await.text().await.unwrap();
    assert!(
        html.contains("break-glass-first-use") && html.contains(&grant),
        "{html}"
    );
    assert!(html.contains("id=\"no-overdue\""), "{html}");

    // The grants page: active, with the time left, and a revoke form.
    let html = c
        .get(&po, "/console/break-glass")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("id=\"active-{grant}\"")), "{html}");
    assert!(html.contains("60 min"), "{html}");
    assert!(html.contains(&format!("action=\"/console/break-glass/{grant}/revoke\"")));
    let res = c.get(&po, "/console/break-glass?status=bogus").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // The review page: the request and every access under the grant.
    let page = format!("/console/break-glass/{grant}");
    let html = c.get(&po, &page).await.text().await.unwrap();
    assert!(html.contains("Collapsed in radiology"), "{html}");
    assert_eq!(html.matches("<td>read</td>").count(), 2, "{html}");
    assert!(html.contains("<td>break-glass-start</td>"), "{html}");
    assert!(html.contains("id=\"review-form\""));

    // Revoked by the privacy officer, with a reason: the next request is refused.
    let res = c
        .post(&po, &format!("{page}/revoke"), &[("reason", "")])
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::OK
    );
    let res = c
        .post(
            &po,
            &format!("{page}/revoke"),
            &[("reason", "team reached, no longer needed")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/break-glass?done=grant-revoked");
    assert_eq!(
        api(&c, Method::GET, &record, &doc_b, None).await.status(),
        StatusCode::FORBIDDEN
    );
    let last = c
        .events()
        .into_iter()
        .rev()
        .find(|e| e.0 == "break-glass-end")
        .unwrap();
    assert_eq!(
        (last.1.as_str(), last.3.as_str()),
        ("permit", "session-mfa")
    );

    // A verdict: bad input refused; then appended; never changed.
    let res = c
        .post(
            &po,
            &format!("{page}/review"),
            &[("verdict", "fine"), ("notes", "ok")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = c
        .post(
            &po,
            &format!("{page}/review"),
            &[
                ("verdict", "appropriate"),
                ("notes", "Documented emergency <b>"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let html = c.get(&po, &page).await.text().await.unwrap();
    assert!(
        html.contains("<strong>appropriate</strong>") && !html.contains("emergency <b>"),
        "{html}"
    );
    // The notes are sealed at rest (the page opens them): no clear text in the table.
    assert!(html.contains("Documented emergency"), "{html}");
    let raw: String =
        diesel::sql_query("SELECT string_agg(r::text, '') AS t FROM break_glass_reviews r")
            .get_result::<RawText>(&mut c.app.db.conn())
            .unwrap()
            .t;
    assert!(!raw.contains("Documented"), "{raw}");
    let changed = diesel::sql_query("UPDATE break_glass_reviews SET verdict = 'inappropriate'")
        .execute(&mut c.app.db.conn());
    assert!(changed.is_err(), "verdicts are append-only");
    let changed = diesel::sql_query("UPDATE break_glass_reviews SET notes = 'rewritten notes'")
        .execute(&mut c.app.db.conn());
    assert!(changed.is_err(), "notes are never written back in clear");
    let n: i64 = break_glass_reviews::table
        .count()
        .get_result(&mut c.app.db.conn())
        .unwrap();
    assert_eq!(n, 1);
    let review_events = c
        .events()
        .iter()
        .filter(|e| e.0 == "break-glass-review")
        .count();
    assert_eq!(review_events, 1);

    // Never one's own grant.
    let res = c
        .post(
            &po,
            &format!("/console/break-glass/{mine}/review"),
            &[("verdict", "appropriate"), ("notes", "I was right")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        !c.get(&po, &format!("/console/break-glass/{mine}"))
            .await
            .text()
            .await
            .unwrap()
            .contains("review-form")
    );

    // A grant past its review deadline without a verdict is highlighted on the dashboard.
    diesel::update(g::table.filter(g::id.eq(Uuid::parse_str(&mine).unwrap())))
        .set(g::review_due_at.eq(chrono::Utc::now() - chrono::Duration::hours(1)))
        .execute(&mut c.app.db.conn())
        .unwrap_err();
    // (The grant's row allows no such edit outside a status change: move time instead.)
    c.advance(7 * 24 * 3600 + 60);
    let po = c.sign_in(po_id);
    // (A session that starts now by the app's clock.)
    let now = c.app.clock().now();
    diesel::update(console_sessions::table.filter(console_sessions::user_id.eq(Some(po_id))))
        .set((
            console_sessions::created_at.eq(now),
            console_sessions::last_seen_at.eq(now),
            console_sessions::totp_at.eq(Some(now)),
        ))
        .execute(&mut c.app.db.conn())
        .unwrap();
    let html = c.get(&po, "/console").await.text().await.unwrap();
    assert!(
        html.contains("id=\"overdue\"") && html.contains(&mine),
        "{html}"
    );
    assert!(
        !html.contains(&format!(
            "/console/break-glass/{grant}\"><code>{grant}</code></a>: user"
        )),
        "reviewed: not overdue"
    );
}

/// Detector alerts (issue 15) on the dashboard: title, severity, the explanation built from
/// codes and figures, the person or source, and links to the evidence events.
#[tokio::test]
async fn the_dashboard_explains_detector_alerts_and_links_their_evidence() {
    use custodian::db::alerts::{AlertKind, NewAlert, raise_all};
    let c = Console::start().await;
    let po = c.user("privacy", &[Role::PrivacyOfficer], None);
    c.enrol(po);
    let p = c.sign_in(po);
    let alert = |kind: AlertKind, reason: &'static str, figures: Vec<i64>| NewAlert {
        kind,
        severity: kind.severity(),
        reason,
        user_id: None,
        patient_id: None,
        grant_id: None,
        source_ip: None,
        client_id: None,
        figures,
        evidence_seqs: vec![2, 3, 5],
        dedup_key: format!("test:{}", kind.code()),
        created_at: chrono::Utc::now(),
    };
    let mut denial = alert(AlertKind::RepeatedDenial, "no-relationship", vec![3, 10, 3]);
    denial.user_id = Some(custodian::domain::UserId(po));
    let mut spike = alert(AlertKind::AuthFailureSpike, "address", vec![25, 5, 20]);
    spike.source_ip = Some("10.9.8.7".into());
    let raised = raise_all(&mut c.app.db.conn(), &[denial.clone(), spike]).unwrap();
    assert_eq!(raised.len(), 2);
    // The same key again: nothing new.
    assert!(
        raise_all(&mut c.app.db.conn(), &[denial])
            .unwrap()
            .is_empty()
    );

    let html = c.get(&p, "/console").await.text().await.unwrap();
    assert!(
        html.contains("Repeatedly refused without a relationship"),
        "{html}"
    );
    assert!(
        html.contains("A person was refused 3 time(s) within 10 minute(s)"),
        "{html}"
    );
    assert!(html.contains(&format!("user <code>{po}</code>")), "{html}");
    assert!(
        html.contains(
            "25 authentication or authorisation failure(s) (401/403/429) from one source address"
        ),
        "{html}"
    );
    assert!(html.contains("source <code>10.9.8.7</code>"), "{html}");
    assert!(html.contains("href=\"/console/audit/5\""), "{html}");
    assert!(html.contains("severity-medium"), "{html}");
}

/// The signing secret a webhook page shows (once).
fn shown_secret(html: &str) -> String {
    html.split("id=\"webhook-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or_else(|| panic!("no secret on {html}"))
        .to_string()
}

#[tokio::test]
async fn admins_see_export_jobs_with_their_progress_and_nobody_else_does() {
    use custodian::db::export_jobs::{self, NewJob};
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let requester = c.user("dr-export", &[Role::Clinician], Some("Dr Export"));
    let now = chrono::Utc::now();
    let job = Uuid::new_v4();
    let new = NewJob {
        id: job,
        requester_id: requester,
        status: "running".into(),
        level: "patient".into(),
        kind: "de-identified".into(),
        group_id: None,
        types: vec!["Patient".into(), "Observation".into()],
        since: None,
        k: 5,
        suppress: false,
        parts: serde_json::json!([{}, {}]),
        progress: serde_json::json!({ "part": 1, "after": null, "counts": [1234, 567], "bytes": [0, 0] }),
        actor_client_id: None,
        actor_roles: vec!["clinician".into()],
        auth_method: "bearer".into(),
        client_app: None,
        transaction_time: now,
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
    };
    export_jobs::insert(&mut c.app.db.conn(), &new)
        .unwrap()
        .unwrap();

    // The admin sees the job, its progress (resources written, the part it is on) and
    // who asked by internal id; the list is audited.
    let page = c.get(&a, "/console/exports").await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains(&job.to_string()), "{page}");
    assert!(page.contains(&requester.to_string()), "{page}");
    assert!(page.contains("<td>1801</td>"), "{page}");
    assert!(page.contains("<td>2 of 2</td>"), "{page}");
    assert!(page.contains("running") && page.contains("Patient, Observation"));
    assert!(!page.contains("Dr Export"), "ids, not names");
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "search" && e.1 == "permit"),
        "the list is audited"
    );
    // A privacy officer (not an administrator) is refused, and so is a stranger.
    let po = c.user("privacy", &[Role::PrivacyOfficer], None);
    c.enrol(po);
    let p = c.sign_in(po);
    let res = c.get(&p, "/console/exports").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(!res.text().await.unwrap().contains(&job.to_string()));
    let anon = c.app.get("/console/exports").await;
    assert_eq!(location(&anon), "/console/signin");
}

#[tokio::test]
async fn webhook_endpoints_are_managed_with_step_up_and_the_secret_is_shown_once() {
    use custodian::db::schema::{webhook_deliveries as wd, webhook_endpoints as we};
    let c = Console::start().await;
    let (_, a) = admin(&c, "root");
    let url = "https://hooks.example.test/custodian";

    // A stale TOTP check: the code first, then the endpoint and its secret, once.
    c.make_stale(&a);
    let res = c.post(&a, "/console/webhooks", &[("url", url)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("Register a webhook endpoint"), "{html}");
    let count = || -> i64 { we::table.count().get_result(&mut c.app.db.conn()).unwrap() };
    assert_eq!(count(), 0, "nothing before the code");
    let res = c
        .post(
            &a,
            "/console/step-up",
            &[
                ("pending_id", &pending_id(&html)),
                ("code", &code_at(now_secs())),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    let secret = shown_secret(&html);
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(count(), 1);
    let a = renewed(&c, &a).await;
    let endpoint: Uuid = we::table
        .select(we::id)
        .first(&mut c.app.db.conn())
        .unwrap();

    // Listed, never with its secret; the change is audited.
    let page = c.get(&a, "/console/webhooks").await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(
        page.contains(url) && page.contains(&endpoint.to_string()),
        "{page}"
    );
    assert!(!page.contains(&secret));
    assert!(
        c.events()
            .iter()
            .any(|e| e.0 == "create" && e.1 == "permit" && e.4 == Some(endpoint))
    );
    // Bad input: 400 with a fixed message, nothing stored.
    let res = c
        .post(
            &a,
            "/console/webhooks",
            &[("url", "http://plain.example.test/<b>")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(!res.text().await.unwrap().contains("<b>"));
    assert_eq!(count(), 1);

    // An alert is queued for it; its delivery is listed with a redeliver button.
    let alert = custodian::db::alerts::NewAlert {
        kind: custodian::db::alerts::AlertKind::AuthFailureSpike,
        severity: custodian::db::alerts::Severity::Medium,
        reason: "address",
        user_id: None,
        patient_id: None,
        grant_id: None,
        source_ip: None,
        client_id: None,
        figures: vec![20, 5, 20],
        evidence_seqs: vec![],
        dedup_key: "console-webhook-test".into(),
        created_at: chrono::Utc::now(),
    };
    custodian::db::alerts::raise_all(&mut c.app.db.conn(), &[alert]).unwrap();
    let delivery: Uuid = wd::table
        .select(wd::id)
        .first(&mut c.app.db.conn())
        .unwrap();
    let page = c.get(&a, "/console/webhooks").await.text().await.unwrap();
    assert!(page.contains("alert.raised"), "{page}");
    let redeliver = format!("/console/webhooks/deliveries/{delivery}/redeliver");
    assert!(page.contains(&redeliver), "{page}");
    let res = c.post(&a, &redeliver, &[]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/console/webhooks?done=webhook-redelivered");

    // Rotating shows a new secret once; disabling stops it.
    let res = c
        .post(&a, &format!("/console/webhooks/{endpoint}/rotate"), &[])
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let rotated = shown_secret(&res.text().await.unwrap());
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    let res = c
        .post(&a, &format!("/console/webhooks/{endpoint}/disable"), &[])
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let enabled: bool = we::table
        .select(we::enabled)
        .first(&mut c.app.db.conn())
        .unwrap();
    assert!(!enabled);
    let res = c
        .post(
            &a,
            &format!("/console/webhooks/{}/disable", Uuid::new_v4()),
            &[],
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // A privacy officer reviews alerts but does not manage endpoints.
    let po = c.user("po", &[Role::PrivacyOfficer], None);
    c.enrol(po);
    let p = c.sign_in(po);
    assert_eq!(
        c.get(&p, "/console/webhooks").await.status(),
        StatusCode::FORBIDDEN
    );
    let res = c.post(&p, "/console/webhooks", &[("url", url)]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(count(), 1);
}
