//! Bulk export benchmark (issue 17, Performance): the release `custodian serve` over TLS
//! on real PostgreSQL exports `--patients` patients (default 100,000) with their
//! observations, notes (DocumentReference) and claims, **de-identified**, while `wrk`
//! runs the read benchmark (`GET /fhir/Patient/{id}`) alongside. It reports the export's
//! resources/s, the server's RSS sampled every second (flat: the runner streams one
//! batch at a time), and the read throughput before, during and after the export.
//!
//! Run with `bash .ci/bench --scenario export [--patients 100000] [--read-secs 15]`
//! (or `cargo bench --bench export -- …`). See docs/export.md#benchmark.
//!
//! Seeding does not go through HTTP: rows are sealed in-process by the product's own
//! sealing code (`seal_patient`, each table's `RecordTable::seal`, the claim item
//! columns) with the server's keyring and inserted 1,000 to a statement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custodian::crypto::columns;
use custodian::db::claims::{ClaimTable, NewClaim, NewClaimItem};
use custodian::db::documents::{DocumentTable, NewDocumentReference};
use custodian::db::observations::{NewObservation, ObservationTable};
use custodian::db::records::Shapes;
use custodian::db::schema::{
    care_team_members, claim_items, claims, document_references, observations, patients,
};
use custodian::db::{phi, users};
use custodian::dev::pgcluster::LocalCluster;
use custodian::domain::{PatientId, UserId};
use custodian::policy::Role;
use diesel::prelude::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{clk_tck, free_port, key_b64, loadavg, serve_jwks, wait_ready};
use uuid::Uuid;

mod support;

const AUDIENCE: &str = "https://custodian.bench/fhir";
const DB_NAME: &str = "custodian_bench_export";
/// What the exporter's token may search (the export covers what the caller could search).
const EXPORT_SCOPES: &str =
    "user/Patient.rs user/Observation.rs user/DocumentReference.rs user/Claim.rs";
const READ_SCOPES: &str = "user/Patient.rs";
/// Seeding statement size (rows per INSERT; 17 columns × 1,000 stays under 65,535 binds).
const CHUNK: usize = 1_000;

struct Args {
    patients: usize,
    observations: usize,
    read_secs: u64,
    connections: u32,
    batch_size: i64,
    batch_pause_ms: u64,
    /// Leave the throwaway cluster (and the files) in place for profiling.
    keep: bool,
}

fn args() -> Args {
    let mut a = Args {
        patients: 100_000,
        observations: 2,
        read_secs: 15,
        connections: 16,
        batch_size: 500,
        batch_pause_ms: 5,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--scenario" => assert_eq!(val(), "export", "this bench is the export scenario"),
            "--patients" => a.patients = val().parse().expect("--patients: number"),
            "--observations" => a.observations = val().parse().expect("--observations: number"),
            "--read-secs" => a.read_secs = val().parse().expect("--read-secs: seconds"),
            "--connections" => a.connections = val().parse().expect("--connections: number"),
            "--batch-size" => a.batch_size = val().parse().expect("--batch-size: number"),
            "--batch-pause-ms" => a.batch_pause_ms = val().parse().expect("--batch-pause-ms"),
            "--keep" => a.keep = true,
            other => panic!(
                "unknown argument {other}; use --patients N --observations N --read-secs S \
                 --connections N --batch-size N --batch-pause-ms MS --keep"
            ),
        }
    }
    a
}

/// CPU seconds (user + system) of one process.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = s.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (n(11) + n(12)) as f64 / clk_tck()
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field).and_then(|v| {
                v.trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn database(root: &Path) -> (String, String, Option<LocalCluster>) {
    if let Ok(admin) = std::env::var("CUSTODIAN_BENCH_DATABASE_URL") {
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{DB_NAME}"));
        return (url.to_string(), admin, None);
    }
    let pg_root = root.join("pg");
    if pg_root.join("pgdata/PG_VERSION").is_file() {
        let old = LocalCluster::new(&pg_root, None, true).unwrap();
        if old.is_running() {
            old.stop().unwrap();
        }
        std::fs::remove_dir_all(&pg_root).unwrap();
    }
    let cluster = LocalCluster::new(&pg_root, None, true).unwrap();
    cluster.init_if_needed().unwrap();
    cluster.start().unwrap();
    (cluster.url(DB_NAME), cluster.url("postgres"), Some(cluster))
}

fn main() {
    let a = args();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("target/bench-export");
    let run = root.join("run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(run.join("audit")).unwrap();
    std::fs::create_dir_all(run.join("exports")).unwrap();
    eprintln!("[export] load average at start: {}", loadavg());

    let (url, admin_url, cluster) = database(&root);
    let mut admin = PgConnection::establish(&admin_url).unwrap();
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS \"{DB_NAME}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{DB_NAME}\""))
        .execute(&mut admin)
        .unwrap();
    custodian::db::migrate(&url, 5).unwrap();

    // --- keys, certificate, JWKS, configuration ------------------------------------------
    let (cert_pem, key_pem) = custodian::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(run.join("cert.pem"), cert_pem).unwrap();
    custodian::dev::write_private(&run.join("key.pem"), key_pem.as_bytes()).unwrap();
    let text =
        std::fs::read_to_string(manifest.join("tests/fixtures/test-only-rsa-key.pem")).unwrap();
    let signing_key =
        EncodingKey::from_rsa_pem(&text.as_bytes()[text.find("-----BEGIN").unwrap()..]).unwrap();
    let mut jwk = Jwk::from_encoding_key(&signing_key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("bench-1".into());
    let issuer = format!(
        "http://127.0.0.1:{}",
        serve_jwks(json!({ "keys": [jwk] }).to_string())
    );
    let port = free_port();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "https://127.0.0.1:{port}"
[tls]
cert_file = "{run}/cert.pem"
key_file = "{run}/key.pem"
[database]
url = "{url}"
pool_size = 16
[crypto]
kek = "{kek}"
blind_index_key = "{blind}"
export_key = "{export}"
[auth]
issuer = "{issuer}"
audience = "{AUDIENCE}"
jwks_url = "{issuer}/jwks"
[audit]
chain_key = "{chain}"
checkpoint_signing_key = "{sign}"
checkpoint_dir = "{run}/audit"
[ratelimit]
per_address_per_minute = 0
per_principal_per_minute = 0
[export]
dir = "{run}/exports"
batch_size = {batch}
batch_pause_ms = {pause}
poll_ms = 200
[log]
format = "json"
"#,
        run = run.display(),
        kek = key_b64(),
        blind = key_b64(),
        export = key_b64(),
        chain = key_b64(),
        sign = key_b64(),
        batch = a.batch_size,
        pause = a.batch_pause_ms,
    );
    let config_path = run.join("custodian.toml");
    custodian::dev::write_private(&config_path, config.as_bytes()).unwrap();

    // --- seed: sealed in-process, inserted in bulk ------------------------------------------
    let table = custodian::config::load_table(Some(&config_path), Vec::new()).unwrap();
    let cfg = custodian::config::from_table(table).unwrap();
    let keyring = custodian::app::keys::load_keyring(&cfg.crypto, &url, 5).unwrap();
    let mut conn = PgConnection::establish(&url).unwrap();
    let facility = phi::insert_facility(&mut conn, "Synthetic General Hospital").unwrap();
    let person = |conn: &mut PgConnection, sub: &str, roles: &[Role]| -> UserId {
        let u = users::user_for(conn, &issuer, sub, users::UserKind::Person).unwrap();
        for r in roles {
            users::grant_role(conn, u.id, *r, "benchmark", None).unwrap();
        }
        users::set_facility(conn, u.id, Some(facility)).unwrap();
        u.id
    };
    // Clinician and billing: the one role set whose export covers all four types
    // (clinical types through the care team, claims through the facility).
    let exporter = person(
        &mut conn,
        "bench-exporter",
        &[Role::Clinician, Role::Billing],
    );
    let reader = person(&mut conn, "bench-reader", &[Role::Clinician]);
    let seed_started = Instant::now();
    let ids = seed(&mut conn, &keyring, facility, exporter, &a);
    // The reader's care team: the first 10,000 patients (what the read bench reads).
    let read_ids: Vec<Uuid> = ids.iter().take(10_000).copied().collect();
    for chunk in read_ids.chunks(CHUNK) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|p| {
                (
                    care_team_members::patient_id.eq(*p),
                    care_team_members::user_id.eq(reader.as_uuid()),
                )
            })
            .collect();
        diesel::insert_into(care_team_members::table)
            .values(rows)
            .execute(&mut conn)
            .unwrap();
    }
    diesel::sql_query("ANALYZE").execute(&mut conn).unwrap();
    let resources = a.patients * (3 + a.observations);
    let seed_secs = seed_started.elapsed().as_secs_f64();
    eprintln!(
        "[export] seeded {} patients, {resources} resources in {seed_secs:.1} s ({:.0} rows/s); load {}",
        a.patients,
        resources as f64 / seed_secs,
        loadavg()
    );

    // --- tokens and the read script ---------------------------------------------------------
    let token = |sub: &str, scope: &str| {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("bench-1".into());
        h.typ = Some("at+jwt".into());
        // A multi-factor sign-in a minute ago: a bulk export needs step-up.
        let claims = json!({
            "iss": issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 7200,
            "client_id": "bench-app", "scope": scope,
            "auth_time": now - 60, "amr": ["pwd", "otp", "mfa"],
        });
        jsonwebtoken::encode(&h, &claims, &signing_key).unwrap()
    };
    let export_token = token("bench-exporter", EXPORT_SCOPES);
    let script_path = run.join("read.lua");
    std::fs::write(
        &script_path,
        read_script(&token("bench-reader", READ_SCOPES), &read_ids),
    )
    .unwrap();

    // --- the server ------------------------------------------------------------------------
    let log = std::fs::File::create(run.join("server.log")).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_custodian"))
        .arg("serve")
        .env("CUSTODIAN_CONFIG", &config_path)
        .env_remove("DATABASE_URL")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A connection per request: the server closes idle ones while wrk runs.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    wait_ready(
        &rt,
        &client,
        &base,
        &mut server,
        Path::new("target/bench-export/run/server.log"),
    );
    let pid = server.id();
    // Stops the server however the bench ends (a panic included).
    let _stop = Stop(pid);

    // --- 1. the export alone (its own rate), RSS sampled every second ----------------------
    let idle_rss = status_kib(pid, "VmRSS");
    let ctx = Run {
        rt: &rt,
        client: &client,
        base: &base,
        token: &export_token,
        url: &url,
        pid,
    };
    let alone = ctx.export(None, &a);
    eprintln!(
        "[export] alone: {} resources in {:.1} s ({:.0}/s sustained); load {}",
        alone.total,
        alone.secs,
        alone.sustained,
        loadavg()
    );

    // --- 2. reads alone, then the export again with reads alongside, then reads alone ------
    let _ = wrk(&a, &script_path, &base, 5);
    let before = wrk(&a, &script_path, &base, a.read_secs);
    eprintln!(
        "[export] read without export: {:.0} req/s; load {}",
        before.0, before.1
    );
    let along = ctx.export(Some(&script_path), &a);
    eprintln!(
        "[export] with reads: {} resources in {:.1} s ({:.0}/s sustained); load {}",
        along.total,
        along.secs,
        along.sustained,
        loadavg()
    );
    let after = wrk(&a, &script_path, &base, a.read_secs);
    eprintln!(
        "[export] read after export: {:.0} req/s; load {}",
        after.0, after.1
    );
    let hwm = status_kib(pid, "VmHWM");
    let during_rps = along.reads.iter().map(|d| d.0).sum::<f64>() / along.reads.len().max(1) as f64;
    let baseline = (before.0 + after.0) / 2.0;
    let bytes: u64 = walk_bytes(&run.join("exports"));
    let result = json!({
        "scenario": "export",
        "patients": a.patients,
        "resources": alone.total,
        "by_type": alone.counts.iter().map(|(t, n)| json!({ "type": t, "count": n })).collect::<Vec<_>>(),
        "kind": "de-identified",
        "seed_secs": seed_secs,
        "alone": alone.to_json(),
        "with_reads": along.to_json(),
        "bytes_written_both_exports": bytes,
        "rss_kib_idle": idle_rss,
        "rss_kib_hwm": hwm,
        "read_rps_before": before.0,
        "read_rps_during": along.reads.iter().map(|d| d.0).collect::<Vec<_>>(),
        "read_rps_after": after.0,
        "read_loss_pct": 100.0 * (1.0 - during_rps / baseline.max(1e-9)),
        "load_before": before.1,
        "load_during": along.reads.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
        "load_after": after.1,
        "batch_size": a.batch_size,
        "batch_pause_ms": a.batch_pause_ms,
        "connections": a.connections,
    });
    let out_dir = manifest.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("results-export.json"),
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .unwrap();
    print_summary(&result);

    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = server.wait();
    if !a.keep {
        let _ = std::fs::remove_dir_all(run.join("exports"));
        match cluster {
            Some(c) => {
                c.stop().unwrap();
                let _ = std::fs::remove_dir_all(root.join("pg"));
            }
            None => {
                let _ = diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS \"{DB_NAME}\" WITH (FORCE)"
                ))
                .execute(&mut admin);
            }
        }
    }
}

/// SIGTERM to the server when dropped.
struct Stop(u32);

impl Drop for Stop {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.0 as i32, libc::SIGTERM);
        }
    }
}

/// What one export run needs.
struct Run<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
    url: &'a str,
    pid: u32,
}

/// One export's figures.
struct Done {
    total: u64,
    counts: Vec<(String, u64)>,
    secs: f64,
    sustained: f64,
    cpu: f64,
    /// (seconds since kick-off, RSS KiB, resources written), one a second.
    samples: Vec<(f64, u64, u64)>,
    /// Read windows run alongside: (requests/s, load average).
    reads: Vec<(f64, String)>,
}

impl Done {
    fn to_json(&self) -> Value {
        let rss: Vec<u64> = self.samples.iter().map(|s| s.1).collect();
        let quarter = |q: usize| {
            let n = rss.len();
            let (from, to) = (q * n / 4, ((q + 1) * n / 4).min(n));
            rss[from.min(n)..to.max(from.min(n))]
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
        };
        json!({
            "resources": self.total,
            "secs": self.secs,
            "resources_per_sec_overall": self.total as f64 / self.secs.max(1e-9),
            "resources_per_sec_sustained": self.sustained,
            "server_cpu_secs": self.cpu,
            "server_cpu_ms_per_1000_resources": self.cpu * 1e6 / self.total.max(1) as f64,
            "rss_kib_min": rss.iter().copied().min().unwrap_or(0),
            "rss_kib_max": rss.iter().copied().max().unwrap_or(0),
            "rss_kib_max_per_quarter": (0..4).map(quarter).collect::<Vec<_>>(),
            "rss_samples": self.samples.iter().map(|s| json!([(s.0 * 10.0).round() / 10.0, s.1, s.2])).collect::<Vec<_>>(),
        })
    }
}

impl Run<'_> {
    /// Kicks off a de-identified Patient-level export and waits for its manifest; with
    /// `reads`, runs read windows back to back while it runs.
    fn export(&self, reads: Option<&Path>, a: &Args) -> Done {
        let cpu_before = cpu_secs(self.pid);
        let started = Instant::now();
        let res = self
            .rt
            .block_on(
                self.client
                    .get(format!("{}/fhir/Patient/$export", self.base))
                    .header("authorization", format!("Bearer {}", self.token))
                    .header("accept", "application/fhir+json")
                    .header("prefer", "respond-async")
                    .send(),
            )
            .unwrap();
        assert_eq!(
            res.status().as_u16(),
            202,
            "kick-off: {}",
            self.rt.block_on(res.text()).unwrap()
        );
        let status_url = res.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        let job = Uuid::parse_str(status_url.rsplit('/').next().unwrap()).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let sampler = {
            let running = running.clone();
            let (url, pid) = (self.url.to_string(), self.pid);
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).unwrap();
                let mut samples: Vec<(f64, u64, u64)> = Vec::new();
                while running.load(Ordering::Relaxed) {
                    let written = written(&mut c, job);
                    samples.push((
                        started.elapsed().as_secs_f64(),
                        status_kib(pid, "VmRSS"),
                        written,
                    ));
                    std::thread::sleep(Duration::from_secs(1));
                }
                samples
            })
        };
        let mut windows = Vec::new();
        let manifest = loop {
            let res = self
                .rt
                .block_on(
                    self.client
                        .get(&status_url)
                        .header("authorization", format!("Bearer {}", self.token))
                        .send(),
                )
                .unwrap();
            match res.status().as_u16() {
                202 => match reads {
                    Some(script) => {
                        let w = wrk(a, script, self.base, a.read_secs);
                        eprintln!("[export] read with export: {:.0} req/s; load {}", w.0, w.1);
                        windows.push(w);
                    }
                    None => std::thread::sleep(Duration::from_millis(500)),
                },
                200 => break self.rt.block_on(res.json::<Value>()).unwrap(),
                other => panic!("status {other}: {}", self.rt.block_on(res.text()).unwrap()),
            }
            assert!(
                started.elapsed() < Duration::from_secs(3600),
                "export not done in an hour"
            );
        };
        let cpu = cpu_secs(self.pid) - cpu_before;
        running.store(false, Ordering::Relaxed);
        let samples = sampler.join().unwrap();
        let mut conn = PgConnection::establish(self.url).unwrap();
        // The job's own start and end (a poll may lag by a read window).
        let secs = job_secs(&mut conn, job);
        let counts: Vec<(String, u64)> = manifest["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["type"].as_str().unwrap().to_string(),
                    o["count"].as_u64().unwrap(),
                )
            })
            .collect();
        let total: u64 = counts.iter().map(|c| c.1).sum();
        // Sustained: between 10 % and 90 % of the lines written (the ramp-up and the
        // de-identified export's counting pass over the Patients are outside it).
        let at = |frac: f64| {
            samples
                .iter()
                .find(|s| s.2 as f64 >= frac * total as f64)
                .map(|s| (s.0, s.2))
        };
        let sustained = match (at(0.1), at(0.9)) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0),
            _ => total as f64 / secs,
        };
        Done {
            total,
            counts,
            secs,
            sustained,
            cpu,
            samples,
            reads: windows,
        }
    }
}

/// Seeds the patients (all on `exporter`'s care team, in `facility`) with
/// `--observations` observations, one note and one claim (two items) each.
fn seed(
    conn: &mut PgConnection,
    kr: &custodian::crypto::Keyring,
    facility: custodian::domain::FacilityId,
    exporter: UserId,
    a: &Args,
) -> Vec<Uuid> {
    let sealer = kr.sealer_for_write(conn).unwrap();
    let mut ids = Vec::with_capacity(a.patients);
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-05T08:30:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    for start in (0..a.patients).step_by(CHUNK) {
        let end = (start + CHUNK).min(a.patients);
        let chunk_ids: Vec<Uuid> = (start..end).map(|_| Uuid::new_v4()).collect();
        let mut rows = Vec::with_capacity(chunk_ids.len());
        for (i, id) in (start..end).zip(&chunk_ids) {
            let new = phi::NewPatient {
                facility_id: facility,
                mrn: format!("BENCH{i:07}"),
                ssn: Some(format!("9{i:08}")),
                family: format!("Benchfamily{}", i % 5_000),
                given: "Avery Quinn".into(),
                birth_date: chrono::NaiveDate::from_ymd_opt(
                    1930 + (i % 90) as i32,
                    1 + (i % 12) as u32,
                    1 + (i % 28) as u32,
                )
                .unwrap(),
                gender: if i % 2 == 0 { "female" } else { "male" }.into(),
                telecom: Some(json!([{ "system": "phone", "value": "555-0100" }])),
                address: Some(json!([{
                    "line": ["1 Synthetic Way"], "city": "Testville", "state": "MA",
                    "postalCode": format!("0{:04}", 2100 + i % 50), "country": "US"
                }])),
            };
            rows.push((
                patients::id.eq(*id),
                phi::seal_patient(kr, &sealer, *id, &new).unwrap(),
            ));
        }
        conn.transaction(|c| {
            diesel::insert_into(patients::table).values(&rows).execute(c)?;
            let team: Vec<_> = chunk_ids
                .iter()
                .map(|p| {
                    (
                        care_team_members::patient_id.eq(*p),
                        care_team_members::user_id.eq(exporter.as_uuid()),
                    )
                })
                .collect();
            diesel::insert_into(care_team_members::table).values(team).execute(c)?;

            let mut obs = Vec::new();
            let mut notes = Vec::new();
            let mut cls = Vec::new();
            let mut items = Vec::new();
            for (i, p) in (start..end).zip(&chunk_ids) {
                let patient_id = PatientId(*p);
                for k in 0..a.observations {
                    let id = Uuid::new_v4();
                    let new = NewObservation {
                        patient_id,
                        status: "final".into(),
                        code: "8867-4".into(),
                        code_display: Some("Heart rate".into()),
                        value: json!({ "valueQuantity": {
                            "value": 50 + (i + k) % 50, "unit": "/min",
                            "system": "http://unitsofmeasure.org", "code": "/min"
                        }}),
                        effective_at: base + chrono::Duration::days(((i + k) % 300) as i64),
                    };
                    obs.push((observations::id.eq(id), ObservationTable::seal(&new, &sealer, id).unwrap()));
                }
                let id = Uuid::new_v4();
                let note = NewDocumentReference {
                    patient_id,
                    author_id: Some(exporter),
                    doc_type: Some("11506-3".into()),
                    date: Some(base),
                    text: "Synthetic progress note. Routine follow-up; vitals reviewed; no acute concerns.".into(),
                    status: "current".into(),
                };
                notes.push((document_references::id.eq(id), DocumentTable::seal(&note, &sealer, id).unwrap()));
                let id = Uuid::new_v4();
                let new = NewClaim {
                    patient_id,
                    provider: "SYN Riverside General Hospital billing office".into(),
                    status: "active".into(),
                    total_cents: 10_200,
                    currency: "USD".into(),
                    items: Vec::new(),
                };
                cls.push((claims::id.eq(id), ClaimTable::seal(&new, &sealer, id).unwrap()));
                for (seq, (code, cents)) in [("99213", 9_200i64), ("36415", 1_000)].into_iter().enumerate() {
                    let item = NewClaimItem { seq: seq as i32 + 1, code: code.into(), amount_cents: cents };
                    let item_id = Uuid::new_v4();
                    items.push((
                        claim_items::id.eq(item_id),
                        claim_items::claim_id.eq(id),
                        claim_items::seq.eq(item.seq),
                        claim_items::key_version.eq(sealer.version()),
                        claim_items::code_sealed.eq(sealer
                            .seal_str(&columns::claim_items::CODE.at(item_id), &item.code)
                            .unwrap()),
                        claim_items::amount_sealed.eq(sealer
                            .seal_value(&columns::claim_items::AMOUNT.at(item_id), &item.amount_cents)
                            .unwrap()),
                    ));
                }
            }
            for part in obs.chunks(CHUNK) {
                diesel::insert_into(observations::table).values(part).execute(c)?;
            }
            diesel::insert_into(document_references::table).values(&notes).execute(c)?;
            diesel::insert_into(claims::table).values(&cls).execute(c)?;
            for part in items.chunks(CHUNK) {
                diesel::insert_into(claim_items::table).values(part).execute(c)?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
        ids.extend(chunk_ids);
        if end.is_multiple_of(20_000) {
            eprintln!("[export] seeded {end} patients");
        }
    }
    ids
}

/// Resources written so far by job `id` (its committed progress).
fn written(conn: &mut PgConnection, id: Uuid) -> u64 {
    use custodian::db::schema::export_jobs as j;
    j::table
        .filter(j::id.eq(id))
        .select(j::progress)
        .first::<Value>(conn)
        .ok()
        .and_then(|p| {
            p["counts"]
                .as_array()
                .map(|c| c.iter().filter_map(Value::as_u64).sum())
        })
        .unwrap_or(0)
}

/// Seconds from a job's start to its completion, as the job row records them.
fn job_secs(conn: &mut PgConnection, id: Uuid) -> f64 {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Double)]
        s: f64,
    }
    diesel::sql_query(
        "SELECT EXTRACT(EPOCH FROM (completed_at - created_at))::float8 AS s FROM export_jobs WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result::<S>(conn)
    .unwrap()
    .s
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk_bytes(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// One `wrk` run of the read script: (requests/s, load average at its end).
fn wrk(a: &Args, script: &Path, base: &str, secs: u64) -> (f64, String) {
    let out = Command::new("wrk")
        .arg("-t2")
        .arg(format!("-c{}", a.connections))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(base)
        .stdout(Stdio::piped())
        .output()
        .expect("wrk not found: run `bash .ci/bench --scenario export` (installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCHJSON "))
        .unwrap_or_else(|| panic!("wrk gave no result: {text}"));
    let v: Value = serde_json::from_str(line).unwrap();
    let errors = v["status_errors"].as_u64().unwrap_or(0) + v["timeouts"].as_u64().unwrap_or(0);
    assert_eq!(errors, 0, "read errors during the bench: {v}");
    let rps = v["requests"].as_f64().unwrap() / (v["duration_us"].as_f64().unwrap() / 1e6);
    (rps, loadavg())
}

fn read_script(token: &str, ids: &[Uuid]) -> String {
    let mut s = String::from("local ids = {\n");
    for id in ids {
        s.push_str(&format!("\"{id}\",\n"));
    }
    s.push_str(&format!(
        r#"}}
local headers = {{ ["Authorization"] = "Bearer {token}", ["Accept"] = "application/fhir+json" }}
tid = 0
local next_tid = 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
end
function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919 + math.floor(os.clock() * 1e6))
end
function request()
  return wrk.format("GET", "/fhir/Patient/" .. ids[math.random(#ids)], headers)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {{"requests":%d,"duration_us":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"#
    ));
    s
}

fn print_summary(r: &Value) {
    let f = |v: &Value| match v {
        Value::Number(n) => n.as_f64().map_or(n.to_string(), |x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        }),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("| figure | value |\n|---|---|");
    for k in [
        "patients",
        "resources",
        "by_type",
        "seed_secs",
        "rss_kib_idle",
        "rss_kib_hwm",
        "read_rps_before",
        "read_rps_during",
        "read_rps_after",
        "read_loss_pct",
        "load_before",
        "load_during",
        "load_after",
    ] {
        println!("| {k} | {} |", f(&r[k]));
    }
    for run in ["alone", "with_reads"] {
        for k in [
            "secs",
            "resources_per_sec_overall",
            "resources_per_sec_sustained",
            "server_cpu_secs",
            "server_cpu_ms_per_1000_resources",
            "rss_kib_min",
            "rss_kib_max",
            "rss_kib_max_per_quarter",
        ] {
            println!("| {run}.{k} | {} |", f(&r[run][k]));
        }
    }
    println!("full results (with the RSS samples): target/bench/results-export.json");
}
