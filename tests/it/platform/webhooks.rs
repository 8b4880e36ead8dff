//! Signed webhooks (issue 15): real deliveries over HTTPS to an independent receiver,
//! `node tests/webhooks/receiver.js`, which verifies them with the Standard Webhooks
//! reference library for JavaScript (npm `standardwebhooks`), not with Custodian's code.
//! Covered: the signature verifies; a tampered or replayed delivery does not; a receiver
//! outage is retried after the backoff; a delivery dead-letters after
//! `webhooks.max_attempts` failures and is redelivered on request; one runner at a time;
//! no PHI in any payload (canary); endpoints are HTTPS only; a disabled endpoint gets
//! nothing more; a rotated secret replaces the old one.
//!
//! Most tests drive the delivery worker pass by pass (`Deliverer::pass`) on the app's
//! manual clock; one runs the background worker of a started app.

use crate::support::world::{ALL_SCOPES, AUDIENCE, World, patient_json};
use crate::support::{PUBLIC_URL, TestApp, test_cert};
use custodian::admin::op::{Done, Op};
use custodian::db::alerts::{AlertKind, NewAlert, raise_all};
use custodian::db::schema::{webhook_deliveries as wd, webhook_messages as wm};
use custodian::db::users::{self, UserKind};
use custodian::domain::clock::Clock;
use custodian::domain::{SharedClock, UserId, WebhookDeliveryId, WebhookEndpointId};
use custodian::policy::Role;
use custodian::webhooks::Deliverer;
use custodian::webhooks::config::WebhookConfig;
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

fn receiver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks")
}

/// The independent receiver, killed on drop. It serves the test certificate (the one the
/// deliverer trusts through `webhooks.ca_file`).
struct Receiver {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Receiver {
    fn start() -> Receiver {
        crate::support::node::ensure_installed(&receiver_dir());
        let cert = test_cert();
        let mut command = Command::new("node");
        command
            .arg(receiver_dir().join("receiver.js"))
            .arg(&cert.cert)
            .arg(&cert.key);
        let Ok((child, port)) = crate::support::node::spawn_ready(
            command,
            "webhook receiver",
            "listening ",
            None,
            Duration::from_secs(30),
        ) else {
            panic!("the webhook receiver exited before listening");
        };
        let port = port.parse().expect("the receiver prints its port");
        Receiver {
            child,
            port,
            http: crate::support::client(),
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.port)
    }

    async fn control(&self, v: Value) {
        let res = self
            .http
            .post(format!("https://localhost:{}/control", self.port))
            .body(v.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    async fn received(&self) -> Vec<Value> {
        self.http
            .get(format!("https://localhost:{}/received", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs a delivery as an attacker would (captured headers, maybe changed): the
    /// receiver's status.
    async fn post(&self, id: &str, timestamp: &str, signature: &str, body: &str) -> u16 {
        self.http
            .post(self.url())
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(max_attempts: u32) -> WebhookConfig {
    WebhookConfig {
        enabled: false,
        max_attempts,
        backoff_initial_secs: 30,
        backoff_max_secs: 120,
        timeout_secs: 5,
        ca_file: test_cert().cert.display().to_string(),
        // The receiver listens on localhost (`ssrf_guard_*` turns the guard back on).
        allow_private_hosts: true,
        ..WebhookConfig::default()
    }
}

/// An app (webhooks worker off, manual clock), its keyring and a deliverer on its clock.
struct Hooks {
    app: TestApp,
    keyring: Arc<custodian::crypto::Keyring>,
    db: custodian::db::Db,
    deliverer: Deliverer,
    admin: UserId,
}

impl Hooks {
    async fn start(max_attempts: u32) -> Hooks {
        let builder = TestApp::builder()
            .manual_clock()
            .set("webhooks.enabled", false);
        let db = crate::support::TestDb::create();
        let config = builder.config(&db.url);
        let app = builder.database(db).spawn().await;
        Hooks::around(app, &config, max_attempts)
    }

    fn around(app: TestApp, config: &custodian::config::Config, max_attempts: u32) -> Hooks {
        let keyring = Arc::new(
            custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).expect("keyring"),
        );
        let db = custodian::db::Db::new(&config.database);
        let deliverer = Deliverer::new(
            db.clone(),
            keyring.clone(),
            app.clock().shared(),
            settings(max_attempts),
            PUBLIC_URL,
        )
        .unwrap();
        let admin = users::user_for(
            &mut app.db.conn(),
            "https://idp.test",
            "webhook-admin",
            UserKind::Person,
        )
        .unwrap()
        .id;
        Hooks {
            app,
            keyring,
            db,
            deliverer,
            admin,
        }
    }

    fn clock(&self) -> SharedClock {
        self.app.clock().shared()
    }

    /// Performs an administration operation as the console does (with the keyring).
    async fn op(&self, op: Op) -> Result<Done, custodian::error::AppError> {
        op.perform_with(
            &self.db,
            Some(self.admin),
            None,
            self.clock().now(),
            Some(self.keyring.clone()),
        )
        .await
        .map(|p| p.done)
    }

    /// Registers `url`; returns the endpoint and its secret (shown this once).
    async fn register(&self, url: &str) -> (WebhookEndpointId, String) {
        match self.op(Op::CreateWebhookEndpoint { url: url.into() }).await {
            Ok(Done::WebhookSecret { endpoint, secret }) => (endpoint, secret.expose().clone()),
            _ => panic!("endpoint not created"),
        }
    }

    /// Raises one alert through the one raise path, in a transaction.
    fn raise(&self, key: &str) {
        let alert = NewAlert {
            kind: AlertKind::AuthFailureSpike,
            severity: AlertKind::AuthFailureSpike.severity(),
            reason: "address",
            user_id: None,
            patient_id: None,
            grant_id: None,
            source_ip: Some("192.0.2.7".into()),
            client_id: None,
            figures: vec![25, 5, 20],
            evidence_seqs: vec![],
            dedup_key: key.into(),
            created_at: self.clock().now(),
        };
        let mut c = self.app.db.conn();
        c.transaction(|c| {
            raise_all(c, &[alert]).map_err(|_| diesel::result::Error::RollbackTransaction)
        })
        .unwrap();
    }

    async fn pass(&self) -> custodian::webhooks::Pass {
        self.deliverer.pass(None).await.unwrap().1
    }

    fn advance(&self, secs: u64) {
        self.app.clock().advance(Duration::from_secs(secs));
    }

    /// (state, attempts, last outcome, last status) of every delivery.
    fn deliveries(&self) -> Vec<(String, i32, Option<String>, Option<i32>)> {
        wd::table
            .order(wd::created_at)
            .select((wd::state, wd::attempts, wd::last_outcome, wd::last_status))
            .load(&mut self.app.db.conn())
            .unwrap()
    }

    fn delivery_ids(&self) -> Vec<uuid::Uuid> {
        wd::table
            .order(wd::created_at)
            .select(wd::id)
            .load(&mut self.app.db.conn())
            .unwrap()
    }
}

#[tokio::test]
async fn a_delivery_verifies_with_the_reference_library_and_a_tampered_or_replayed_one_does_not() {
    let h = Hooks::start(8).await;
    let r = Receiver::start();
    let (_, secret) = h.register(&r.url()).await;
    assert!(
        secret.starts_with("whsec_"),
        "Standard Webhooks secret format"
    );
    r.control(json!({ "secret": secret })).await;
    h.raise("spike-1");

    let pass = h.pass().await;
    assert_eq!((pass.ran, pass.delivered, pass.failed), (true, 1, 0));
    let got = r.received().await;
    assert_eq!(got.len(), 1, "{got:?}");
    let d = &got[0];
    assert_eq!(d["verified"], true, "{d}");
    assert!(d["signature"].as_str().unwrap().starts_with("v1,"));
    assert!(d["id"].as_str().unwrap().starts_with("msg_"));
    let body: Value = serde_json::from_str(d["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "alert.raised");
    assert_eq!(body["data"]["kind"], "auth-failure-spike");
    let link = body["data"]["console_url"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{PUBLIC_URL}/console/alerts/")),
        "{link}"
    );
    assert_eq!(h.deliveries()[0].0, "delivered");
    // Delivered once: the next pass has nothing to do.
    assert_eq!(h.pass().await.delivered, 0);

    let (id, ts, sig, raw) = (
        d["id"].as_str().unwrap(),
        d["timestamp"].as_str().unwrap(),
        d["signature"].as_str().unwrap(),
        d["body"].as_str().unwrap(),
    );
    // The captured delivery as sent still verifies (within the tolerance window)…
    assert_eq!(r.post(id, ts, sig, raw).await, 204);
    // …a changed body, id or timestamp does not…
    let tampered = raw.replace("auth-failure-spike", "auth-failure-spikf");
    assert_eq!(r.post(id, ts, sig, &tampered).await, 401);
    assert_eq!(r.post("msg_other", ts, sig, raw).await, 401);
    let later = (ts.parse::<i64>().unwrap() + 1).to_string();
    assert_eq!(r.post(id, &later, sig, raw).await, 401);
    // …nor does one signed with another secret…
    let forged = standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap()
        .sign(id, ts.parse().unwrap(), raw.as_bytes())
        .unwrap();
    assert_eq!(r.post(id, ts, &forged, raw).await, 401);
    // …and the genuine delivery replayed ten minutes later is outside the tolerance.
    r.control(json!({ "clock_offset_secs": 600 })).await;
    assert_eq!(r.post(id, ts, sig, raw).await, 401);
    let errors: Vec<String> = r
        .received()
        .await
        .iter()
        .skip(1)
        .map(|e| e["error"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(errors[0], "", "the untouched copy verified");
    assert!(errors.last().unwrap().contains("too old"), "{errors:?}");
}

#[tokio::test]
async fn an_outage_is_retried_after_the_backoff_and_then_delivered() {
    let h = Hooks::start(8).await;
    let r = Receiver::start();
    let (_, secret) = h.register(&r.url()).await;
    r.control(json!({ "secret": secret, "fail_next": 2 })).await;
    h.raise("spike-1");

    let pass = h.pass().await;
    assert_eq!((pass.delivered, pass.failed), (0, 1));
    assert_eq!(
        h.deliveries(),
        vec![("pending".into(), 1, Some("http-status".into()), Some(503))]
    );
    // Not due before the backoff (30 s after the first failure)…
    h.advance(29);
    assert_eq!(h.pass().await.failed, 0);
    h.advance(1);
    assert_eq!(h.pass().await.failed, 1);
    // …then 60 s after the second.
    h.advance(59);
    assert_eq!(
        h.pass().await,
        custodian::webhooks::Pass {
            ran: true,
            ..Default::default()
        }
    );
    h.advance(1);
    let pass = h.pass().await;
    assert_eq!((pass.delivered, pass.failed), (1, 0));
    assert_eq!(h.deliveries()[0].0, "delivered");
    assert_eq!(h.deliveries()[0].1, 3);
    let got = r.received().await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[2]["verified"], true);
    // Every attempt carries the same webhook-id (receivers drop duplicates by it).
    assert!(got.iter().all(|d| d["id"] == got[0]["id"]));
}

#[tokio::test]
async fn a_delivery_dead_letters_after_max_attempts_and_a_redelivery_succeeds() {
    let h = Hooks::start(3).await;
    // First an endpoint where nothing listens (connection refused), then the receiver.
    let closed = format!("https://localhost:{}/hook", crate::support::free_port());
    h.register(&closed).await;
    let r = Receiver::start();
    let (_, secret) = h.register(&r.url()).await;
    r.control(json!({ "secret": secret, "fail_next": 100 }))
        .await;
    h.raise("spike-1");

    let mut dead = 0;
    for _ in 0..5 {
        dead += h.pass().await.dead;
        h.advance(600);
    }
    assert_eq!(dead, 2, "both deliveries dead-lettered");
    let rows = h.deliveries();
    assert!(rows.iter().all(|d| d.0 == "dead" && d.1 == 3), "{rows:?}");
    let outcomes: Vec<_> = rows.iter().map(|d| d.2.clone().unwrap()).collect();
    assert!(outcomes.contains(&"connect".to_string()), "{outcomes:?}");
    assert!(
        outcomes.contains(&"http-status".to_string()),
        "{outcomes:?}"
    );
    // A dead letter stays put…
    assert_eq!(h.pass().await.failed + h.pass().await.dead, 0);
    assert_eq!(r.received().await.len(), 3);

    // …until an administrator redelivers it (the receiver is back).
    r.control(json!({ "fail_next": 0 })).await;
    let to_receiver: uuid::Uuid = wd::table
        .filter(wd::last_outcome.eq("http-status"))
        .select(wd::id)
        .first(&mut h.app.db.conn())
        .unwrap();
    let done = h
        .op(Op::RedeliverWebhook {
            delivery: WebhookDeliveryId::from(to_receiver),
        })
        .await;
    assert!(matches!(done, Ok(Done::Nothing)));
    let pass = h.pass().await;
    assert_eq!(pass.delivered, 1);
    let got = r.received().await;
    assert_eq!(got.last().unwrap()["verified"], true);
    // An unknown delivery is a 404, not a 5xx.
    let missing = h
        .op(Op::RedeliverWebhook {
            delivery: WebhookDeliveryId::new(),
        })
        .await;
    assert!(
        matches!(missing, Err(custodian::error::AppError::Client { status, .. }) if status == 404)
    );
}

#[tokio::test]
async fn one_runner_delivers_at_a_time() {
    let h = Hooks::start(8).await;
    let r = Receiver::start();
    let (_, secret) = h.register(&r.url()).await;
    r.control(json!({ "secret": secret })).await;
    h.raise("spike-1");

    // Another instance's runner holds the lock.
    let mut other = h.app.db.conn();
    diesel::sql_query(format!(
        "SELECT pg_advisory_lock({})",
        custodian::db::webhooks::DELIVERY_LOCK_KEY
    ))
    .execute(&mut other)
    .unwrap();
    let pass = h.pass().await;
    assert!(!pass.ran);
    assert!(r.received().await.is_empty());
    drop(other);
    assert_eq!(h.pass().await.delivered, 1);
    assert_eq!(r.received().await.len(), 1);
}

#[tokio::test]
async fn endpoints_are_https_only_and_disabled_or_rotated_ones_behave() {
    let h = Hooks::start(8).await;
    for bad in [
        "http://localhost/hook",
        "https://user:pw@localhost/hook",
        "https://localhost/hook#frag",
        "not a url",
        "https://",
    ] {
        let res = h.op(Op::CreateWebhookEndpoint { url: bad.into() }).await;
        assert!(
            matches!(res, Err(custodian::error::AppError::Client { status, .. }) if status == 422),
            "{bad} accepted"
        );
    }
    let r = Receiver::start();
    let (endpoint, old) = h.register(&r.url()).await;
    // The secret is stored sealed only.
    let sealed: Vec<u8> = custodian::db::schema::webhook_endpoints::table
        .select(custodian::db::schema::webhook_endpoints::secret_sealed)
        .first(&mut h.app.db.conn())
        .unwrap();
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        old.trim_start_matches("whsec_"),
    )
    .unwrap();
    assert!(!sealed.windows(raw.len()).any(|w| w == raw.as_slice()));

    // Rotated: the receiver still on the old secret refuses, the new one verifies.
    let new = match h.op(Op::RotateWebhookSecret { endpoint }).await {
        Ok(Done::WebhookSecret { secret, .. }) => secret.expose().clone(),
        _ => panic!("not rotated"),
    };
    assert_ne!(new, old);
    r.control(json!({ "secret": old })).await;
    h.raise("spike-1");
    h.pass().await;
    assert_eq!(r.received().await[0]["verified"], false);
    r.control(json!({ "secret": new })).await;
    h.raise("spike-2");
    h.pass().await;
    assert_eq!(r.received().await[1]["verified"], true);

    // Disabled: later alerts are not queued for it.
    assert!(matches!(
        h.op(Op::DisableWebhookEndpoint { endpoint }).await,
        Ok(Done::Nothing)
    ));
    let before = h.delivery_ids().len();
    h.raise("spike-3");
    assert_eq!(h.delivery_ids().len(), before);
}

/// PHI of the canary patient, planted where a careless payload would pick it up.
const CANARY_FAMILY: &str = "Zzyzxcanaryfamily";
const CANARY_MRN: &str = "MRN-CANARY-77123";
const CANARY_JUSTIFICATION: &str = "canary justification text 5521";

#[tokio::test]
async fn no_payload_carries_phi() {
    let w = World::with(|b, _| b.manual_clock().set("webhooks.enabled", false)).await;
    let config = crate::support::TestApp::builder()
        .set("auth.issuer", w.idp.issuer())
        .set("auth.audience", AUDIENCE)
        .config(&w.app.db.url);
    let h = Hooks::around_world(&w, &config);
    let r = Receiver::start();
    let (_, secret) = h.register(&r.url()).await;
    r.control(json!({ "secret": secret })).await;

    // The seeded patient carries the canary; a clinician without a relationship breaks
    // the glass (an alert, raised in the request's transaction, with its message).
    let (_, nurse) = w.user("nurse", &[Role::Clinician]);
    let patient = w
        .create(&nurse, &patient_json(CANARY_MRN, CANARY_FAMILY))
        .await;
    w.user("doc", &[Role::Clinician]);
    let now = w.app.clock().now().timestamp();
    let token = w.signer.sign(&json!({
        "iss": w.idp.issuer(), "aud": AUDIENCE, "sub": "doc", "exp": now + 300,
        "iat": now, "client_id": "test-app", "scope": ALL_SCOPES,
        "auth_time": now - 10, "amr": ["pwd", "otp", "mfa"],
    }));
    let res = w
        .send(
            Method::POST,
            &format!("/fhir/Patient/{patient}/$break-glass"),
            &token,
            Some(&json!({ "resourceType": "Parameters", "parameter": [
                { "name": "reason", "valueCoding": { "code": "emergency-treatment" } },
                { "name": "justification", "valueString": CANARY_JUSTIFICATION },
            ]})),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let res = w.get(&format!("/fhir/Patient/{patient}"), &token).await;
    assert_eq!(res.status(), 200);
    h.raise("spike-1");

    let pass = h.pass().await;
    assert!(pass.delivered >= 2, "{pass:?}");
    let got = r.received().await;
    let kinds: Vec<String> = got
        .iter()
        .map(|d| {
            let b: Value = serde_json::from_str(d["body"].as_str().unwrap()).unwrap();
            b["data"]["kind"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        kinds.iter().any(|k| k.starts_with("break-glass")),
        "{kinds:?}"
    );
    let canaries = [
        CANARY_FAMILY,
        CANARY_MRN,
        CANARY_JUSTIFICATION,
        crate::support::world::SSN,
        "Avery",
        "192.0.2.7",
    ];
    for d in &got {
        assert_eq!(d["verified"], true);
        let text = d.to_string();
        for c in canaries {
            assert!(!text.contains(c), "{c} in a payload: {text}");
        }
    }
    // Nor in the outbox itself.
    let stored: Vec<Value> = wm::table
        .select(wm::data)
        .load(&mut w.app.db.conn())
        .unwrap();
    for v in stored {
        for c in canaries {
            assert!(!v.to_string().contains(c), "{c} in the outbox: {v}");
        }
    }
}

impl Hooks {
    /// Around a [`World`]'s app (whose clock is manual), without owning it.
    fn around_world(w: &World, config: &custodian::config::Config) -> HooksRef {
        let keyring = Arc::new(
            custodian::app::keys::load_keyring(&config.crypto, &w.app.db.url, 2).expect("keyring"),
        );
        let db = custodian::db::Db::new(&config.database);
        let deliverer = Deliverer::new(
            db.clone(),
            keyring.clone(),
            w.app.clock().shared(),
            settings(8),
            PUBLIC_URL,
        )
        .unwrap();
        let admin = users::user_for(
            &mut w.app.db.conn(),
            "https://idp.test",
            "webhook-admin",
            UserKind::Person,
        )
        .unwrap()
        .id;
        HooksRef {
            clock: w.app.clock().shared(),
            conn_url: w.app.db.url.clone(),
            keyring,
            db,
            deliverer,
            admin,
        }
    }
}

/// [`Hooks`] for an app a [`World`] owns.
struct HooksRef {
    clock: SharedClock,
    conn_url: String,
    keyring: Arc<custodian::crypto::Keyring>,
    db: custodian::db::Db,
    deliverer: Deliverer,
    admin: UserId,
}

impl HooksRef {
    async fn register(&self, url: &str) -> (WebhookEndpointId, String) {
        let done = Op::CreateWebhookEndpoint { url: url.into() }
            .perform_with(
                &self.db,
                Some(self.admin),
                None,
                self.clock.now(),
                Some(self.keyring.clone()),
            )
            .await
            .map(|p| p.done);
        match done {
            Ok(Done::WebhookSecret { endpoint, secret }) => (endpoint, secret.expose().clone()),
            _ => panic!("endpoint not created"),
        }
    }

    fn raise(&self, key: &str) {
        let alert = NewAlert {
            kind: AlertKind::AuthFailureSpike,
            severity: AlertKind::AuthFailureSpike.severity(),
            reason: "address",
            user_id: None,
            patient_id: None,
            grant_id: None,
            source_ip: Some("192.0.2.7".into()),
            client_id: None,
            figures: vec![25, 5, 20],
            evidence_seqs: vec![],
            dedup_key: key.into(),
            created_at: self.clock.now(),
        };
        let mut c = PgConnection::establish(&self.conn_url).unwrap();
        c.transaction(|c| {
            raise_all(c, &[alert]).map_err(|_| diesel::result::Error::RollbackTransaction)
        })
        .unwrap();
    }

    async fn pass(&self) -> custodian::webhooks::Pass {
        self.deliverer.pass(None).await.unwrap().1
    }
}

#[tokio::test]
async fn the_background_worker_delivers_from_a_running_app() {
    let r = Receiver::start();
    let app = TestApp::builder()
        .set("metrics.listen", "127.0.0.1:0")
        .set("webhooks.poll_ms", 50)
        .set("webhooks.ca_file", test_cert().cert.display().to_string())
        .spawn()
        .await;
    let config = TestApp::builder().config(&app.db.url);
    let keyring = Arc::new(
        custodian::app::keys::load_keyring(&config.crypto, &app.db.url, 2).expect("keyring"),
    );
    let db = custodian::db::Db::new(&config.database);
    let admin = users::user_for(
        &mut app.db.conn(),
        "https://idp.test",
        "webhook-admin",
        UserKind::Person,
    )
    .unwrap()
    .id;
    let done = Op::CreateWebhookEndpoint { url: r.url() }
        .perform_with(&db, Some(admin), None, chrono::Utc::now(), Some(keyring))
        .await
        .map(|p| p.done);
    let Ok(Done::WebhookSecret { secret, .. }) = done else {
        panic!("endpoint not created");
    };
    r.control(json!({ "secret": secret.expose() })).await;
    let mut c = app.db.conn();
    // A failed chain verification (as the console's "verify now" records it) is a message
    // too, written with the verification's result.
    let run = custodian::audit::checks::start(&mut c, admin.as_uuid(), 10, chrono::Utc::now())
        .unwrap()
        .unwrap();
    custodian::audit::checks::finish(
        &mut c,
        run,
        Err((7, "hash mismatch".into())),
        chrono::Utc::now(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = r.received().await;
        if !got.is_empty() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.len(), 1, "the worker did not deliver in time");
    assert_eq!(got[0]["verified"], true);
    let body: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "audit.verification-failed");
    assert_eq!(body["data"]["failed_seq"], 7);
    assert!(!got[0]["body"].as_str().unwrap().contains("hash mismatch"));

    // Deliveries are counted by outcome, the only label (a fixed vocabulary).
    let url = format!("http://{}/metrics", app.metrics.unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let parsed = prom_text_format_parser::Scrape::parse(&text).expect("Prometheus text format");
    let family = parsed
        .metrics
        .iter()
        .find(|m| m.name == "custodian_webhook_deliveries_total")
        .expect("webhook deliveries counted");
    let codes: Vec<&str> = custodian::monitoring::DeliveryOutcome::ALL
        .iter()
        .map(|o| o.code())
        .collect();
    for sample in &family.samples {
        let labels: Vec<_> = sample
            .labels
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels.len(), 1, "{labels:?}");
        assert_eq!(labels[0].0, "outcome");
        assert!(codes.contains(&labels[0].1), "{labels:?}");
    }
    assert!(family.samples.iter().any(|s| {
        s.labels.iter().any(|l| l.value == "delivered") && s.value.value.as_f64() >= 1.0
    }));
}

#[tokio::test]
async fn the_message_commits_with_its_alert_or_not_at_all() {
    let h = Hooks::start(8).await;
    h.register("https://hooks.example.test/custodian").await;
    let messages = || -> i64 { wm::table.count().get_result(&mut h.app.db.conn()).unwrap() };
    let alerts = || -> i64 {
        custodian::db::schema::alerts::table
            .count()
            .get_result(&mut h.app.db.conn())
            .unwrap()
    };
    // The transaction that found the pattern fails after raising: neither stays.
    let alert = NewAlert {
        kind: AlertKind::AuthFailureSpike,
        severity: AlertKind::AuthFailureSpike.severity(),
        reason: "client",
        user_id: None,
        patient_id: None,
        grant_id: None,
        source_ip: None,
        client_id: Some("app".into()),
        figures: vec![21, 5, 20],
        evidence_seqs: vec![],
        dedup_key: "rolled-back".into(),
        created_at: h.clock().now(),
    };
    let mut c = h.app.db.conn();
    let res: Result<(), diesel::result::Error> = c.transaction(|c| {
        raise_all(c, std::slice::from_ref(&alert)).unwrap();
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(res.is_err());
    assert_eq!((alerts(), messages()), (0, 0));
    // Committed: one alert, one message, one delivery; a re-raise adds none.
    h.raise("committed");
    h.raise("committed");
    assert_eq!((alerts(), messages()), (1, 1));
    assert_eq!(h.delivery_ids().len(), 1);
}

/// `custodian keys rotate` on the database at `url`, with the test keys.
fn rotate_keys(url: &str) -> std::process::Output {
    crate::support::cli::custodian(
        &["keys", "rotate"],
        &[
            ("DATABASE_URL", url),
            (
                "CUSTODIAN_CRYPTO_KEK",
                crate::support::test_keys().kek.as_str(),
            ),
            (
                "CUSTODIAN_CRYPTO_BLIND_INDEX_KEY",
                crate::support::test_keys().blind_index_key.as_str(),
            ),
        ],
    )
}

#[tokio::test]
async fn a_key_rotation_is_a_message_and_the_endpoint_secret_survives_it() {
    let h = Hooks::start(8).await;
    let r = Receiver::start();
    let (endpoint, secret) = h.register(&r.url()).await;
    r.control(json!({ "secret": secret })).await;

    let out = rotate_keys(&h.app.db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The endpoint's sealed secret moved to the new data key with everything else.
    let version: i32 = custodian::db::schema::webhook_endpoints::table
        .find(endpoint.as_uuid())
        .select(custodian::db::schema::webhook_endpoints::key_version)
        .first(&mut h.app.db.conn())
        .unwrap();
    assert_eq!(version, 2);

    // The message was written by the command (on the real clock): due once the app's
    // clock passes it; signed with the re-encrypted secret.
    h.advance(60);
    assert_eq!(h.pass().await.delivered, 1);
    let got = r.received().await;
    assert_eq!(got[0]["verified"], true, "{got:?}");
    let body: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "key.rotated");
    assert_eq!(body["data"]["key"], "data-key");
    assert_eq!(body["data"]["active_version"], 2);
    assert_eq!(body["data"]["console_url"], format!("{PUBLIC_URL}/console"));
}

#[tokio::test]
async fn the_administration_api_manages_endpoints_with_the_same_operations() {
    let w = World::with(|b, _| b.set("webhooks.enabled", false)).await;
    w.user("admin-1", &[Role::Admin]);
    let admin = w.token("admin-1", "admin");
    let (_, clinician) = w.user("dr-1", &[Role::Clinician]);
    let post = |path: &str, token: &str, body: Option<Value>| {
        let mut req = w
            .app
            .client
            .post(w.app.url(path))
            .header("authorization", format!("Bearer {token}"));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        req.send()
    };
    let url = "https://hooks.example.test/custodian";

    let res = post("/api/admin/webhooks", &admin, Some(json!({ "url": url })))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    let endpoint = v["endpoint_id"].as_str().unwrap().to_string();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));

    // Bad input: 422 with a fixed message that does not echo it; not an administrator: 403.
    let res = post(
        "/api/admin/webhooks",
        &admin,
        Some(json!({ "url": "http://x.test/<b>" })),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    assert!(!res.text().await.unwrap().contains("<b>"));
    let res = post(
        "/api/admin/webhooks",
        &clinician,
        Some(json!({ "url": url })),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);

    let res = post(
        &format!("/api/admin/webhooks/{endpoint}/rotate"),
        &admin,
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_ne!(v["secret"].as_str().unwrap(), secret);
    let res = post(
        &format!("/api/admin/webhooks/{endpoint}/disable"),
        &admin,
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 204);
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/api/admin/webhooks/{missing}/disable"),
        format!("/api/admin/webhooks/{endpoint}/explode"),
        format!("/api/admin/webhooks/deliveries/{missing}/redeliver"),
    ] {
        let res = post(&path, &admin, None).await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    // Each change is audited (create, key-rotation, update on the endpoint).
    let events = w.audit_events();
    let actions: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    for a in ["create", "key-rotation", "update"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
}

/// The SSRF guard at delivery time (`webhooks.allow_private_hosts` off): an endpoint on
/// an internal address — a literal, or a name that resolves to one (as a rebound name
/// would at delivery) — fails without a connection, and the receiver gets nothing.
#[tokio::test]
async fn ssrf_guard_refuses_internal_addresses_at_delivery_without_connecting() {
    let mut h = Hooks::start(8).await;
    let r = Receiver::start();
    // Registered with the guard off (as if the name had been public then)…
    let (_, secret) = h.register(&r.url()).await;
    let literal = format!("https://127.0.0.1:{}/hook", r.port);
    h.register(&literal).await;
    r.control(json!({ "secret": secret })).await;
    // …delivered with it on.
    h.deliverer = Deliverer::new(
        h.db.clone(),
        h.keyring.clone(),
        h.clock(),
        WebhookConfig {
            allow_private_hosts: false,
            ..settings(8)
        },
        PUBLIC_URL,
    )
    .unwrap();
    h.raise("spike-ssrf");
    let pass = h.pass().await;
    assert_eq!((pass.delivered, pass.failed), (0, 2));
    let rows = h.deliveries();
    assert!(
        rows.iter()
            .all(|d| d.2.as_deref() == Some("forbidden-address") && d.3.is_none()),
        "{rows:?}"
    );
    assert!(
        r.received().await.is_empty(),
        "nothing reached the receiver"
    );
}

/// The SSRF guard at registration, through the administration API: internal hosts are
/// refused with a fixed 422 that names the field and does not echo the URL, and the
/// refusal is audited as an error.
#[tokio::test]
async fn ssrf_guard_refuses_internal_hosts_when_an_endpoint_is_registered() {
    let w = World::with(|b, _| {
        b.set("webhooks.enabled", false)
            .set("webhooks.allow_private_hosts", false)
    })
    .await;
    w.user("admin-1", &[Role::Admin]);
    let admin = w.token("admin-1", "admin");
    for url in [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://[::1]/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
    ] {
        let res = w
            .app
            .client
            .post(w.app.url("/api/admin/webhooks"))
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/json")
            .body(json!({ "url": url }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{url}");
        let text = res.text().await.unwrap();
        assert!(
            text.contains("'url'") && text.contains("public host"),
            "{text}"
        );
        let host = url::Url::parse(url)
            .unwrap()
            .host_str()
            .unwrap()
            .to_string();
        assert!(!text.contains(&host), "{text}");
    }
    let n: i64 = custodian::db::schema::webhook_endpoints::table
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(n, 0, "no endpoint registered");
    let events = w.audit_events();
    assert!(
        events.iter().any(|e| e.0 == "create" && e.1 == "error"),
        "{events:?}"
    );
}

/// A rotation's `key.rotated` message is written in the rotation's transaction: a
/// message that cannot be written rolls the rotation back, a rotation that fails at its
/// commit leaves no message, and a rotation that commits has exactly one.
#[tokio::test]
async fn a_rotation_and_its_message_commit_together_or_not_at_all() {
    let h = Hooks::start(8).await;
    h.register("https://hooks.example.test/custodian").await;
    let rotate = || rotate_keys(&h.app.db.url);
    let sql = |q: &str| {
        diesel::sql_query(q).execute(&mut h.app.db.conn()).unwrap();
    };
    let state = || -> (Option<i32>, i64) {
        let mut c = h.app.db.conn();
        let version = custodian::db::schema::data_keys::table
            .select(diesel::dsl::max(custodian::db::schema::data_keys::version))
            .first(&mut c)
            .unwrap();
        let messages = wm::table.count().get_result(&mut c).unwrap();
        (version, messages)
    };
    sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
    );

    // The outbox refuses the message: the rotation does not stand.
    sql(
        "CREATE TRIGGER no_messages BEFORE INSERT ON webhook_messages FOR EACH ROW EXECUTE FUNCTION refuse()",
    );
    let out = rotate();
    assert!(
        !out.status.success(),
        "the rotation stood without its message"
    );
    assert_eq!(state(), (Some(1), 0));
    sql("DROP TRIGGER no_messages ON webhook_messages");

    // The rotation fails at its commit (after the message was written in it): no message.
    sql(
        "CREATE CONSTRAINT TRIGGER no_new_key AFTER INSERT ON data_keys DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()",
    );
    let out = rotate();
    assert!(!out.status.success());
    assert_eq!(state(), (Some(1), 0));
    sql("DROP TRIGGER no_new_key ON data_keys");

    // A rotation that commits has its one message.
    let out = rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(), (Some(2), 1));
    let kind: String = wm::table
        .select(wm::event_type)
        .first(&mut h.app.db.conn())
        .unwrap();
    assert_eq!(kind, "key.rotated");
}
