//! Bearer-token verification against a real (local) identity provider: a small HTTP
//! server in the test serves the discovery document and the JWKS and counts requests;
//! tokens are minted here with ES256, EdDSA and RS256 keys.

use crate::support::idp::*;
use crate::support::{TestApp, assert_security_headers};
use actix_web::HttpResponse;
use actix_web::http::Method;
use custodian::app::routes::Routes;
use custodian::auth::{Bearer, Context, Grant, Interaction, ResourceType};
use custodian::domain::Clock;
use custodian::policy::Action;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use std::time::Duration;

const AUDIENCE: &str = "https://custodian.test/fhir";
const WHOAMI: &str = "/fhir/test/whoami";

// ---------------------------------------------------------------------------
// A test-only protected route.

fn routes(r: &mut Routes) {
    // Test-only route; the product's bearer routes get their policy action from the lead's
    // policy layer.
    r.add(Method::GET, WHOAMI, Action::Public, whoami);
}

async fn whoami(token: Bearer) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "sub": token.subject,
        "client_id": token.client_id,
        "client_credentials": token.grant == Grant::ClientCredentials,
        "patient_read": token.scopes.allows(Context::User, ResourceType::Patient, Interaction::Read),
        "patient_update": token.scopes.allows(Context::User, ResourceType::Patient, Interaction::Update),
    }))
}

// ---------------------------------------------------------------------------
// Helpers.

fn claims(p: &Provider) -> Value {
    claims_at(p, now())
}

/// Claims issued at `now` (seconds since the epoch): for an app on a manual clock, its
/// [`app_now`], so that moving the clock is what ages the token.
fn claims_at(p: &Provider, now: i64) -> Value {
    json!({
        "iss": p.issuer(),
        "aud": AUDIENCE,
        "sub": "user-123",
        "exp": now + 300,
        "iat": now,
        "nbf": now - 5,
        "jti": "jti-1",
        "client_id": "app-1",
        "scope": "openid user/Patient.rs",
    })
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn app_for(p: &Provider, settings: &[(&str, toml::Value)]) -> TestApp {
    let mut b = TestApp::builder()
        .set("auth.issuer", p.issuer())
        .set("auth.audience", AUDIENCE)
        .extra_routes(routes);
    for (k, v) in settings {
        b = b.set(k, v.clone());
    }
    b.spawn().await
}

/// Like [`app_for`], on a manual clock ([`TestApp::clock`]): the test moves time forward
/// instead of sleeping.
async fn clocked_app_for(p: &Provider, settings: &[(&str, toml::Value)]) -> TestApp {
    let mut b = TestApp::builder()
        .set("auth.issuer", p.issuer())
        .set("auth.audience", AUDIENCE)
        .extra_routes(routes)
        .manual_clock();
    for (k, v) in settings {
        b = b.set(k, v.clone());
    }
    b.spawn().await
}

/// The app's time, in seconds since the epoch.
fn app_now(app: &TestApp) -> i64 {
    app.clock().now().timestamp()
}

/// Moves the app's clock forward.
fn advance(app: &TestApp, secs: u64) {
    app.clock().advance(Duration::from_secs(secs));
}

async fn call(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(WHOAMI))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
}

async fn assert_ok(app: &TestApp, token: &str) -> Value {
    let res = call(app, token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// 401, the fixed challenge, an OperationOutcome with the fixed message and nothing
/// from the token.
async fn assert_refused(app: &TestApp, token: &str, case: &str) {
    let res = call(app, token).await;
    assert_eq!(res.status(), 401, "{case}");
    assert_security_headers(&res);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "{case}"
    );
    assert_eq!(
        res.headers()["content-type"],
        "application/fhir+json",
        "{case}"
    );
    let body = res.text().await.unwrap();
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{case}");
    assert_eq!(outcome["issue"][0]["code"], "login", "{case}");
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        custodian::error::UNAUTHENTICATED_MESSAGE,
        "{case}: the body says nothing about why"
    );
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!body.contains(part), "{case}: token echoed");
    }
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn valid_tokens_of_each_algorithm_are_accepted() {
    let es = Signer::es256("es");
    let ed = Signer::eddsa("ed");
    let rs = Signer::rs256("rs");
    let p = Provider::start(&[&es, &ed, &rs]).await;
    let app = app_for(&p, &[]).await;
    for signer in [&es, &ed, &rs] {
        let body = assert_ok(&app, &signer.sign(&claims(&p))).await;
        assert_eq!(body["sub"], "user-123", "{:?}", signer.alg);
        assert_eq!(body["client_id"], "app-1");
        assert_eq!(body["client_credentials"], false);
        assert_eq!(body["patient_read"], true);
        assert_eq!(body["patient_update"], false);
    }
    // One discovery and one JWKS fetch served all three.
    assert_eq!(p.jwks_hits(), 1);
    assert_eq!(p.all_hits(), 2);
}

#[tokio::test]
async fn client_credentials_tokens_are_marked_as_such() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = app_for(&p, &[]).await;
    let token = es.sign(&with(
        claims(&p),
        json!({ "sub": "svc-1", "client_id": null, "azp": "svc-1", "scope": "system/Claim.r" }),
    ));
    let body = assert_ok(&app, &token).await;
    assert_eq!(body["client_credentials"], true);
    assert_eq!(body["client_id"], "svc-1");
}

#[tokio::test]
async fn forged_and_invalid_tokens_are_refused_without_detail() {
    let es = Signer::es256("es");
    let rs = Signer::rs256("rs");
    let p = Provider::start(&[&es, &rs]).await;
    let app = app_for(&p, &[]).await;
    let good = claims(&p);
    let t = now();
    // Sanity: the baseline is accepted, so each case fails for its own reason.
    assert_ok(&app, &es.sign(&good)).await;

    let mut cases: Vec<(&str, String)> = vec![
        (
            "expired beyond the skew",
            es.sign(&with(good.clone(), json!({ "exp": t - 120 }))),
        ),
        (
            "nbf in the future",
            es.sign(&with(good.clone(), json!({ "nbf": t + 600 }))),
        ),
        (
            "fractional nbf in the future",
            es.sign(&with(good.clone(), json!({ "nbf": t as f64 + 600.5 }))),
        ),
        (
            "nbf not a number",
            es.sign(&with(good.clone(), json!({ "nbf": "yesterday" }))),
        ),
        (
            "negative nbf",
            es.sign(&with(good.clone(), json!({ "nbf": -1 }))),
        ),
        (
            "negative exp",
            es.sign(&with(good.clone(), json!({ "exp": -1 }))),
        ),
        (
            "iat in the future",
            es.sign(&with(good.clone(), json!({ "iat": t + 600 }))),
        ),
        (
            "wrong issuer",
            es.sign(&with(
                good.clone(),
                json!({ "iss": "https://evil.example" }),
            )),
        ),
        (
            "issuer with a trailing slash is not exact",
            es.sign(&with(
                good.clone(),
                json!({ "iss": format!("{}/", p.issuer()) }),
            )),
        ),
        (
            "wrong audience",
            es.sign(&with(good.clone(), json!({ "aud": "https://other.api" }))),
        ),
        (
            "no audience",
            es.sign(&with(good.clone(), json!({ "aud": null }))),
        ),
        (
            "missing sub",
            es.sign(&with(good.clone(), json!({ "sub": null }))),
        ),
        (
            "missing exp",
            es.sign(&with(good.clone(), json!({ "exp": null }))),
        ),
        (
            "ID token (nonce) used as access token",
            es.sign(&with(
                good.clone(),
                json!({ "aud": [AUDIENCE, "app-1"], "nonce": "n-0S6_WzA2Mj", "azp": "app-1" }),
            )),
        ),
        (
            "ID token (at_hash) used as access token",
            es.sign(&with(
                good.clone(),
                json!({ "at_hash": "77QmUPtjPfzWtF2AnpK9RQ" }),
            )),
        ),
        (
            "token_use id",
            es.sign(&with(good.clone(), json!({ "token_use": "id" }))),
        ),
        (
            "oversize token",
            es.sign(&with(good.clone(), json!({ "pad": "x".repeat(9000) }))),
        ),
        ("not a JWT", "not-a-token".to_string()),
    ];

    // Bad signature: signed by another key under the trusted kid.
    let impostor = Signer::es256("es");
    cases.push(("bad signature", impostor.sign(&good)));
    // Tampered payload.
    let genuine = es.sign(&good);
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let tampered_payload = b64(&with(good.clone(), json!({ "sub": "admin" })));
    parts[1] = &tampered_payload;
    cases.push(("tampered payload", parts.join(".")));
    // alg none, with and without a signature part.
    let none_header = json!({ "alg": "none", "typ": "JWT", "kid": "es" });
    cases.push(("alg none", format!("{}.{}.", b64(&none_header), b64(&good))));
    cases.push((
        "alg none with junk signature",
        format!("{}.{}.AAAA", b64(&none_header), b64(&good)),
    ));
    // HS256 signed with the RSA public key as the HMAC secret (key confusion).
    let public_pem = fixture("test-only-rsa-public.pem");
    let hs = Signer {
        kid: "rs".into(),
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(public_pem.as_bytes()),
    };
    cases.push(("HS256 with the RSA public key", hs.sign(&good)));
    // Algorithm/key mismatch: an RS256 header naming the EC key.
    let mut h = rs.header();
    h.kid = Some("es".into());
    cases.push(("RS256 header on an EC key", rs.sign_with(h, &good)));
    // An accepted algorithm the key does not declare: PS256 with the RS256 key.
    let ps = Signer {
        kid: "rs".into(),
        alg: Algorithm::PS256,
        key: rs.key.clone(),
    };
    cases.push(("PS256 on a key declared RS256", ps.sign(&good)));
    // typ id_token.
    let mut h = es.header();
    h.typ = Some("id_token".into());
    cases.push(("typ id_token", es.sign_with(h, &good)));
    // crit header we do not understand.
    let mut h = es.header();
    h.crit = Some(vec!["exp".into()]);
    cases.push(("crit header", es.sign_with(h, &good)));

    for (case, token) in &cases {
        assert_refused(&app, token, case).await;
    }
}

#[tokio::test]
async fn key_location_headers_never_cause_a_fetch() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let attacker_key = Signer::es256("evil");
    let attacker = Provider::start(&[&attacker_key]).await;
    let app = app_for(&p, &[]).await;
    let good = claims(&p);
    assert_ok(&app, &es.sign(&good)).await;

    let mut cases = Vec::new();
    let mut h = attacker_key.header();
    h.jku = Some(format!("{}/jwks", attacker.issuer()));
    cases.push(("jku", attacker_key.sign_with(h, &good)));
    let mut h = attacker_key.header();
    h.x5u = Some(format!("{}/cert.pem", attacker.issuer()));
    cases.push(("x5u", attacker_key.sign_with(h, &good)));
    let mut h = attacker_key.header();
    h.jwk = Some(serde_json::from_value(attacker_key.jwk()).unwrap());
    cases.push(("embedded jwk", attacker_key.sign_with(h, &good)));
    // Embedded key under the trusted kid.
    let mut h = attacker_key.header();
    h.kid = Some("es".into());
    h.jwk = Some(serde_json::from_value(attacker_key.jwk()).unwrap());
    cases.push((
        "embedded jwk with trusted kid",
        attacker_key.sign_with(h, &good),
    ));
    // A jku on a token signed with the genuine key is refused too.
    let mut h = es.header();
    h.jku = Some(format!("{}/jwks", attacker.issuer()));
    cases.push(("jku on a genuine token", es.sign_with(h, &good)));
    let mut h = es.header();
    h.x5c = Some(vec!["MIIB".into()]);
    cases.push(("x5c", es.sign_with(h, &good)));

    for (case, token) in &cases {
        assert_refused(&app, token, case).await;
    }
    assert_eq!(
        attacker.all_hits(),
        0,
        "the attacker's server was contacted"
    );
    assert_eq!(p.jwks_hits(), 1, "no refetch from header tricks");
}

#[tokio::test]
async fn unknown_kid_burst_triggers_at_most_one_refetch_per_interval() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = clocked_app_for(&p, &[("auth.jwks_refetch_min_interval_secs", 60.into())]).await;
    assert_ok(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(p.jwks_hits(), 1);

    // Within the interval: unknown kids cause no fetch at all.
    let stranger = Signer::es256("unknown");
    let token = stranger.sign(&claims_at(&p, app_now(&app)));
    assert_refused(&app, &token, "unknown kid").await;
    assert_eq!(p.jwks_hits(), 1);

    // After the interval: a concurrent burst causes exactly one refetch.
    advance(&app, 61);
    let burst: Vec<_> = (0..20)
        .map(|i| Signer::es256(&format!("unknown-{i}")).sign(&claims_at(&p, app_now(&app))))
        .collect();
    let responses = futures_util::future::join_all(burst.iter().map(|t| call(&app, t))).await;
    for res in responses {
        assert_eq!(res.status(), 401);
    }
    assert_eq!(p.jwks_hits(), 2, "one refetch for the whole burst");
    // And the known key still works without another fetch.
    assert_ok(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(p.jwks_hits(), 2);
}

#[tokio::test]
async fn rotated_key_is_picked_up_by_refetch() {
    let old = Signer::es256("2024-old");
    let new = Signer::eddsa("2025-new");
    let p = Provider::start(&[&old]).await;
    let app = clocked_app_for(&p, &[("auth.jwks_refetch_min_interval_secs", 60.into())]).await;
    assert_ok(&app, &old.sign(&claims_at(&p, app_now(&app)))).await;

    p.set_keys(&[&old, &new]);
    advance(&app, 61);
    let body = assert_ok(&app, &new.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(body["sub"], "user-123");
    assert_eq!(p.jwks_hits(), 2);
    // The old key remains valid while the provider still publishes it.
    assert_ok(&app, &old.sign(&claims_at(&p, app_now(&app)))).await;

    // Once withdrawn (and refreshed), the old key no longer verifies.
    p.set_keys(&[&new]);
    advance(&app, 61);
    let stranger = Signer::es256("unknown");
    assert_refused(
        &app,
        &stranger.sign(&claims_at(&p, app_now(&app))),
        "unknown kid triggers refetch",
    )
    .await;
    assert_eq!(p.jwks_hits(), 3);
    assert_refused(
        &app,
        &old.sign(&claims_at(&p, app_now(&app))),
        "withdrawn key",
    )
    .await;
}

#[tokio::test]
async fn remembered_token_stops_working_when_its_key_is_withdrawn() {
    let old = Signer::es256("old");
    let new = Signer::eddsa("new");
    let p = Provider::start(&[&old, &new]).await;
    let app = clocked_app_for(&p, &[("auth.jwks_refetch_min_interval_secs", 60.into())]).await;
    // The same token bytes twice: the second use is answered from the verified-token cache.
    let token = old.sign(&claims_at(&p, app_now(&app)));
    assert_ok(&app, &token).await;
    assert_ok(&app, &token).await;
    assert_eq!(p.jwks_hits(), 1);

    // The provider withdraws the key; a token naming an unknown kid makes us refetch.
    p.set_keys(&[&new]);
    advance(&app, 61);
    let stranger = Signer::es256("unknown");
    assert_refused(
        &app,
        &stranger.sign(&claims_at(&p, app_now(&app))),
        "unknown kid",
    )
    .await;
    assert_eq!(p.jwks_hits(), 2);
    // The remembered token was verified under the old key set: refused at once.
    assert_refused(&app, &token, "remembered token of a withdrawn key").await;
    // A token of a key still published keeps working.
    let current = new.sign(&claims_at(&p, app_now(&app)));
    assert_ok(&app, &current).await;
    assert_ok(&app, &current).await;
}

#[tokio::test]
async fn remembered_token_stops_working_when_it_expires() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = clocked_app_for(&p, &[("auth.clock_skew_secs", 0.into())]).await;
    let now = app_now(&app);
    let token = es.sign(&with(claims_at(&p, now), json!({ "exp": now + 30 })));
    assert_ok(&app, &token).await;
    assert_ok(&app, &token).await;
    // Past `exp` (whole seconds, no leeway): refused although it was remembered.
    advance(&app, 31);
    assert_refused(&app, &token, "remembered token past exp").await;
    assert_eq!(p.jwks_hits(), 1, "no refetch needed to refuse it");
}

#[tokio::test]
async fn remembered_token_is_rechecked_against_the_maximum_age() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = clocked_app_for(
        &p,
        &[
            ("auth.clock_skew_secs", 0.into()),
            ("auth.max_token_age_secs", 60.into()),
        ],
    )
    .await;
    let token = es.sign(&claims_at(&p, app_now(&app)));
    assert_ok(&app, &token).await;
    assert_ok(&app, &token).await;
    advance(&app, 61);
    assert_refused(&app, &token, "remembered token older than the maximum age").await;
}

#[tokio::test]
async fn provider_outage_uses_cached_keys_until_the_staleness_limit() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    // Keys are refreshed after half the staleness limit (here 200 s).
    let app = clocked_app_for(
        &p,
        &[
            ("auth.jwks_refetch_min_interval_secs", 60.into()),
            ("auth.jwks_max_staleness_secs", 400.into()),
        ],
    )
    .await;
    assert_ok(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(p.jwks_hits(), 1);

    p.set_down(true);
    advance(&app, 201);
    // Due for refresh: the attempt fails, the cached key still verifies.
    assert_ok(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(p.jwks_hits(), 2, "a refresh was attempted");
    // Failed attempts are rate-limited too.
    assert_ok(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(p.jwks_hits(), 2);

    // Past the staleness limit the cached keys are no longer trusted: fail closed.
    advance(&app, 200);
    let res = call(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
    assert_eq!(res.status(), 503);
    assert_security_headers(&res);

    // Provider back: verification recovers.
    p.set_down(false);
    advance(&app, 61);
    assert_ok(&app, &es.sign(&claims_at(&p, app_now(&app)))).await;
}

#[tokio::test]
async fn provider_unreachable_from_the_start_fails_closed() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let issuer = p.issuer();
    let token = es.sign(&claims(&p));
    p.stop().await;
    let app = TestApp::builder()
        .set("auth.issuer", issuer)
        .set("auth.audience", AUDIENCE)
        .extra_routes(routes)
        .spawn()
        .await;
    let res = call(&app, &token).await;
    assert_eq!(res.status(), 503);
}

/// `typ: at+jwt` is required by default (issue 18, finding 11): a token typed `JWT`, or
/// not typed at all, is refused unless the operator opts out.
#[tokio::test]
async fn at_jwt_typ_is_required_by_default_and_can_be_relaxed() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = app_for(&p, &[]).await;
    let mut jwt = es.header();
    jwt.typ = Some("JWT".into());
    let mut untyped = es.header();
    untyped.typ = None;
    assert_refused(&app, &es.sign_with(jwt.clone(), &claims(&p)), "typ JWT").await;
    assert_refused(&app, &es.sign_with(untyped.clone(), &claims(&p)), "no typ").await;
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let mut h = es.header();
        h.typ = Some(typ.into());
        assert_ok(&app, &es.sign_with(h, &claims(&p))).await;
    }
    // The documented opt-out for a provider that cannot type its access tokens.
    let relaxed = app_for(&p, &[("auth.require_at_jwt_typ", false.into())]).await;
    assert_ok(&relaxed, &es.sign_with(jwt, &claims(&p))).await;
    assert_ok(&relaxed, &es.sign_with(untyped, &claims(&p))).await;
}

#[tokio::test]
async fn max_token_age_refuses_old_and_undated_tokens() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = app_for(
        &p,
        &[
            ("auth.max_token_age_secs", 600.into()),
            ("auth.clock_skew_secs", 30.into()),
        ],
    )
    .await;
    assert_ok(&app, &es.sign(&claims(&p))).await;
    let old = with(claims(&p), json!({ "iat": now() - 700 }));
    assert_refused(&app, &es.sign(&old), "iat too old").await;
    let undated = with(claims(&p), json!({ "iat": null }));
    assert_refused(&app, &es.sign(&undated), "no iat").await;
}

#[tokio::test]
async fn token_is_only_read_from_one_authorization_header() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = app_for(&p, &[]).await;
    let token = es.sign(&claims(&p));

    let res = app.client.get(app.url(WHOAMI)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");

    let res = app
        .client
        .get(app.url(&format!("{WHOAMI}?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "query-string tokens are refused");
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_request\""
    );
    assert!(!res.text().await.unwrap().contains(&token));

    let res = app
        .client
        .get(app.url(WHOAMI))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "two Authorization headers");

    let res = app
        .client
        .get(app.url(WHOAMI))
        .header("authorization", format!("bEaReR {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the scheme is case-insensitive");
}

#[tokio::test]
async fn without_auth_configuration_bearer_routes_answer_401() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = TestApp::builder().extra_routes(routes).spawn().await;
    let res = call(&app, &es.sign(&claims(&p))).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(p.all_hits(), 0);
}

#[tokio::test]
async fn explicit_jwks_url_skips_discovery() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    let app = app_for(
        &p,
        &[("auth.jwks_url", format!("{}/jwks", p.issuer()).into())],
    )
    .await;
    assert_ok(&app, &es.sign(&claims(&p))).await;
    assert_eq!(p.jwks_hits(), 1);
    assert_eq!(p.all_hits(), 1, "no discovery request");
}

#[tokio::test]
async fn discovery_document_for_another_issuer_is_not_trusted() {
    let es = Signer::es256("es");
    let p = Provider::start(&[&es]).await;
    // Same server, but configured under a different (equally local) issuer name: the
    // discovery document names 127.0.0.1, so its jwks_uri is not used.
    let issuer = p.issuer().replace("127.0.0.1", "localhost");
    let app = TestApp::builder()
        .set("auth.issuer", issuer.clone())
        .set("auth.audience", AUDIENCE)
        .extra_routes(routes)
        .spawn()
        .await;
    let token = es.sign(&with(claims(&p), json!({ "iss": issuer })));
    let res = call(&app, &token).await;
    assert_eq!(res.status(), 503);
    assert_eq!(p.jwks_hits(), 0);
}

/// Issue 18, finding 11: the SMART context follows the account's kind in our database,
/// not the token's shape. A service account's subject in a user-shaped token (issued to
/// another client) is still the service: read in system context, where `user/` scopes
/// grant nothing.
#[tokio::test]
async fn a_service_subject_in_a_user_shaped_token_keeps_the_service_context() {
    use crate::support::world::{World, patient_json};
    use custodian::db::users;
    use custodian::policy::Role;
    use diesel::prelude::*;
    let w = World::new().await;
    let (_, doc) = w.user("dr-context", &[Role::Clinician]);
    w.create(&doc, &patient_json("MRN-CTX-1", "Contextson"))
        .await;
    {
        let mut c = w.app.db.conn();
        let svc =
            users::user_for(&mut c, &w.idp.issuer(), "svc-ctx", users::UserKind::Service).unwrap();
        users::grant_role(&mut c, svc.id, Role::Service, "test setup", None).unwrap();
        users::set_facility(&mut c, svc.id, Some(w.facility)).unwrap();
    }
    let token = |client: &str, scope: &str| {
        w.signer.sign(&json!({
            "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": "svc-ctx", "exp": now() + 300,
            "iat": now(), "client_id": client, "scope": scope,
        }))
    };
    // Control: the service's own client-credentials token with a system scope.
    let own = token("svc-ctx", "system/Patient.rs");
    assert_eq!(w.get("/fhir/Patient", &own).await.status(), 200);
    // The same subject through another client, user-shaped, with user scopes only.
    let user_shaped = token("other-app", "user/Patient.rs");
    let res = w.get("/fhir/Patient", &user_shaped).await;
    assert_eq!(res.status(), 403, "served in user context");
    let auth_method: String = {
        use custodian::db::schema::audit_events::dsl::*;
        audit_events
            .order(seq.desc())
            .select(auth_method)
            .first(&mut w.app.db.conn())
            .unwrap()
    };
    assert_eq!(auth_method, "client-credentials");
}
