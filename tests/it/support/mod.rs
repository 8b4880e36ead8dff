//! Test harness: the real app on port 0 with TLS, one fresh PostgreSQL database per test
//! (cloned from a migrated template), dropped afterwards; leftovers of crashed runs are
//! swept on the next run. Uses CUSTODIAN_TEST_DATABASE_URL or DATABASE_URL (an admin
//! connection to an existing server) when set, otherwise its own throwaway cluster.
#![allow(dead_code)]

use custodian::app::ExtraRoutes;
use custodian::app::{Application, Options};
use custodian::config;
use custodian::dev::pgcluster::LocalCluster;
use custodian::domain::clock::ManualClock;
use diesel::prelude::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod authenticator;
pub mod browser;
pub mod cli;
pub mod idp;
pub mod node;
pub mod oidc;
pub mod phi;
pub mod proxy;
pub mod serve;
pub mod tlsclient;
pub mod world;

const TEST_DB_PREFIX: &str = "custodian_test_";

/// Audit keys of every test app (base64 of 32 bytes; test values only).
pub const TEST_CHAIN_KEY: &str = "Y3VzdG9kaWFuLXRlc3QtY2hhaW4ta2V5LTMyLWJ5dGU=";
pub const TEST_SIGNING_KEY: &str = "Y3VzdG9kaWFuLXRlc3Qtc2lnbmluZy1zZWVkLTMyYnk=";

/// Admin URL of the server tests create databases on.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let url = std::env::var("CUSTODIAN_TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| own_cluster_url());
        sweep_leftovers(&url);
        url
    })
}

/// Starts (or reuses) a throwaway cluster under the target folder, shared by all test
/// processes; a file lock keeps two processes from starting it at once.
fn own_cluster_url() -> String {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("custodian-test-pg");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join("start.lock")).unwrap();
    lock.lock().unwrap();
    let port_file = root.join("port");
    let port = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or_else(|| {
            let port = free_port();
            std::fs::write(&port_file, port.to_string()).unwrap();
            port
        });
    let cluster = LocalCluster::new(&root.join("cluster"), Some(port), false).unwrap();
    cluster.init_if_needed().unwrap();
    cluster.start().unwrap();
    cluster.url("postgres")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn url_for(admin: &str, db: &str) -> String {
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&format!("/{db}"));
    url.to_string()
}

fn connect(url: &str) -> PgConnection {
    PgConnection::establish(url)
        .unwrap_or_else(|e| panic!("cannot connect to test PostgreSQL: {e}"))
}

/// Drops databases left by test processes that no longer run.
fn sweep_leftovers(admin: &str) {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let mut conn = connect(admin);
    let names: Vec<Name> = diesel::sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{TEST_DB_PREFIX}%'"
    ))
    .load(&mut conn)
    .unwrap();
    for Name { datname } in names {
        let pid = datname
            .strip_prefix(TEST_DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{datname}\" WITH (FORCE)"
            ))
            .execute(&mut conn);
        }
    }
}

/// A template database with all migrations, named after the migrations' names and SQL so
/// that a new or edited migration gives a new template.
fn template() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        use diesel::migration::MigrationSource;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let migrations: Vec<_> =
            MigrationSource::<diesel::pg::Pg>::migrations(&custodian::db::MIGRATIONS)
                .unwrap()
                .iter()
                .map(|m| {
                    let name = m.name().to_string();
                    let up = std::fs::read_to_string(dir.join(&name).join("up.sql")).unwrap();
                    format!("{name}\n{up}")
                })
                .collect();
        let digest = custodian_digest(&migrations.join(","));
        let name = format!("custodian_tpl_{digest}");
        let admin = admin_url();
        let mut conn = connect(admin);
        // Session-level lock: one process builds the template, the others wait.
        diesel::sql_query("SELECT pg_advisory_lock(7367)")
            .execute(&mut conn)
            .unwrap();
        custodian::dev::pgcluster::create_database_if_missing(admin, &name).unwrap();
        custodian::db::migrate(&url_for(admin, &name), 5).unwrap();
        diesel::sql_query("SELECT pg_advisory_unlock(7367)")
            .execute(&mut conn)
            .unwrap();
        name
    })
}

fn custodian_digest(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
}

/// A fresh database for one test, dropped when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let template = template();
        let name = format!(
            "{TEST_DB_PREFIX}{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut conn = connect(admin_url());
        diesel::sql_query(format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut conn)
        .unwrap();
        TestDb {
            url: url_for(admin_url(), &name),
            name,
        }
    }

    pub fn conn(&self) -> PgConnection {
        connect(&self.url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let mut conn = connect(admin_url());
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn);
    }
}

/// A self-signed certificate for 127.0.0.1/localhost, written once per test process.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
}

pub fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("custodian-tls")
            .tempdir()
            .unwrap()
            .keep();
        let (cert_pem, key_pem) = custodian::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        TestCert {
            cert,
            key,
            cert_pem,
        }
    })
}

/// Random keys for encryption at rest, one set per test process (base64, 32 bytes).
pub struct TestKeys {
    pub kek: String,
    pub blind_index_key: String,
}

pub fn random_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

pub fn test_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        kek: random_key(),
        blind_index_key: random_key(),
    })
}

/// The `server.public_url` of test apps (absolute links in responses start with it).
pub const PUBLIC_URL: &str = "https://localhost:8443";

pub struct TestAppBuilder {
    table: toml::Table,
    extra_routes: Option<ExtraRoutes>,
    db: Option<TestDb>,
    dev_jwks: Option<custodian::dev::token::DevJwks>,
    clock: Option<ManualClock>,
}

impl TestAppBuilder {
    /// Sets a configuration value by its dotted key (as in the config file).
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        config::insert_dotted(&mut self.table, key, value.into());
        self
    }

    pub fn with_redirect_listener(self) -> Self {
        self.set("server.http_redirect_listen", "127.0.0.1:0")
    }

    pub fn extra_routes(mut self, routes: ExtraRoutes) -> Self {
        self.extra_routes = Some(routes);
        self
    }

    /// Starts the app as `custodian dev` does: serving this development JWKS.
    pub fn dev_jwks(mut self, dev: custodian::dev::token::DevJwks) -> Self {
        self.dev_jwks = Some(dev);
        self
    }

    /// Starts the app on a [`ManualClock`] (reach it with [`TestApp::clock`]): time moves
    /// when the test says so, instead of the test sleeping.
    pub fn manual_clock(mut self) -> Self {
        self.clock = Some(ManualClock::new());
        self
    }

    /// Uses this database instead of a fresh one.
    pub fn database(mut self, db: TestDb) -> Self {
        self.db = Some(db);
        self
    }

    pub fn config(&self, db_url: &str) -> config::Config {
        let cert = test_cert();
        let mut table = toml::Table::new();
        let mut set = |k: &str, v: toml::Value| config::insert_dotted(&mut table, k, v);
        set("server.listen", "127.0.0.1:0".into());
        set("server.public_url", PUBLIC_URL.into());
        set("server.workers", 2.into());
        set("tls.cert_file", cert.cert.display().to_string().into());
        set("tls.key_file", cert.key.display().to_string().into());
        set("database.url", db_url.into());
        set("database.pool_size", 4.into());
        set("database.acquire_timeout_ms", 1500.into());
        set("database.connect_timeout_secs", 2.into());
        set("crypto.kek", test_keys().kek.clone().into());
        set(
            "crypto.blind_index_key",
            test_keys().blind_index_key.clone().into(),
        );
        set("audit.chain_key", TEST_CHAIN_KEY.into());
        set("audit.checkpoint_signing_key", TEST_SIGNING_KEY.into());
        // Off unless a test turns it on: tests of other features count their alerts.
        set("detect.enabled", false.into());
        // The tests' webhook receivers listen on localhost; the SSRF guard's own tests
        // turn it back on.
        set("webhooks.allow_private_hosts", true.into());
        config::merge(&mut table, self.table.clone());
        let c = config::from_table(table).unwrap();
        c.validate().unwrap();
        c
    }

    pub async fn spawn(mut self) -> TestApp {
        let db = self.db.take().unwrap_or_else(TestDb::create);
        let config = self.config(&db.url);
        let app = Application::build(
            config,
            Options {
                extra_routes: self.extra_routes,
                disable_signals: true,
                dev_jwks: self.dev_jwks,
                dev_idp: None,
                clock: self.clock.as_ref().map(ManualClock::shared),
            },
        )
        .await
        .expect("app starts");
        let https = app.https_addr();
        let http = app.http_addr();
        let metrics = app.metrics_addr();
        let handles = app.handles();
        tokio::spawn(app.run());
        TestApp {
            https,
            http,
            metrics,
            client: client(),
            db,
            handles,
            clock: self.clock,
        }
    }
}

/// An HTTPS client that trusts the test certificate, keeps cookies and never follows
/// redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

pub struct TestApp {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub db: TestDb,
    handles: Vec<actix_web::dev::ServerHandle>,
    clock: Option<ManualClock>,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            table: toml::Table::new(),
            extra_routes: None,
            db: None,
            dev_jwks: None,
            clock: None,
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    /// The app's clock, when it was started with [`TestAppBuilder::manual_clock`].
    pub fn clock(&self) -> &ManualClock {
        self.clock
            .as_ref()
            .expect("the app was started with TestAppBuilder::manual_clock()")
    }

    /// `https://localhost:<port><path>` (the certificate names localhost). An absolute
    /// URL at the test apps' `server.public_url` ([`PUBLIC_URL`], as a link in a
    /// response names it) is taken to this app, as a reverse proxy would.
    pub fn url(&self, path: &str) -> String {
        let path = path.strip_prefix(PUBLIC_URL).unwrap_or(path);
        format!("https://localhost:{}{path}", self.https.port())
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn stop(&self) {
        for h in &self.handles {
            h.stop(false).await;
        }
    }
}

/// Headers every HTTPS response must carry.
pub fn assert_security_headers(res: &reqwest::Response) {
    let h = res.headers();
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let what = format!("{} {}", res.status(), res.url().path());
    assert_eq!(
        get("strict-transport-security"),
        "max-age=31536000; includeSubDomains",
        "{what}"
    );
    let csp = get("content-security-policy");
    for part in [
        "default-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{what}: CSP lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"), "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "same-origin", "{what}");
    assert_eq!(get("cross-origin-opener-policy"), "same-origin", "{what}");
    assert!(get("permissions-policy").contains("camera=()"), "{what}");
    assert!(!get("x-request-id").is_empty(), "{what}: no request id");
}

/// Routes that only tests add, behind the same middleware as the product's routes.
pub mod test_routes {
    use actix_web::http::Method;
    use actix_web::{HttpRequest, HttpResponse, web};
    use custodian::app::routes::Routes;
    use custodian::error::AppError;
    use custodian::policy::Action;
    use custodian::state::AppState;
    use custodian::web::json::JsonBody;
    use diesel::RunQueryDsl;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Probe {
        pub name: String,
    }

    pub fn add(r: &mut Routes) {
        r.add(Method::POST, "/api/test/json", Action::Public, json);
        r.add(Method::GET, "/api/test/panic", Action::Public, panic);
        r.add(Method::GET, "/fhir/test/db", Action::Public, db);
        r.add(Method::GET, "/api/test/hold", Action::Public, hold);
        r.add(
            Method::GET,
            "/api/test/client-cert",
            Action::Public,
            client_cert,
        );
        r.add(Method::GET, "/api/test/nodelay", Action::Public, nodelay);
        r.add(
            Method::POST,
            "/api/test/expiry-sweeps",
            Action::Public,
            expiry_sweeps,
        );
    }

    /// Two break-glass expiry sweeps at the same moment, each on a session of its own
    /// (as two instances would run them).
    async fn expiry_sweeps(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
        use custodian::access::expiry::sweep;
        let (a, b) = tokio::join!(sweep(&state, None), sweep(&state, None));
        a?;
        b?;
        Ok(HttpResponse::Ok().finish())
    }

    async fn json(body: JsonBody<Probe>) -> HttpResponse {
        HttpResponse::Ok().json(serde_json::json!({ "length": body.0.name.len() }))
    }

    #[allow(clippy::panic)]
    async fn panic() -> HttpResponse {
        panic!("deliberate test panic with CANARY-PANIC-TEXT");
    }

    async fn db(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
        state
            .db
            .run(|c| Ok(diesel::sql_query("SELECT 1").execute(c)?))
            .await?;
        Ok(HttpResponse::Ok().finish())
    }

    async fn hold(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
        state
            .db
            .run(|c| Ok(diesel::sql_query("SELECT pg_sleep(3)").execute(c)?))
            .await?;
        Ok(HttpResponse::Ok().finish())
    }

    async fn nodelay(req: HttpRequest) -> HttpResponse {
        match req.conn_data::<custodian::tls::NoDelay>() {
            Some(d) => HttpResponse::Ok().body(d.0.to_string()),
            None => HttpResponse::Ok().body("unknown"),
        }
    }

    async fn client_cert(req: HttpRequest) -> HttpResponse {
        use sha2::Digest;
        match req.conn_data::<custodian::tls::ClientCertificate>() {
            Some(c) => HttpResponse::Ok().body(hex::encode(sha2::Sha256::digest(c.0.as_ref()))),
            None => HttpResponse::Ok().body("none"),
        }
    }
}

/// Every audit event of `app` in chain order: (action, outcome, deny reason).
pub fn console_events(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    use custodian::db::schema::audit_events::dsl::*;
    audit_events
        .order(seq)
        .select((action, outcome, deny_reason))
        .load(&mut app.db.conn())
        .unwrap()
}
