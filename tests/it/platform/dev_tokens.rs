//! Development tokens: the dev JWKS route exists only when the app is started the way
//! `custodian dev` starts it, and a token from `dev-token`'s key works against such an app.

use crate::support::{TestApp, free_port, test_cert};
use custodian::db::users;
use custodian::dev::token::{DEV_AUDIENCE, DEV_ISSUER, DEV_JWKS_PATH, DevJwks, DevSigningKey};
use custodian::policy::Role;
use reqwest::StatusCode;

#[tokio::test]
async fn dev_jwks_route_is_absent_under_serve() {
    let app = TestApp::spawn().await;
    let res = app.get(DEV_JWKS_PATH).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(
        !custodian::app::routes::table()
            .iter()
            .any(|r| r.path == DEV_JWKS_PATH),
        "the product route table never contains the dev JWKS"
    );
}

/// The development sign-in provider exists only when `custodian dev` starts the app: under
/// `serve` every one of its paths is 404, also with a configuration that names it (the
/// console pointed at the dev issuer with the dev client, API tokens from the dev issuer).
#[tokio::test]
async fn dev_sign_in_provider_is_absent_under_serve_whatever_the_configuration() {
    use custodian::dev::idp;
    let paths = crate::console::dev_tour::dev_paths();
    for path in paths {
        assert!(
            !custodian::app::routes::table()
                .iter()
                .any(|r| r.path == path),
            "the product route table never contains {path}"
        );
    }
    let port = free_port();
    let base = format!("https://localhost:{port}");
    let plain = TestApp::spawn().await;
    let named = TestApp::builder()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("server.public_url", base.as_str())
        .set("auth.issuer", format!("{base}{}", idp::PATH_PREFIX))
        .set("auth.audience", DEV_AUDIENCE)
        .set("auth.jwks_url", format!("{base}{DEV_JWKS_PATH}"))
        .set("console.issuer", format!("{base}{}", idp::PATH_PREFIX))
        .set("console.client_id", idp::CLIENT_ID)
        .set("console.client_secret", "dev-secret")
        .set("console.redirect_url", format!("{base}/console/callback"))
        .spawn()
        .await;
    for app in [&plain, &named] {
        for path in paths {
            for method in [reqwest::Method::GET, reqwest::Method::POST] {
                let res = app
                    .client
                    .request(method.clone(), app.url(path))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn dev_minted_token_works_against_a_dev_configured_app() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let key = DevSigningKey::ensure(&keys).unwrap();
    let port = free_port();
    let app = TestApp::builder()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("auth.issuer", DEV_ISSUER)
        .set("auth.audience", DEV_AUDIENCE)
        .set(
            "auth.jwks_url",
            format!("https://localhost:{port}{DEV_JWKS_PATH}"),
        )
        .dev_jwks(DevJwks {
            document: std::sync::Arc::new(key.jwks()),
            trust_root_pem: Some(test_cert().cert_pem.clone()),
        })
        .spawn()
        .await;

    let res = app.get(DEV_JWKS_PATH).await;
    assert_eq!(res.status(), StatusCode::OK);
    let jwks: serde_json::Value = res.json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], key.kid());
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private key material"
    );

    let facility = custodian::db::phi::insert_facility(&mut app.db.conn(), "Dev Clinic").unwrap();
    {
        let mut c = app.db.conn();
        let u = users::user_for(&mut c, DEV_ISSUER, "dr.demo", users::UserKind::Person).unwrap();
        users::grant_role(&mut c, u.id, Role::Clinician, "dev test", None).unwrap();
        users::set_facility(&mut c, u.id, Some(facility)).unwrap();
    }
    let now = chrono::Utc::now().timestamp();
    let token = key.mint(
        DEV_ISSUER,
        DEV_AUDIENCE,
        "dr.demo",
        custodian::dev::token::DEFAULT_SCOPE,
        3600,
        now,
    );
    let res = app
        .client
        .get(app.url("/fhir/Patient?family=Smith"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A token signed by another key (same kid) is refused.
    let other = DevSigningKey::ensure(&dir.path().join("other")).unwrap();
    let forged = other.mint(DEV_ISSUER, DEV_AUDIENCE, "dr.demo", "user/*.rs", 3600, now);
    let res = app
        .client
        .get(app.url("/fhir/Patient?family=Smith"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn dev_token_command_refuses_without_the_dev_key_and_mints_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_custodian"))
            .args(["dev-token", "--sub", "dr.demo"])
            .env_clear()
            .env("CUSTODIAN_DEV_DIR", dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("custodian dev"), "{err}");
    assert!(out.stdout.is_empty());

    let key = DevSigningKey::ensure(&dir.path().join("keys")).unwrap();
    let out = run();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEVELOPMENT TOKEN"), "{err}");
    let token = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["kid"], key.kid());
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["sub"], "dr.demo");
    assert_eq!(claims["iss"], DEV_ISSUER);
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 3600);
}

#[test]
fn dev_totp_command_prints_codes_only_for_pre_enrolled_people_with_the_dev_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |person: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_custodian"))
            .args(["dev-totp", person])
            .env_clear()
            .env("CUSTODIAN_DEV_DIR", dir.path())
            .output()
            .unwrap()
    };
    let out = run("admin.demo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("custodian dev"));
    assert!(out.stdout.is_empty());

    let key = custodian::dev::totp::DevTotpKey::ensure(&dir.path().join("keys")).unwrap();
    let out = run("admin.demo");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVELOPMENT TOTP code"));
    let code = String::from_utf8(out.stdout).unwrap();
    let code = code.trim();
    let now = chrono::Utc::now().timestamp() as u64;
    let step = custodian::console::totp::matching_step(
        &key.secret("admin.demo").unwrap(),
        code,
        now,
        None,
    )
    .unwrap();
    assert!(
        step.is_some(),
        "{code} is a current code of admin.demo's dev secret"
    );

    // Only the people `custodian dev` pre-enrolled: no code for anyone else.
    let out = run("dr.demo");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
