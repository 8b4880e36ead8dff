//! The admin console in a real browser (headless chromium over WebDriver, see
//! `common/browser.rs`), over HTTPS as an administrator would use it.

use crate::support::authenticator;
use crate::support::browser::Browser;
use crate::support::oidc;
use crate::support::{TestApp, test_cert};
use custodian::db::users::{self, UserKind};
use custodian::policy::Role;

/// An app with the console enabled. Provider discovery happens on first sign-in, so pages
/// before it work with a provider that is not running.
async fn console_app() -> TestApp {
    TestApp::builder()
        .set("console.issuer", "http://127.0.0.1:9")
        .set("console.client_id", "custodian-console")
        .set("console.client_secret", "test-secret")
        .set(
            "console.redirect_url",
            "https://localhost:8443/console/callback",
        )
        .spawn()
        .await
}

/// CSP violations and other errors the page logged to the browser console.
fn csp_violations(messages: &[String]) -> Vec<&String> {
    messages
        .iter()
        .filter(|m| m.contains("Content Security Policy"))
        .collect()
}

#[tokio::test]
async fn signin_page_renders_styled_over_https_without_csp_violations() {
    let app = console_app().await;
    let browser = Browser::start(&test_cert().cert_pem).await;
    browser.goto(&app.url("/console/signin")).await;
    let text = browser
        .wait_for_text("Sign in with your organisation")
        .await;
    assert!(text.contains("Admin console"), "{text}");
    assert_eq!(browser.current_url().await.scheme(), "https");
    // The stylesheet is same-origin, so the strict CSP lets it apply.
    let styled = browser
        .execute(
            "return document.styleSheets.length > 0 && document.styleSheets[0].cssRules.length > 0;",
            vec![],
        )
        .await;
    assert_eq!(styled, serde_json::json!(true), "console.css did not load");
    browser.screenshot("signin").await;

    browser.goto(&app.url("/")).await;
    browser.wait_for_text("Custodian").await;
    let messages = browser.console_messages().await;
    assert!(csp_violations(&messages).is_empty(), "{messages:?}");
    assert!(browser.alert_text().await.is_err(), "a dialog is open");
}

/// Without chromium the browser tests fail (CI installs it) and say how to install it.
#[test]
fn a_missing_browser_fails_with_the_install_command() {
    use crate::support::browser::{CHROMEDRIVER, installed};
    let missing = std::path::Path::new("/nonexistent/chromium");
    let err = installed(missing, std::path::Path::new(CHROMEDRIVER)).unwrap_err();
    assert!(err.contains("/nonexistent/chromium is missing"), "{err}");
    assert!(
        err.contains("apt-get install -y chromium chromium-driver"),
        "{err}"
    );
}

/// A failing browser test leaves a screenshot, the page's HTML and its URL behind.
#[tokio::test]
async fn a_failing_browser_test_saves_screenshot_and_html() {
    let app = console_app().await;
    let url = app.url("/console/signin");
    let dir = {
        let browser = Browser::start(&test_cert().cert_pem).await;
        browser.artifacts().to_path_buf()
    };
    let _ = std::fs::remove_dir_all(&dir);
    let failing = tokio::spawn(async move {
        let browser = Browser::start(&test_cert().cert_pem).await;
        browser.goto(&url).await;
        browser
            .wait_for_text("Sign in with your organisation")
            .await;
        panic!("deliberate failure after the page loaded");
    });
    assert!(failing.await.unwrap_err().is_panic());
    let png = std::fs::read(dir.join("failure.png")).expect("failure.png saved");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let html = std::fs::read_to_string(dir.join("failure.html")).expect("failure.html saved");
    assert!(html.contains("Sign in with your organisation"), "{html}");
    let at = std::fs::read_to_string(dir.join("failure-url.txt")).unwrap();
    assert!(at.ends_with("/console/signin"), "{at}");
}

/// A user known to the app, matched by (issuer, subject), with these roles and
/// optionally a display name.
fn known_user(
    app: &TestApp,
    issuer: &str,
    subject: &str,
    roles: &[Role],
    display_name: Option<&str>,
) -> uuid::Uuid {
    use custodian::db::schema::users::dsl;
    use diesel::prelude::*;
    let mut conn = app.db.conn();
    let user = users::user_for(&mut conn, issuer, subject, UserKind::Person).unwrap();
    for role in roles {
        users::grant_role(&mut conn, user.id, *role, "test bootstrap", None).unwrap();
    }
    diesel::update(dsl::users.find(user.id))
        .set(dsl::display_name.eq(display_name))
        .execute(&mut conn)
        .unwrap();
    user.id.as_uuid()
}

/// The current code of an authenticator holding `secret_b32`, as an app would compute it.
fn totp_now(secret_b32: &str) -> String {
    authenticator::code_b32_at(secret_b32, authenticator::now_secs())
}

/// See [`Browser::page_shot`] (docs/console.md shows these).
async fn page_shot(browser: &Browser, name: &str) {
    browser.page_shot(name).await;
}

/// Signs in through the provider's login and consent pages in the browser, enrols TOTP
/// from the secret shown on the page, and returns on the dashboard with that secret
/// (base32), for later step-up codes.
async fn sign_in_and_enrol(browser: &Browser, app: &TestApp, subject: &str) -> String {
    browser.goto(&app.url("/console/signin")).await;
    browser
        .wait_for_text("Sign in with your organisation")
        .await;
    page_shot(browser, "signin").await;
    browser.click("Sign in with your organisation").await;

    // The provider's development login, then its consent page.
    browser.wait_for_path_prefix("/interaction/").await;
    browser.fill("login", subject).await;
    browser.fill("password", "any password").await;
    browser.click("Sign-in").await;
    browser.wait_for_text("Continue").await;
    browser.click("Continue").await;

    browser.wait_for_text("Set up your authenticator").await;
    assert_eq!(browser.current_url().await.path(), "/console/totp");
    page_shot(browser, "totp-enrolment").await;
    // The QR code is drawn (inline SVG, allowed by the CSP) at its full size.
    let qr_width = browser
        .execute(
            "return document.getElementById('totp-qr').getBoundingClientRect().width;",
            vec![],
        )
        .await;
    assert_eq!(qr_width.as_f64(), Some(240.0), "QR code not drawn");
    let secret = browser
        .execute(
            "return document.getElementById('totp-secret').textContent.trim();",
            vec![],
        )
        .await;
    let code = totp_now(secret.as_str().unwrap());
    browser.fill("Code", &code).await;
    browser.click("Confirm").await;

    // Ten single-use recovery codes, shown once.
    browser.wait_for_text("Save your recovery codes").await;
    assert_eq!(browser.count("#recovery-codes li").await, 10);
    page_shot(browser, "recovery-codes").await;
    browser
        .click("I have saved them: continue to the console")
        .await;
    browser.wait_for_text("Session time left").await;
    assert_eq!(browser.current_url().await.path(), "/console");
    secret.as_str().unwrap().to_string()
}

#[tokio::test]
async fn admin_signs_in_through_the_provider_enrols_totp_and_sees_the_dashboard() {
    let (app, idp) = oidc::console_app(TestApp::builder()).await;
    known_user(&app, &idp.issuer, "alice", &[Role::Admin], None);
    let browser = Browser::start(&test_cert().cert_pem).await;

    sign_in_and_enrol(&browser, &app, "alice").await;
    let text = browser.text().await;
    assert!(text.contains("alice"), "{text}");
    assert!(text.contains("admin"), "{text}");
    page_shot(&browser, "dashboard").await;

    // The session cookie as the browser holds it: __Host-, Secure, HttpOnly, Strict.
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "__Host-custodian")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["path"], "/", "{session}");
    let messages = browser.console_messages().await;
    assert!(csp_violations(&messages).is_empty(), "{messages:?}");

    browser.click("Sign out").await;
    browser
        .wait_for_text("Sign in with your organisation")
        .await;
    browser.goto(&app.url("/console")).await;
    browser.wait_for_path("/console/signin").await;
}

#[tokio::test]
async fn admin_assigns_a_role_with_a_reason_and_sees_it_in_the_audit_events() {
    let (app, idp) = oidc::console_app(TestApp::builder()).await;
    known_user(
        &app,
        &idp.issuer,
        "alice",
        &[Role::Admin],
        Some("Alice Admin"),
    );
    let bob = known_user(&app, &idp.issuer, "bob", &[], Some("Dr Bob Ward"));
    let browser = Browser::start(&test_cert().cert_pem).await;
    sign_in_and_enrol(&browser, &app, "alice").await;

    browser.click("Users").await;
    browser.wait_for_text("Dr Bob Ward").await;
    page_shot(&browser, "users").await;
    browser.click("Dr Bob Ward").await;
    browser.wait_for_text("Role to add").await;
    assert_eq!(
        browser.current_url().await.path(),
        format!("/console/users/{bob}")
    );
    browser.select("Role to add", "clinician").await;
    browser
        .fill(
            "Reason (required, 3 to 500 characters)",
            "new hire on ward 3",
        )
        .await;
    browser.click("Add role").await;
    // The TOTP entered at sign-in is fresh, so no step-up is asked for here.
    browser.wait_for_text("The role was granted.").await;
    assert_eq!(browser.count("#roles .role").await, 1);
    let roles = browser
        .execute("return document.getElementById('roles').innerText;", vec![])
        .await;
    assert!(roles.as_str().unwrap().contains("clinician"), "{roles}");
    page_shot(&browser, "user").await;

    browser.click("Audit events").await;
    let text = browser.wait_for_text("permission-change").await;
    assert!(text.contains(&format!("RoleAssignment {bob}")), "{text}");
    // Metadata only: the reason is kept with the assignment, not in the audit trail.
    assert!(!text.contains("new hire on ward 3"), "{text}");
    page_shot(&browser, "audit-events").await;
    let messages = browser.console_messages().await;
    assert!(csp_violations(&messages).is_empty(), "{messages:?}");
}

const XSS: &str = "<img src=x onerror=alert(1)>";

#[tokio::test]
async fn a_display_name_with_markup_renders_as_text_and_runs_nothing() {
    let (app, idp) = oidc::console_app(TestApp::builder()).await;
    known_user(&app, &idp.issuer, "alice", &[Role::Admin], None);
    let mallory = known_user(&app, &idp.issuer, "mallory", &[], Some(XSS));
    let browser = Browser::start(&test_cert().cert_pem).await;
    sign_in_and_enrol(&browser, &app, "alice").await;

    for path in [
        "/console/users".to_string(),
        format!("/console/users/{mallory}"),
    ] {
        browser.goto(&app.url(&path)).await;
        // Shown as the literal text, not turned into an element.
        let text = browser.wait_for_text(XSS).await;
        assert!(text.contains(XSS), "{path}: {text}");
        assert_eq!(
            browser.count("img").await,
            0,
            "{path}: an <img> was created"
        );
        assert!(
            browser.alert_text().await.is_err(),
            "{path}: a dialog opened"
        );
        let messages = browser.console_messages().await;
        assert!(csp_violations(&messages).is_empty(), "{path}: {messages:?}");
    }

    // Control: the same markup put into the DOM directly does become an element, and the
    // CSP refuses its inline handler, which the browser log reports. So the checks above
    // would notice an unescaped name, and the CSP is a second line of defence.
    browser
        .execute(
            "document.body.insertAdjacentHTML('beforeend', arguments[0]);",
            vec![serde_json::json!(XSS)],
        )
        .await;
    assert_eq!(browser.count("img").await, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        seen = browser.console_messages().await;
        seen.retain(|m| m.contains("Content Security Policy"));
    }
    assert!(
        seen.iter().any(|m| m.contains("inline event handler")),
        "no CSP violation reported for the injected handler: {seen:?}"
    );
    assert!(
        browser.alert_text().await.is_err(),
        "the injected handler ran"
    );
}

/// Break-glass in the console (issue 13), in a real browser: a request in approval mode
/// waits in the queue; an administrator approves it after a fresh code; the grant shows
/// with its time left; a privacy officer records a verdict on its review page. The
/// screenshots are the ones docs/console.md and docs/break-glass.md show.
#[tokio::test]
async fn break_glass_is_approved_shown_and_reviewed_in_the_browser() {
    use custodian::db::break_glass as grants;
    use custodian::domain::clock::Clock;
    use custodian::policy::break_glass::{Mode, ValidRequest};
    let (app, idp) = oidc::console_app(
        TestApp::builder()
            .manual_clock()
            .set("break_glass.mode", "approval"),
    )
    .await;
    known_user(
        &app,
        &idp.issuer,
        "alice",
        &[Role::Admin, Role::PrivacyOfficer],
        Some("Alice Admin"),
    );
    let bob = known_user(&app, &idp.issuer, "dr-bob", &[Role::Clinician], None);
    // A patient and Dr Bob's waiting request, as `POST …/$break-glass` stores them.
    let config = TestApp::builder().config(&app.db.url);
    let kr = custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).unwrap();
    let mut c = app.db.conn();
    let facility = custodian::db::phi::insert_facility(&mut c, "General Hospital").unwrap();
    let patient = custodian::db::phi::insert_patient(
        &mut c,
        &kr,
        &custodian::db::phi::NewPatient {
            facility_id: facility,
            mrn: "MRN-BR1".into(),
            ssn: None,
            family: "Synthetic".into(),
            given: "Pat".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
            gender: "unknown".into(),
            telecom: None,
            address: None,
        },
    )
    .unwrap();
    let bob = custodian::domain::UserId(bob);
    let pending = custodian::db::pending::request(
        &mut c,
        grants::KIND_BREAK_GLASS,
        &serde_json::json!({ "patient": patient.id }),
        Some(bob),
        bob,
    )
    .unwrap();
    let request = ValidRequest {
        reason: "urgent-consult".into(),
        justification: "Night team asks for a consult on an unconscious patient".into(),
        minutes: 45,
    };
    let now = app.clock().now();
    let grant = grants::insert(
        &mut c,
        &kr,
        bob,
        patient.id,
        facility,
        Mode::Approval,
        &request,
        now,
        7,
        Some(pending),
    )
    .unwrap();
    drop(c);

    let browser = Browser::start(&test_cert().cert_pem).await;
    let secret = sign_in_and_enrol(&browser, &app, "alice").await;
    browser.goto(&app.url("/console/approvals")).await;
    browser.wait_for_text("asks for 45 minutes").await;
    page_shot(&browser, "break-glass-queue").await;
    browser
        .fill("Reason for approving", "consult confirmed by phone")
        .await;
    browser.click("Approve").await;
    browser.wait_for_text("6-digit code").await;
    // A code is used once: the next one, 30 seconds on.
    app.clock().advance(std::time::Duration::from_secs(30));
    let at = u64::try_from(app.clock().now().timestamp()).unwrap();
    browser
        .fill("6-digit code", &authenticator::code_b32_at(&secret, at))
        .await;
    browser.click("Confirm and continue").await;
    browser
        .wait_for_text("The change was approved and performed.")
        .await;

    browser.goto(&app.url("/console/break-glass")).await;
    let text = browser.wait_for_text("Active now").await;
    assert!(text.contains("45 min"), "{text}");
    assert_eq!(browser.count("#active tbody tr").await, 1);
    page_shot(&browser, "break-glass-grants").await;

    browser
        .goto(&app.url(&format!("/console/break-glass/{}", grant.id)))
        .await;
    browser.wait_for_text("Every access under this grant").await;
    browser
        .execute(
            "document.querySelector('input[name=verdict][value=appropriate]').click();",
            vec![],
        )
        .await;
    browser
        .fill("Notes", "Consult documented in the chart the same night")
        .await;
    browser.click("Record the verdict").await;
    let text = browser.wait_for_text("The review was recorded.").await;
    assert!(text.contains("appropriate"), "{text}");
    // The request's lifecycle from the audit trail, and the verdict.
    assert!(text.contains("break-glass-decision"), "{text}");
    browser
        .execute(
            "document.getElementById('accesses-title').scrollIntoView();",
            vec![],
        )
        .await;
    page_shot(&browser, "break-glass-review").await;
    let messages = browser.console_messages().await;
    assert!(csp_violations(&messages).is_empty(), "{messages:?}");
}

/// Alerts and cases (issue 15) in a real browser: a privacy officer sees the alert list
/// (MRN, explanation, evidence links), opens a case of two alerts, and closes it as a
/// violation with a sanction. Both pages fit the 1280-px window; the screenshots are the
/// ones docs/privacy-review.md shows.
#[tokio::test]
async fn privacy_officer_works_alerts_into_a_case_and_closes_it_in_the_browser() {
    use custodian::db::alerts::{AlertKind, NewAlert, raise_all};
    let (app, idp) = oidc::console_app(TestApp::builder()).await;
    known_user(
        &app,
        &idp.issuer,
        "pia",
        &[Role::PrivacyOfficer],
        Some("Pia Privacy"),
    );
    let bob = known_user(
        &app,
        &idp.issuer,
        "dr-bob",
        &[Role::Clinician],
        Some("Dr Bob Example"),
    );
    let config = TestApp::builder().config(&app.db.url);
    let kr = custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).unwrap();
    let mut c = app.db.conn();
    let facility = custodian::db::phi::insert_facility(&mut c, "General Hospital").unwrap();
    let patient = custodian::db::phi::insert_patient(
        &mut c,
        &kr,
        &custodian::db::phi::NewPatient {
            facility_id: facility,
            mrn: "MRN-AL1".into(),
            ssn: None,
            family: "Synthetic".into(),
            given: "Pat".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
            gender: "unknown".into(),
            telecom: None,
            address: None,
        },
    )
    .unwrap();
    let alert = |kind: AlertKind, key: &str, figures: Vec<i64>| NewAlert {
        kind,
        severity: kind.severity(),
        reason: "care-team",
        user_id: Some(custodian::domain::UserId(bob)),
        patient_id: Some(patient.id),
        grant_id: None,
        source_ip: None,
        client_id: None,
        figures,
        evidence_seqs: vec![1, 2],
        dedup_key: key.into(),
        created_at: chrono::Utc::now(),
    };
    raise_all(
        &mut c,
        &[
            alert(AlertKind::WorkforcePatient, "b:1", vec![3]),
            alert(AlertKind::RestrictedRecord, "b:2", vec![2]),
        ],
    )
    .unwrap();
    drop(c);

    let browser = Browser::start(&test_cert().cert_pem).await;
    sign_in_and_enrol(&browser, &app, "pia").await;
    browser.goto(&app.url("/console/alerts")).await;
    let text = browser.wait_for_text("Co-worker's record").await;
    assert!(
        text.contains("MRN MRN-AL1") && text.contains("Dr Bob Example"),
        "{text}"
    );
    assert_eq!(browser.count("#alert-list tbody tr").await, 2);
    fits_1280(&browser, "alert list").await;
    page_shot(&browser, "privacy-alerts").await;

    browser
        .execute(
            "document.querySelectorAll('input[name=alert]').forEach(b => b.click());",
            vec![],
        )
        .await;
    browser.click("Open a case of the picked alerts").await;
    browser.wait_for_text("Saved.").await;
    browser
        .execute(
            "document.querySelector('input[name=status][value=closed-violation]').click();",
            vec![],
        )
        .await;
    browser
        .select(
            "Sanction (required to close as a violation, HIPAA 164.308(a)(1)(ii)(C))",
            "Written warning",
        )
        .await;
    browser
        .fill(
            "Notes (required to close)",
            "Opened a co-worker's chart with no care relationship; confirmed with the manager.",
        )
        .await;
    browser.click("Save the status").await;
    let text = browser.wait_for_text("The case was closed.").await;
    assert!(text.contains("closed-violation"), "{text}");
    assert!(text.contains("sanction: Written warning"), "{text}");
    fits_1280(&browser, "case page").await;
    page_shot(&browser, "privacy-case").await;
    let messages = browser.console_messages().await;
    assert!(csp_violations(&messages).is_empty(), "{messages:?}");
}

/// The page is no wider than the 1280-px window (no horizontal scrolling).
async fn fits_1280(browser: &Browser, what: &str) {
    let v = browser
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
