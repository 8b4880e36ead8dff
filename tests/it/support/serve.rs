//! Real `custodian serve` processes for the fault-injection and multi-instance suites:
//! the binary with a configuration file in a temporary folder (the harness's keys and
//! certificate), its log kept in that folder, killed with SIGKILL when dropped. Also the
//! load those suites put on it and `custodian audit verify` on a database.

use super::idp::{Signer, now};
use super::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, free_port, test_cert, test_keys};
use diesel::PgConnection;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const AUDIENCE: &str = "https://custodian.test/fhir";
pub const SCOPES: &str = "user/Patient.cruds user/Observation.cruds user/Claim.cruds";

/// The configuration file of one instance: the harness's settings, bearer tokens from
/// `issuer`, rate limits out of the way of the load.
pub fn config_toml(port: u16, database_url: &str, issuer: &str) -> String {
    let cert = test_cert();
    let keys = test_keys();
    let mut t = toml::Table::new();
    let mut set = |k: &str, v: toml::Value| custodian::config::insert_dotted(&mut t, k, v);
    set("server.listen", format!("127.0.0.1:{port}").into());
    set("server.public_url", "https://localhost:8443".into());
    set("server.workers", 2.into());
    set("server.shutdown_timeout_secs", 2.into());
    set("tls.cert_file", cert.cert.display().to_string().into());
    set("tls.key_file", cert.key.display().to_string().into());
    set("database.url", database_url.into());
    set("database.pool_size", 6.into());
    set("database.acquire_timeout_ms", 1500.into());
    set("database.connect_timeout_secs", 2.into());
    set("crypto.kek", keys.kek.clone().into());
    set(
        "crypto.blind_index_key",
        keys.blind_index_key.clone().into(),
    );
    set("audit.chain_key", TEST_CHAIN_KEY.into());
    set("audit.checkpoint_signing_key", TEST_SIGNING_KEY.into());
    // Checkpoints often, so that the suites also cross checkpoint boundaries.
    set("audit.checkpoint_every_events", 50.into());
    set("auth.issuer", issuer.into());
    set("auth.audience", AUDIENCE.into());
    set("ratelimit.per_address_per_minute", 600_000.into());
    set("ratelimit.per_address_burst", 100_000.into());
    set("ratelimit.per_principal_per_minute", 600_000.into());
    set("ratelimit.per_principal_burst", 100_000.into());
    set("log.format", "text".into());
    toml::to_string(&t).unwrap()
}

/// One `custodian serve` process.
pub struct Served {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Served {
    /// Starts `custodian serve` on a free port and waits until `/healthz` answers.
    pub async fn start(database_url: &str, issuer: &str) -> Served {
        Served::start_with(database_url, issuer, &[]).await
    }

    /// [`Served::start`] with more environment (settings as `CUSTODIAN_*`, `RUST_LOG`).
    pub async fn start_with(database_url: &str, issuer: &str, env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("custodian.toml");
        std::fs::write(&config, config_toml(port, database_url, issuer)).unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = super::cli::command(&["--config", config.to_str().unwrap(), "serve"], env)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut served = Served {
            child,
            port,
            dir,
            client: super::client(),
        };
        served.wait_healthy().await;
        served
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("custodian serve exited with {status}:\n{}", self.log());
            }
            if let Ok(res) = self.client.get(self.url("/healthz")).send().await
                && res.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "custodian serve did not answer /healthz within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it was never restarted by the test).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("custodian.toml")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `custodian audit verify` against `database_url`, as an operator runs it; returns
/// (success, stdout + stderr).
pub fn audit_verify(database_url: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custodian.toml");
    // The issuer is irrelevant to verification; the keys and database are what count.
    std::fs::write(
        &config,
        config_toml(free_port(), database_url, "http://127.0.0.1:1"),
    )
    .unwrap();
    let out = super::cli::custodian(
        &["--config", config.to_str().unwrap(), "audit", "verify"],
        &[],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An access token for `sub` from `signer` at `issuer`, with the clinical scopes.
pub fn token(signer: &Signer, issuer: &str, sub: &str) -> String {
    token_with_scope(signer, issuer, sub, SCOPES)
}

pub fn token_with_scope(signer: &Signer, issuer: &str, sub: &str, scope: &str) -> String {
    let now = now();
    signer.sign(&json!({
        "iss": issuer, "aud": AUDIENCE, "sub": sub, "exp": now + 900,
        "iat": now, "client_id": "suite-load", "scope": scope,
    }))
}

/// A synthetic patient (no real person) with a unique MRN.
pub fn patient(n: u64) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:custodian:mrn", "value": format!("SUITE-{n}") }],
        "name": [{ "family": format!("Loadtest{}", n % 7), "given": ["Synthetic"] }],
        "gender": "unknown",
        "birthDate": "1980-01-01"
    })
}

/// What one request of the load got back.
#[derive(Clone, Debug)]
pub struct Answer {
    pub what: &'static str,
    /// `None`: no HTTP answer at all (connection refused or reset).
    pub status: Option<u16>,
    pub request_id: Option<String>,
    pub retry_after: Option<String>,
    /// The id of a created patient (201).
    pub created: Option<String>,
    pub at: Instant,
    /// Which of the load's base URLs answered.
    pub instance: usize,
}

/// One request of the mixed load: create a patient, read one created earlier, or search.
pub async fn one_request(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    n: u64,
    known: &std::sync::Mutex<Vec<String>>,
) -> Answer {
    let pick = known.lock().unwrap().last().cloned();
    let (what, req) = match (n % 3, pick) {
        (1, Some(id)) => ("read", client.get(format!("{base}/fhir/Patient/{id}"))),
        (2, _) => (
            "search",
            client.get(format!("{base}/fhir/Patient?family=Loadtest{}", n % 7)),
        ),
        _ => (
            "create",
            client
                .post(format!("{base}/fhir/Patient"))
                .header("content-type", "application/fhir+json")
                .body(patient(n).to_string()),
        ),
    };
    let res = req
        .bearer_auth(token)
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    let at = Instant::now();
    match res {
        Err(_) => Answer {
            what,
            status: None,
            request_id: None,
            retry_after: None,
            created: None,
            at,
            instance: 0,
        },
        Ok(res) => {
            let header = |n: &str| {
                res.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let status = res.status().as_u16();
            let request_id = header("x-request-id");
            let retry_after = header("retry-after");
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let created = (status == 201)
                .then(|| body["id"].as_str().map(str::to_string))
                .flatten();
            if let Some(id) = &created {
                known.lock().unwrap().push(id.clone());
            }
            Answer {
                what,
                status: Some(status),
                request_id,
                retry_after,
                created,
                at,
                instance: 0,
            }
        }
    }
}

/// Audit events per request id, with their outcome: `(request_id, outcome, action)`.
pub fn events_by_request(conn: &mut diesel::PgConnection) -> Vec<(Option<String>, String, String)> {
    use custodian::db::schema::audit_events::dsl::*;
    use diesel::prelude::*;
    audit_events
        .order(seq)
        .select((request_id, outcome, action))
        .load(conn)
        .unwrap()
}

/// The audit chain's shape: (count, min seq, max seq, head seq).
pub fn chain_shape(conn: &mut diesel::PgConnection) -> (i64, i64, i64, i64) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Shape {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        lo: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        hi: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        head: i64,
    }
    let s: Shape = diesel::sql_query(
        "SELECT count(*) AS n, coalesce(min(seq), 0) AS lo, coalesce(max(seq), 0) AS hi, \
         (SELECT seq FROM audit_chain_head) AS head FROM audit_events",
    )
    .get_result(conn)
    .unwrap();
    (s.n, s.lo, s.hi, s.head)
}

/// Runs `workers` concurrent request loops against `bases` (round robin) until `stop`.
pub fn start_load(
    bases: Vec<String>,
    tokens: Vec<String>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Mutex<Vec<Answer>>>) {
    let answers = Arc::new(Mutex::new(Vec::new()));
    // Patients each token created: a clinician reads only those in its care.
    let known: Arc<Vec<Mutex<Vec<String>>>> =
        Arc::new(tokens.iter().map(|_| Mutex::new(Vec::new())).collect());
    let counter = Arc::new(AtomicU64::new(0));
    let client = super::client();
    let handles = (0..workers)
        .map(|w| {
            let (bases, tokens) = (bases.clone(), tokens.clone());
            let (answers, known, counter, stop) = (
                answers.clone(),
                known.clone(),
                counter.clone(),
                stop.clone(),
            );
            let client = client.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let instance = (n as usize + w) % bases.len();
                    let who = n as usize % tokens.len();
                    let mut a =
                        one_request(&client, &bases[instance], &tokens[who], n, &known[who]).await;
                    a.instance = instance;
                    let failed = a.status != Some(200) && a.status != Some(201);
                    answers.lock().unwrap().push(a);
                    if failed {
                        // Do not spin while the database is away.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    (handles, answers)
}

/// Every success must have exactly one committed audit event with its request id, an
/// allowing one. Returns the number of successes checked.
pub fn each_success_has_its_event(conn: &mut PgConnection, answers: &[Answer]) -> usize {
    let mut by_request: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (rid, outcome, action) in events_by_request(conn) {
        if let Some(rid) = rid {
            by_request.entry(rid).or_default().push((outcome, action));
        }
    }
    let mut checked = 0;
    for a in answers
        .iter()
        .filter(|a| matches!(a.status, Some(200) | Some(201)))
    {
        let rid = a
            .request_id
            .as_deref()
            .expect("every answer has a request id");
        let events = by_request.get(rid).cloned().unwrap_or_default();
        assert_eq!(
            events.len(),
            1,
            "{} {:?} (request {rid}) has {} audit events: {events:?}",
            a.what,
            a.status,
            events.len()
        );
        assert_eq!(events[0].0, "permit", "{} {rid}: {events:?}", a.what);
        checked += 1;
    }
    checked
}
