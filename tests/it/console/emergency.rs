//! Emergency console accounts and `custodian admin`: created by the CLI (password from
//! stdin or a file, TOTP secret printed), signed in at /console/emergency with the same
//! answer and cost for unknown names, wrong passwords and disabled accounts, audited as
//! high-severity events; the first administrator granted from the CLI.

use crate::support::authenticator;
use crate::support::console_events as events;
use crate::support::oidc::{self, Provider, location};
use crate::support::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, TestApp, test_cert, test_keys};
use custodian::audit::event::{AuditAction, Severity};
use diesel::prelude::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple 42";

/// Runs `custodian <args>` against the app's database, with `stdin` as standard input.
fn custodian(app: &TestApp, args: &[&str], stdin: &str) -> Output {
    let cert = test_cert();
    let keys = test_keys();
    let mut child = crate::support::cli::command(
        args,
        &[
            ("CUSTODIAN_TLS_CERT_FILE", &cert.cert.to_string_lossy()),
            ("CUSTODIAN_TLS_KEY_FILE", &cert.key.to_string_lossy()),
            ("DATABASE_URL", &app.db.url),
            ("CUSTODIAN_CRYPTO_KEK", &keys.kek),
            ("CUSTODIAN_CRYPTO_BLIND_INDEX_KEY", &keys.blind_index_key),
            ("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY),
            ("CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY", TEST_SIGNING_KEY),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "custodian failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Creates the account with the CLI; returns its TOTP secret (base32).
fn create_account(app: &TestApp, name: &str) -> String {
    let out = custodian(
        app,
        &["admin", "create-emergency-account", name],
        &format!("{PASSWORD}\n"),
    );
    let text = stdout(&out);
    assert!(!text.contains(PASSWORD), "the password is never printed");
    let uri = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("otpauth://totp/"))
        .unwrap_or_else(|| panic!("no otpauth URI in {text}"))
        .to_string();
    let secret = url::Url::parse(&uri)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .unwrap()
        .1
        .to_string();
    assert!(text.contains(&secret), "the secret as text too: {text}");
    secret
}

fn code(secret: &str, offset: i64) -> String {
    authenticator::code_b32_at(
        secret,
        authenticator::now_secs().saturating_add_signed(offset),
    )
}

async fn post_emergency(
    app: &TestApp,
    client: &reqwest::Client,
    name: &str,
    password: &str,
    code: &str,
) -> (reqwest::StatusCode, String, Duration, Option<String>) {
    let started = Instant::now();
    let res = client
        .post(app.url("/console/emergency"))
        .header("origin", app.url(""))
        .form(&[("name", name), ("password", password), ("code", code)])
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = res.status();
    let loc = location(&res).map(|u| u.path().to_string());
    (status, res.text().await.unwrap(), took, loc)
}

async fn app_with(builder: crate::support::TestAppBuilder) -> (TestApp, Provider) {
    oidc::console_app(builder).await
}

#[tokio::test]
async fn emergency_account_signs_in_with_password_and_totp_as_a_high_severity_event() {
    let (app, _idp) = app_with(TestApp::builder()).await;
    let secret = create_account(&app, "breakglass-1");
    assert!(
        events(&app)
            .iter()
            .any(|e| e.0 == "emergency-account-change"),
        "the CLI change is audited"
    );
    let b = reqwest_client();
    let (status, _, _, loc) =
        post_emergency(&app, &b, "breakglass-1", PASSWORD, &code(&secret, 0)).await;
    assert_eq!(status, 303);
    assert_eq!(loc.as_deref(), Some("/console"));
    let res = b.get(app.url("/console")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("breakglass-1") && body.contains("admin"),
        "{body}"
    );
    let ev = events(&app);
    assert!(
        ev.iter()
            .any(|e| e.0 == "emergency-login" && e.1 == "permit"),
        "{ev:?}"
    );
    assert_eq!(AuditAction::EmergencyLogin.severity(), Severity::High);

    // The session follows the console's rules: the CLI disabling the account ends it.
    let out = custodian(
        &app,
        &[
            "admin",
            "disable-emergency-account",
            "breakglass-1",
            "--reason",
            "drill over",
        ],
        "",
    );
    stdout(&out);
    let res = b.get(app.url("/console")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res).unwrap().path(), "/console/signin");
}

fn reqwest_client() -> reqwest::Client {
    oidc::jar_client().0
}

/// The least time one argon2 verification takes here (calibrates the timing check). Load
/// only ever adds time, so the least of several tries is the machine's real cost.
fn argon2_floor() -> Duration {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            assert!(!custodian::crypto::password::verify(
                b"calibration",
                custodian::crypto::password::DUMMY_HASH
            ));
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[tokio::test]
async fn unknown_name_wrong_password_and_disabled_account_look_the_same() {
    let (app, _idp) =
        app_with(TestApp::builder().set("console.emergency_attempts_per_minute", 1000)).await;
    let secret = create_account(&app, "breakglass-1");
    let secret2 = create_account(&app, "breakglass-2");
    stdout(&custodian(
        &app,
        &[
            "admin",
            "disable-emergency-account",
            "breakglass-2",
            "--reason",
            "drill over",
        ],
        "",
    ));
    let floor = argon2_floor();
    let b = reqwest_client();
    // The fastest of five tries (noise only ever adds time; five because the suite runs
    // browser and sign-in tests beside this one on two cores).
    async fn fastest(
        app: &TestApp,
        b: &reqwest::Client,
        name: &str,
        password: &str,
        code: &str,
    ) -> (reqwest::StatusCode, String, Duration) {
        let mut best: Option<(reqwest::StatusCode, String, Duration)> = None;
        for _ in 0..5 {
            let r = post_emergency(app, b, name, password, code).await;
            if best.as_ref().is_none_or(|x| r.2 < x.2) {
                best = Some((r.0, r.1, r.2));
            }
        }
        best.unwrap()
    }
    // Baseline: an over-long password is refused before any hashing.
    let too_long = "x".repeat(2000);
    let baseline = fastest(&app, &b, "breakglass-1", &too_long, "000000").await;
    let unknown = fastest(&app, &b, "nobody-here", PASSWORD, &code(&secret, 0)).await;
    let wrong = fastest(
        &app,
        &b,
        "breakglass-1",
        "wrong password, long enough",
        &code(&secret, 0),
    )
    .await;
    let disabled = fastest(&app, &b, "breakglass-2", PASSWORD, &code(&secret2, 0)).await;
    let bad_name = fastest(&app, &b, "Not A Valid Name!", "x", "000000").await;
    // Calibrated before and after the requests: a busy moment during one calibration
    // must not raise the bar above what the requests themselves could show.
    let floor = floor.min(argon2_floor());
    for (what, r) in [
        ("over-long password", &baseline),
        ("unknown name", &unknown),
        ("wrong password", &wrong),
        ("disabled account", &disabled),
        ("invalid name", &bad_name),
    ] {
        assert_eq!(r.0, 401, "{what}");
        assert_eq!(r.1, unknown.1, "{what}: the same page");
        assert!(r.1.contains("Emergency sign-in failed"), "{what}: {}", r.1);
    }
    // Each of these paid for one argon2 verification (unknown names against a dummy
    // hash), which the over-long password did not.
    for (what, r) in [
        ("unknown name", &unknown),
        ("wrong password", &wrong),
        ("disabled account", &disabled),
        ("invalid name", &bad_name),
    ] {
        assert!(
            r.2 >= baseline.2 + floor / 2,
            "{what} took {:?}: not an argon2 verification ({floor:?}) more than the baseline {:?}",
            r.2,
            baseline.2
        );
    }
    assert!(b.get(app.url("/console")).send().await.unwrap().status() == 303);
    let ev = events(&app);
    let failed = ev
        .iter()
        .filter(|e| e.0 == "login-failed" && e.2.as_deref() == Some("invalid-credentials"))
        .count();
    assert_eq!(failed, 25, "{ev:?}");
    assert!(!ev.iter().any(|e| e.0 == "emergency-login"));

    // A right password with a wrong code: the same answer.
    let r = post_emergency(&app, &b, "breakglass-1", PASSWORD, "not-a-code").await;
    assert_eq!((r.0, &r.1), (unknown.0, &unknown.1));
    // And the right everything still works (the failures above did not lock it).
    let r = post_emergency(&app, &b, "breakglass-1", PASSWORD, &code(&secret, 0)).await;
    assert_eq!(r.0, 303);

    // Disabling its user (as the console and the admin API do) stops the account too.
    let user: uuid::Uuid = {
        use custodian::db::schema::emergency_accounts::dsl::*;
        emergency_accounts
            .filter(name.eq("breakglass-1"))
            .select(user_id)
            .first(&mut app.db.conn())
            .unwrap()
    };
    custodian::db::users::set_disabled(
        &mut app.db.conn(),
        user.into(),
        true,
        "test: user disabled",
        None,
    )
    .unwrap();
    let r = post_emergency(&app, &b, "breakglass-1", PASSWORD, &code(&secret, 30)).await;
    assert_eq!((r.0, &r.1), (unknown.0, &unknown.1));
}

#[tokio::test]
async fn emergency_sign_in_is_rate_limited_and_origin_checked() {
    let (app, _idp) =
        app_with(TestApp::builder().set("console.emergency_attempts_per_minute", 3)).await;
    let b = reqwest_client();
    let res = b
        .post(app.url("/console/emergency"))
        .header("origin", "https://evil.example")
        .form(&[("name", "x"), ("password", "y"), ("code", "123456")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    for _ in 0..3 {
        let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
        assert_eq!(r.0, 401);
    }
    let r = post_emergency(&app, &b, "someone-else", "guess guess guess", "123456").await;
    assert_eq!(r.0, 429, "the address is over its limit");
    // The refused attempt is audited like every other denial (before any lookup, so
    // nobody is named).
    let ev = events(&app);
    assert_eq!(
        ev.last()
            .map(|e| (e.0.as_str(), e.1.as_str(), e.2.as_deref())),
        Some(("login-failed", "deny", Some("rate-limited"))),
        "{ev:?}"
    );
}

#[tokio::test]
async fn the_emergency_attempt_limit_is_a_minute_on_the_apps_clock() {
    let (app, _idp) = app_with(
        TestApp::builder()
            .manual_clock()
            .set("console.emergency_attempts_per_minute", 2),
    )
    .await;
    let b = reqwest_client();
    for _ in 0..2 {
        let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
        assert_eq!(r.0, 401);
    }
    let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
    assert_eq!(r.0, 429, "over the limit within the minute");
    // Most of the minute later, still refused…
    app.clock().advance(Duration::from_secs(50));
    let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
    assert_eq!(r.0, 429, "the minute has not ended");
    // …once it has ended (by the app's clock, nobody slept), attempts count afresh.
    app.clock().advance(Duration::from_secs(11));
    let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
    assert_eq!(r.0, 401, "a new minute");
}

#[test]
fn create_emergency_account_refuses_short_passwords_and_reads_files() {
    // Without a database: the password is checked first.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "only 14 chars!\n").unwrap();
    let keys = test_keys();
    let out = Command::new(env!("CARGO_BIN_EXE_custodian"))
        .args(["admin", "create-emergency-account", "ops"])
        .arg("--password-file")
        .arg(&file)
        .env_clear()
        .env("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/none")
        .env("CUSTODIAN_CRYPTO_KEK", &keys.kek)
        .env("CUSTODIAN_CRYPTO_BLIND_INDEX_KEY", &keys.blind_index_key)
        .env("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY)
        .env("CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY", TEST_SIGNING_KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 15 characters"), "{err}");
    assert!(!err.contains("only 14"), "never echoes the password: {err}");
}

#[tokio::test]
async fn first_administrator_is_granted_from_the_cli_and_signs_in() {
    let (app, idp) = app_with(TestApp::builder()).await;
    let out = custodian(
        &app,
        &[
            "admin",
            "grant",
            "--issuer",
            &idp.issuer,
            "--subject",
            "first-admin",
            "--role",
            "admin",
            "--reason",
            "bootstrap of the first administrator",
        ],
        "",
    );
    assert!(stdout(&out).contains("granted admin"));
    assert!(
        events(&app).iter().any(|e| e.0 == "permission-change"),
        "the grant is audited"
    );
    // Separation of duties: the CLI acts for no account, so it cannot queue a change for
    // a second administrator; a path to PHI for an administrator is refused there.
    let before = events(&app).len();
    let out = custodian(
        &app,
        &[
            "admin",
            "grant",
            "--issuer",
            &idp.issuer,
            "--subject",
            "first-admin",
            "--role",
            "clinician",
            "--reason",
            "also works shifts",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("second administrator"), "{err}");
    let after = events(&app);
    assert_eq!(
        after.len(),
        before + 1,
        "the refusal is audited, nothing else"
    );
    assert_eq!(after.last().unwrap().0, "permission-change");
    assert_eq!(after.last().unwrap().1, "deny");
    assert_eq!(
        after.last().unwrap().2.as_deref(),
        Some("separation-of-duties")
    );
    let b = reqwest_client();
    let callback = idp.authorize(&app, &b, "first-admin").await;
    let res = b.get(callback.as_str()).send().await.unwrap();
    // The callback's own page refreshes to the TOTP step (see auth::callback).
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("refresh").map(|v| v.to_str().unwrap()),
        Some("0; url=/console/totp")
    );
    // Bad input is one clear error.
    let out = custodian(
        &app,
        &[
            "admin",
            "grant",
            "--issuer",
            "x",
            "--subject",
            "y",
            "--role",
            "root",
            "--reason",
            "because",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role"));
}

/// A client like [`reqwest_client`] whose connections come from `addr` (another loopback
/// address: another source address to the server).
fn client_from(addr: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .local_address(Some(addr.parse().unwrap()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn flooding_a_name_from_another_address_does_not_lock_its_holder_out() {
    let (app, _idp) =
        app_with(TestApp::builder().set("console.emergency_attempts_per_minute", 3)).await;
    let secret = create_account(&app, "breakglass-1");
    // Someone else floods the holder's account name from another address…
    let flood = client_from("127.0.0.2");
    for _ in 0..3 {
        let r = post_emergency(&app, &flood, "breakglass-1", "guess guess guess", "123456").await;
        assert_eq!(r.0, 401);
    }
    for _ in 0..2 {
        let r = post_emergency(&app, &flood, "breakglass-1", "guess guess guess", "123456").await;
        assert_eq!(r.0, 429, "the flooding address is over its limit");
    }
    // …and the holder, from their own address, still signs in.
    let holder = reqwest_client();
    let (status, _, _, loc) =
        post_emergency(&app, &holder, "breakglass-1", PASSWORD, &code(&secret, 0)).await;
    assert_eq!(
        status, 303,
        "the holder is not locked out by another address"
    );
    assert_eq!(loc.as_deref(), Some("/console"));
    // The flood's refusals are audited, one event each.
    let refused = events(&app)
        .iter()
        .filter(|e| e.0 == "login-failed" && e.2.as_deref() == Some("rate-limited"))
        .count();
    assert_eq!(refused, 2);
}

#[tokio::test]
async fn the_global_ceiling_on_emergency_attempts_is_an_audited_alert() {
    let (app, _idp) =
        app_with(TestApp::builder().set("console.emergency_attempts_per_minute", 1)).await;
    let ceiling = custodian::console::emergency::GLOBAL_CEILING_FACTOR;
    // One attempt from each of `ceiling` addresses: each within its own limit.
    for i in 0..ceiling {
        let b = client_from(&format!("127.0.0.{}", i + 2));
        let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
        assert_eq!(r.0, 401, "address {i}");
    }
    // One more from a fresh address is over the ceiling of all addresses together.
    let b = client_from(&format!("127.0.0.{}", ceiling + 2));
    let r = post_emergency(&app, &b, "someone", "guess guess guess", "123456").await;
    assert_eq!(r.0, 429, "the global ceiling");
    use custodian::db::schema::audit_events as ae;
    let alerts: Vec<(String, Option<String>, Option<uuid::Uuid>)> = ae::table
        .filter(ae::deny_reason.eq("rate-limited"))
        .select((ae::action, ae::resource_type, ae::actor_user_id))
        .load(&mut app.db.conn())
        .unwrap();
    assert_eq!(
        alerts,
        vec![(
            "login-failed".to_string(),
            Some("EmergencyAccount".to_string()),
            None
        )]
    );
}
