//! End-to-end HTTP benchmark: the release `custodian serve` over TLS against real
//! PostgreSQL, driven by `wrk`, with the server's CPU/RSS, PostgreSQL's CPU, audit
//! completeness, `audit verify`, and a `pgbench` ceiling of the same SQL.
//! Run with `bash .ci/bench [--scenario read|search|write|mixed|denied|latency] [--duration 20]`
//! (or `cargo bench --bench http -- …`). See docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custodian::db::{phi, users};
use custodian::dev::pgcluster::LocalCluster;
use custodian::policy::Role;
use diesel::prelude::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{clk_tck, free_port, key_b64, loadavg, serve_jwks, wait_ready};
use uuid::Uuid;

mod support;

const AUDIENCE: &str = "https://custodian.bench/fhir";
const SCOPES: &str = "user/Patient.cruds user/Observation.cruds";
const DB_NAME: &str = "custodian_bench_http";

struct Args {
    scenario: String,
    duration: u64,
    connections: u32,
    threads: u32,
    patients: usize,
    pool_size: u32,
    ceiling: bool,
    alg: String,
    instances: u32,
    /// Label of a row to write into docs/benchmarks.md's results table.
    record: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        scenario: "read".into(),
        duration: 20,
        connections: 64,
        threads: 2,
        patients: 10_000,
        pool_size: 16,
        ceiling: true,
        alg: "RS256".into(),
        instances: 1,
        record: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--scenario" => a.scenario = val(),
            "--duration" => a.duration = val().parse().expect("--duration: seconds"),
            "--connections" => a.connections = val().parse().expect("--connections: number"),
            "--threads" => a.threads = val().parse().expect("--threads: number"),
            "--patients" => a.patients = val().parse().expect("--patients: number"),
            "--pool-size" => a.pool_size = val().parse().expect("--pool-size: number"),
            "--no-ceiling" => a.ceiling = false,
            "--alg" => a.alg = val(),
            "--instances" => a.instances = val().parse().expect("--instances: number"),
            "--record" => a.record = Some(val()),
            other => panic!(
                "unknown argument {other}; use --scenario read|search|write|mixed|denied|latency \
                 --duration S --connections N --threads N --patients N --pool-size N --alg RS256|ES256|EdDSA --instances N --no-ceiling --record LABEL"
            ),
        }
    }
    assert!(
        ["read", "search", "write", "mixed", "denied", "latency"].contains(&a.scenario.as_str()),
        "--scenario must be read, search, write, mixed, denied or latency"
    );
    assert!(
        (1..=8).contains(&a.instances) && a.connections >= a.instances,
        "--instances must be 1 to 8 and at most --connections"
    );
    a
}

/// The `custodian` binary to serve and verify with: this build's, or another build's
/// (`CUSTODIAN_BENCH_SERVER_BIN`, e.g. an older commit's release binary in its own worktree,
/// so before and after run against the same seed, load and ceiling in one sitting).
fn server_binary() -> PathBuf {
    std::env::var_os("CUSTODIAN_BENCH_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_custodian")))
}

/// (ppid, utime+stime, cutime+cstime) in ticks, and the command name.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // Fields after "(comm) ": state=0, ppid=1, … utime=11, stime=12, cutime=13, cstime=14.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((n(1) as u32, n(11) + n(12), n(13) + n(14), comm))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds of one process (self only; its exited children are not ours).
fn cpu_secs(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |s| s.1 as f64 / clk_tck())
}

/// CPU seconds of a PostgreSQL cluster: the postmaster (with its reaped children) plus
/// every live child. Without a known postmaster: every process named `postgres`.
fn pg_cpu_secs(postmaster: Option<u32>) -> f64 {
    let mut ticks = 0u64;
    match postmaster {
        Some(pm) => {
            if let Some((_, own, reaped, _)) = proc_stat(pm) {
                ticks += own + reaped;
            }
            for pid in all_pids() {
                if let Some((ppid, own, _, _)) = proc_stat(pid)
                    && ppid == pm
                {
                    ticks += own;
                }
            }
        }
        None => {
            for pid in all_pids() {
                if let Some((_, own, _, comm)) = proc_stat(pid)
                    && comm == "postgres"
                {
                    ticks += own;
                }
            }
        }
    }
    ticks as f64 / clk_tck()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

const FAMILIES: &[&str] = &[
    "Ashgrove",
    "Brambleton",
    "Cindervale",
    "Dunmarsh",
    "Elderwick",
    "Fernhollow",
    "Glimmerby",
    "Hollowmere",
    "Ivorycrest",
    "Juniperly",
    "Kestrelton",
    "Larkspurry",
    "Mistlewood",
    "Nettlefield",
    "Oakenshaw",
    "Pebbleton",
    "Quillbrook",
    "Rushmere",
    "Sorrelby",
    "Thistledown",
];

fn family_of(i: usize) -> String {
    // 500 synthetic family names, 20 patients each with 10,000 patients.
    format!(
        "{}{}",
        FAMILIES[i % FAMILIES.len()],
        (i / FAMILIES.len()) % 25
    )
}

struct World {
    url: String,
    admin_url: String,
    cluster: Option<LocalCluster>,
    postmaster: Option<u32>,
    pg_root: Option<PathBuf>,
}

fn database(root: &Path) -> World {
    if let Ok(admin) = std::env::var("CUSTODIAN_BENCH_DATABASE_URL") {
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{DB_NAME}"));
        return World {
            url: url.to_string(),
            admin_url: admin,
            cluster: None,
            postmaster: None,
            pg_root: None,
        };
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
    let pid = std::fs::read_to_string(pg_root.join("pgdata/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
    World {
        url: cluster.url(DB_NAME),
        admin_url: cluster.url("postgres"),
        cluster: Some(cluster),
        postmaster: pid,
        pg_root: Some(pg_root),
    }
}

fn scalar_i64(conn: &mut PgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct V {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        v: i64,
    }
    diesel::sql_query(sql)
        .get_result::<V>(conn)
        .map(|r| r.v)
        .unwrap()
}

fn main() {
    let a = args();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("target/bench-http");
    let run = root.join("run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(run.join("audit")).unwrap();
    let started = Instant::now();
    eprintln!("[bench] load average at start: {}", loadavg());

    // --- database -------------------------------------------------------------------
    let db = database(&root);
    let mut admin = PgConnection::establish(&db.admin_url).unwrap();
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS \"{DB_NAME}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{DB_NAME}\""))
        .execute(&mut admin)
        .unwrap();
    custodian::db::migrate(&db.url, 5).unwrap();

    // --- keys, certificate, JWKS -------------------------------------------------------
    let (cert_pem, key_pem) = custodian::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(run.join("cert.pem"), cert_pem).unwrap();
    custodian::dev::write_private(&run.join("key.pem"), key_pem.as_bytes()).unwrap();
    let (alg, signing_key) = signer(&a.alg, &manifest);
    let mut jwk = Jwk::from_encoding_key(&signing_key, alg).unwrap();
    jwk.common.key_id = Some("bench-1".into());
    let jwks_port = serve_jwks(json!({ "keys": [jwk] }).to_string());
    let issuer = format!("http://127.0.0.1:{jwks_port}");
    let port = free_port();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
[tls]
cert_file = "{run}/cert.pem"
key_file = "{run}/key.pem"
[database]
url = "{url}"
pool_size = {pool}
[crypto]
kek = "{kek}"
blind_index_key = "{blind}"
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
[log]
format = "json"
"#,
        run = run.display(),
        url = db.url,
        pool = a.pool_size,
        kek = key_b64(),
        blind = key_b64(),
        chain = key_b64(),
        sign = key_b64(),
    );
    let config_path = run.join("custodian.toml");
    custodian::dev::write_private(&config_path, config.as_bytes()).unwrap();

    // --- seed -----------------------------------------------------------------------------
    let table = custodian::config::load_table(Some(&config_path), Vec::new()).unwrap();
    let cfg = custodian::config::from_table(table).unwrap();
    let keyring = custodian::app::keys::load_keyring(&cfg.crypto, &db.url, 5).unwrap();
    let mut conn = PgConnection::establish(&db.url).unwrap();
    let seed_started = Instant::now();
    let facility = phi::insert_facility(&mut conn, "Synthetic General Hospital").unwrap();
    let ids: Vec<Uuid> = conn
        .transaction(|c| {
            (0..a.patients)
                .map(|i| {
                    let new = phi::NewPatient {
                        facility_id: facility,
                        mrn: format!("BENCH{i:07}"),
                        ssn: Some(format!("9{i:08}")),
                        family: family_of(i),
                        given: "Avery Quinn".into(),
                        birth_date: chrono::NaiveDate::from_ymd_opt(
                            1940 + (i % 70) as i32,
                            1 + (i % 12) as u32,
                            1 + (i % 28) as u32,
                        )
                        .unwrap(),
                        gender: if i % 2 == 0 { "female" } else { "male" }.into(),
                        telecom: Some(json!([{ "system": "phone", "value": "555-0100" }])),
                        address: Some(
                            json!([{ "line": ["1 Synthetic Way"], "city": "Testville" }]),
                        ),
                    };
                    phi::insert_patient(c, &keyring, &new).map(|p| p.id.as_uuid())
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    let mut clinician = |sub: &str| {
        let u = users::user_for(&mut conn, &issuer, sub, users::UserKind::Person).unwrap();
        users::grant_role(&mut conn, u.id, Role::Clinician, "benchmark", None).unwrap();
        users::set_facility(&mut conn, u.id, Some(facility)).unwrap();
        u.id
    };
    let doc = clinician("bench-clinician");
    let _outsider = clinician("bench-outsider");
    diesel::sql_query(
        "INSERT INTO care_team_members (patient_id, user_id) SELECT id, $1 FROM patients",
    )
    .bind::<diesel::sql_types::Uuid, _>(doc)
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query("VACUUM ANALYZE")
        .execute(&mut conn)
        .unwrap();
    eprintln!(
        "[bench] seeded {} patients, 2 clinicians in {:.1} s",
        ids.len(),
        seed_started.elapsed().as_secs_f64()
    );

    // --- tokens and the wrk script --------------------------------------------------------
    let token = |sub: &str| {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mut h = Header::new(alg);
        h.kid = Some("bench-1".into());
        h.typ = Some("at+jwt".into());
        let claims = json!({
            "iss": issuer, "aud": AUDIENCE, "sub": sub, "iat": now,
            "exp": now + a.duration as i64 + 3600, "client_id": "bench-app", "scope": SCOPES,
        });
        jsonwebtoken::encode(&h, &claims, &signing_key).unwrap()
    };
    let who = if a.scenario == "denied" {
        "bench-outsider"
    } else {
        "bench-clinician"
    };
    let script = wrk_script(&a.scenario, &token(who), &ids);
    let script_path = run.join("bench.lua");
    std::fs::write(&script_path, script).unwrap();

    // --- servers: `--instances` of them on one database, as behind a load balancer ----------
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    let ready_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ready_client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for i in 0..a.instances {
        let log = std::fs::File::create(run.join(format!("server-{i}.log"))).unwrap();
        let listen = if i == 0 { port } else { free_port() };
        let mut server = Command::new(server_binary())
            .arg("serve")
            .env("CUSTODIAN_CONFIG", &config_path)
            .env("CUSTODIAN_SERVER_LISTEN", format!("127.0.0.1:{listen}"))
            .env_remove("DATABASE_URL")
            // Not a setting: the configuration refuses unknown CUSTODIAN_* variables.
            .env_remove("CUSTODIAN_BENCH_SERVER_BIN")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let base = format!("https://127.0.0.1:{listen}");
        let log = run.join(format!("server-{i}.log"));
        wait_ready(&ready_rt, &ready_client, &base, &mut server, &log);
        servers.push(server);
        bases.push(base);
    }
    let pids: Vec<u32> = servers.iter().map(Child::id).collect();
    let base = bases[0].clone();

    if a.scenario == "latency" {
        let result = latency(&base, &token(who), &ids, &run);
        stop(&mut servers);
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
        let out_dir = manifest.join("target/bench");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join("results-latency.json");
        std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
        println!("results: {}", out.display());
        if let Some(label) = &a.record {
            record_row(&manifest, label, &result);
        }
        clean_up(db, &mut admin);
        return;
    }

    // Warm-up: connections, pool, JWKS fetch, caches.
    let _ = wrk_all(&a, &script_path, &bases, 3);
    // Let requests still in flight when the warm-up stopped commit their audit events.
    std::thread::sleep(Duration::from_secs(2));
    let mut conn = PgConnection::establish(&db.url).unwrap();
    let seq0 = scalar_i64(
        &mut conn,
        "SELECT coalesce(max(seq), 0)::bigint AS v FROM audit_events",
    );
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    // Statements per request: each statement a request runs outside a transaction is
    // one implicit transaction; the audit writer adds one per batch.
    let xacts = |conn: &mut PgConnection| {
        scalar_i64(
            conn,
            "SELECT (xact_commit + xact_rollback)::bigint AS v FROM pg_stat_database \
             WHERE datname = current_database()",
        )
    };
    let xact0 = xacts(&mut conn);
    let (cpu_s0, cpu_pg0) = (cpu(&pids), pg_cpu_secs(db.postmaster));
    let load_before = loadavg();
    eprintln!(
        "[bench] {} for {} s, {} connections, load average {}",
        a.scenario, a.duration, a.connections, load_before
    );
    let lag_sampler = detector_lag_sampler(db.url.clone());
    let (w, per_instance) = wrk_all(&a, &script_path, &bases, a.duration);
    let detector_lag = lag_sampler.finish();
    let (cpu_s1, cpu_pg1) = (cpu(&pids), pg_cpu_secs(db.postmaster));
    let load_after = loadavg();
    let rss_kib = pids.iter().map(|p| vm_hwm_kib(*p)).max().unwrap_or(0);

    // Stop the servers (SIGTERM drains), then verify the chain.
    stop(&mut servers);
    let events = audit_counts(&mut conn, seq0);
    // The stopped servers' backends flushed their statistics when they exited.
    std::thread::sleep(Duration::from_millis(500));
    let mut fresh = PgConnection::establish(&db.url).unwrap();
    let xact1 = xacts(&mut fresh);
    drop(fresh);
    let verify = Command::new(server_binary())
        .args(["audit", "verify"])
        .env("CUSTODIAN_CONFIG", &config_path)
        .env_remove("DATABASE_URL")
        .env_remove("CUSTODIAN_BENCH_SERVER_BIN")
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let verify_line = String::from_utf8_lossy(&verify.stdout).trim().to_string();

    // --- results ----------------------------------------------------------------------------
    let secs = w["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    let requests = w["requests"].as_i64().unwrap_or(0);
    let non2xx = w["status_errors"].as_i64().unwrap_or(0);
    let socket_errors = ["connect_errors", "read_errors", "write_errors", "timeouts"]
        .iter()
        .map(|k| w[*k].as_i64().unwrap_or(0))
        .sum::<i64>();
    let ok = requests - non2xx;
    let rps = requests as f64 / secs;
    let (expected, audited) = match a.scenario.as_str() {
        "denied" => (non2xx, events.deny),
        _ => (ok, events.permit),
    };
    let ceilings = if a.ceiling && matches!(a.scenario.as_str(), "read" | "denied") {
        let batch = events.mean_batch().max(1.0).round() as u32;
        let mut at = |sql| pgbench_ceiling(&a, &issuer, &mut conn, &db, &run, &ids, batch, sql);
        Some((at(CeilingSql::Today), at(CeilingSql::Minimal)))
    } else {
        None
    };
    let ceiling = ceilings.map(|c| c.0);
    let minimal = ceilings.map(|c| c.1);
    let fraction = ceiling.map(|c| rps / c);
    let ms = |k: &str| w[k].as_f64().unwrap_or(0.0) / 1e3;
    let result = json!({
        "scenario": a.scenario,
        "duration_s": secs,
        "connections": a.connections,
        "wrk_threads": a.threads,
        "patients": ids.len(),
        "pool_size": a.pool_size,
        "instances": a.instances,
        "requests_per_s_per_instance": per_instance,
        "requests": requests,
        "requests_per_s": rps,
        "latency_ms": { "p50": ms("p50_us"), "p90": ms("p90_us"), "p99": ms("p99_us"),
                        "max": ms("max_us"), "mean": ms("mean_us") },
        "ok_responses": ok,
        "non_2xx": non2xx,
        "socket_errors": socket_errors,
        "server_peak_rss_mib": rss_kib as f64 / 1024.0,
        "db_transactions_per_request": (xact1 - xact0) as f64 / (requests.max(1) as f64),
        "server_cpu_s": cpu_s1 - cpu_s0,
        "postgres_cpu_s": cpu_pg1 - cpu_pg0,
        "postgres_cpu_scope": if db.postmaster.is_some() { "own cluster" } else { "all postgres processes on the machine" },
        "audit": {
            "events": events.total, "permit": events.permit, "deny": events.deny,
            "expected_from_responses": expected, "matching_events": audited,
            "excess_events_in_flight_at_stop": audited - expected,
            "complete": audited >= expected && audited - expected <= a.connections as i64,
            "batches": events.batches, "mean_batch": events.mean_batch(),
            "verify_ok": verify.status.success(), "verify": verify_line,
        },
        "detector_lag": detector_lag,
        "pgbench_ceiling_tps": ceiling,
        "fraction_of_ceiling": fraction,
        "pgbench_minimal_ceiling_tps": minimal,
        "fraction_of_minimal_ceiling": minimal.map(|c| rps / c),
        "load_average": { "before": load_before, "after": load_after },
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "token_alg": a.alg,
        "note": if matches!(a.scenario.as_str(), "write" | "mixed") { "writes are Observation create for a random care-team patient" } else { "" },
    });
    print_table(&result);
    let out_dir = manifest.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("results-{}.json", a.scenario));
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("results: {}", out.display());
    if let Some(label) = &a.record {
        record_row(&manifest, label, &result);
    }

    // --- clean up ---------------------------------------------------------------------------
    drop(conn);
    clean_up(db, &mut admin);
    eprintln!("[bench] done in {:.0} s", started.elapsed().as_secs_f64());
}

/// The benchmark identity provider's signing key: RS256 (the usual provider default;
/// the test-only RSA key under tests/fixtures), ES256 or EdDSA (generated per run).
fn signer(alg: &str, manifest: &Path) -> (Algorithm, EncodingKey) {
    match alg {
        "RS256" => {
            let text =
                std::fs::read_to_string(manifest.join("tests/fixtures/test-only-rsa-key.pem"))
                    .unwrap();
            let pem = &text[text.find("-----BEGIN").unwrap()..];
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            )
        }
        "ES256" => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            (
                Algorithm::ES256,
                EncodingKey::from_ec_der(&kp.serialize_der()),
            )
        }
        "EdDSA" => {
            // PKCS#8 v1 wrapping of a random Ed25519 seed (RFC 8410).
            let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
            der.extend_from_slice(&rand::random::<[u8; 32]>());
            (Algorithm::EdDSA, EncodingKey::from_ed_der(&der))
        }
        other => panic!("--alg must be RS256, ES256 or EdDSA, not {other}"),
    }
}

/// Requests per protocol and kind in the latency scenario.
const LATENCY_REQUESTS: usize = 1_000;

/// One client on one kept-alive connection, requests one after another (what an
/// interactive client feels): curl, over HTTP/1.1 and over HTTP/2, reads and 20-row
/// search pages; p50/p99 of each, and how many took over 30 ms (the delayed-ACK stall).
fn latency(base: &str, token: &str, ids: &[Uuid], run: &Path) -> Value {
    let mut results = serde_json::Map::new();
    for (protocol, flag) in [("http1.1", "--http1.1"), ("http2", "--http2")] {
        for kind in ["read", "search"] {
            let mut config = format!(
                "header = \"Authorization: Bearer {token}\"\nheader = \"Accept: application/fhir+json\"\n"
            );
            // A few unmeasured requests first: connection, TLS, caches.
            let warm = 20;
            for i in 0..LATENCY_REQUESTS + warm {
                let path = match kind {
                    "read" => format!("/fhir/Patient/{}", ids[i % ids.len()]),
                    _ => format!(
                        "/fhir/Patient?family={}&_count=20",
                        family_of(i % 500.min(ids.len()))
                    ),
                };
                config.push_str(&format!("url = \"{base}{path}\"\noutput = \"/dev/null\"\n"));
            }
            let file = run.join(format!("latency-{protocol}-{kind}.curl"));
            std::fs::write(&file, config).unwrap();
            let out = Command::new("curl")
                .args(["--silent", "--insecure", flag, "--write-out"])
                .arg("%{http_code} %{time_total} %{http_version}\n")
                .arg("--config")
                .arg(&file)
                .output()
                .expect("curl (apt install curl)");
            let text = String::from_utf8_lossy(&out.stdout);
            let rows: Vec<(&str, f64, &str)> = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    Some((f.next()?, f.next()?.parse().ok()?, f.next()?))
                })
                .collect();
            assert_eq!(
                rows.len(),
                LATENCY_REQUESTS + warm,
                "curl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                rows.iter().all(|r| r.0 == "200"),
                "latency: a request failed"
            );
            let version = rows[0].2.to_string();
            let mut ms: Vec<f64> = rows[warm..].iter().map(|r| r.1 * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).saturating_sub(1)];
            let entry = json!({
                "requests": ms.len(), "http_version": version,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": ms[ms.len() - 1],
                "mean_ms": ms.iter().sum::<f64>() / ms.len() as f64,
                "over_30_ms": ms.iter().filter(|m| **m > 30.0).count(),
            });
            eprintln!("[bench] latency {protocol} {kind}: {entry}");
            results.insert(format!("{protocol}_{kind}"), entry);
        }
    }
    json!({
        "scenario": "latency",
        "latency": results,
        "load_average": loadavg(),
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

/// Stops the throwaway cluster (and removes it), or drops the bench database.
fn clean_up(db: World, admin: &mut PgConnection) {
    if let Some(c) = db.cluster {
        c.stop().unwrap();
        if let Some(r) = db.pg_root {
            let _ = std::fs::remove_dir_all(r);
        }
    } else {
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{DB_NAME}\" WITH (FORCE)"
        ))
        .execute(admin);
    }
}

/// SIGTERM to every server (they drain), then waits for them.
fn stop(servers: &mut [Child]) {
    for s in servers.iter() {
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(s.id() as i32, libc::SIGTERM);
        }
    }
    for s in servers.iter_mut() {
        let _ = s.wait();
    }
}

/// One `wrk` per instance at once, the connections split between them; the result
/// summed (requests, errors) or taken at the worst instance (latency percentiles), and
/// each instance's requests/s.
fn wrk_all(a: &Args, script: &Path, bases: &[String], secs: u64) -> (Value, Vec<f64>) {
    let n = bases.len() as u32;
    let children: Vec<Child> = bases
        .iter()
        .enumerate()
        .map(|(i, base)| {
            let connections = a.connections / n + u32::from((i as u32) < a.connections % n);
            Command::new("wrk")
                .arg(format!(
                    "-t{}",
                    a.threads.min(connections).div_ceil(n).max(1)
                ))
                .arg(format!("-c{connections}"))
                .arg(format!("-d{secs}s"))
                .args(["--timeout", "10s", "-s"])
                .arg(script)
                .arg(base)
                .stdout(Stdio::piped())
                .spawn()
                .expect(
                    "wrk not found: run `bash .ci/bench` (installs it) or `apt-get install -y wrk`",
                )
        })
        .collect();
    let results: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("BENCHJSON "))
                .unwrap_or_else(|| panic!("wrk gave no result: {text}"));
            serde_json::from_str(line).unwrap()
        })
        .collect();
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let per_instance = results
        .iter()
        .map(|r| num(r, "requests") / (num(r, "duration_us") / 1e6).max(1e-9))
        .collect();
    let mut total = results[0].clone();
    for k in [
        "requests",
        "bytes",
        "connect_errors",
        "read_errors",
        "write_errors",
        "status_errors",
        "timeouts",
    ] {
        total[k] = json!(results.iter().map(|r| num(r, k) as i64).sum::<i64>());
    }
    for k in ["duration_us", "p50_us", "p90_us", "p99_us", "max_us"] {
        total[k] = json!(results.iter().map(|r| num(r, k)).fold(0.0, f64::max));
    }
    let requests = num(&total, "requests").max(1.0);
    total["mean_us"] = json!(
        results
            .iter()
            .map(|r| num(r, "mean_us") * num(r, "requests"))
            .sum::<f64>()
            / requests
    );
    (total, per_instance)
}

fn wrk_script(scenario: &str, token: &str, ids: &[Uuid]) -> String {
    let mut s = String::from("local ids = {\n");
    for id in ids {
        s.push_str(&format!("\"{id}\",\n"));
    }
    s.push_str("}\nlocal families = {\n");
    for i in 0..500.min(ids.len()) {
        s.push_str(&format!("\"{}\",\n", family_of(i)));
    }
    s.push_str(&format!(
        r#"}}
local scenario = "{scenario}"
local get_headers = {{ ["Authorization"] = "Bearer {token}", ["Accept"] = "application/fhir+json" }}
local post_headers = {{ ["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/fhir+json" }}
local counter = 0
tid = 0
local threads = {{}}
local next_tid = 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919 + math.floor(os.clock() * 1e6))
  run_id = tostring(math.random(100000000, 999999999))
end
local function read()
  return wrk.format("GET", "/fhir/Patient/" .. ids[math.random(#ids)], get_headers)
end
local function search()
  return wrk.format("GET", "/fhir/Patient?family=" .. families[math.random(#families)] .. "&_count=20", get_headers)
end
local function create()
  counter = counter + 1
  local body = '{{"resourceType":"Observation","status":"final",' ..
    '"code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}}]}},' ..
    '"subject":{{"reference":"Patient/' .. ids[math.random(#ids)] .. '"}},' ..
    '"effectiveDateTime":"2026-11-20T08:30:00Z",' ..
    '"valueQuantity":{{"value":' .. (50 + counter % 50) .. ',"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}}}'
  return wrk.format("POST", "/fhir/Observation", post_headers, body)
end
function request()
  if scenario == "search" then return search() end
  if scenario == "write" then return create() end
  if scenario == "mixed" then
    if math.random(10) == 1 then return create() end
    return read()
  end
  return read()
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"#
    ));
    s
}

struct Events {
    total: i64,
    permit: i64,
    deny: i64,
    batches: i64,
}

impl Events {
    fn mean_batch(&self) -> f64 {
        self.total as f64 / self.batches.max(1) as f64
    }
}

fn audit_counts(conn: &mut PgConnection, after: i64) -> Events {
    let q = |cond: &str| {
        format!("SELECT count(*)::bigint AS v FROM audit_events WHERE seq > {after} {cond}")
    };
    Events {
        total: scalar_i64(conn, &q("")),
        permit: scalar_i64(conn, &q("AND outcome = 'permit'")),
        deny: scalar_i64(conn, &q("AND outcome = 'deny'")),
        // One writer transaction per batch: rows of a batch share their xmin.
        batches: scalar_i64(
            conn,
            &format!(
                "SELECT count(DISTINCT xmin::text)::bigint AS v FROM audit_events WHERE seq > {after}"
            ),
        ),
    }
}

/// The SQL one read runs (user + roles, patient facts with care-team check, the
/// view-shaped row, and 1/batch of an audit group commit of `batch` rows) as a pgbench
/// script against the same database; audit rows go to shadow tables with the same
/// shape and indexes so the real chain stays intact. Returns transactions (reads) per s.
/// Which SQL the ceiling runs per request.
#[derive(Clone, Copy, Debug)]
enum CeilingSql {
    /// What a read runs today: user ⋈ roles with the patient's facts (care team,
    /// confidentiality, break-glass grant) in one statement, then the view's row.
    Today,
    /// The least a read can run: one statement for the principal, the care-team check
    /// and the view's row together.
    Minimal,
}

#[allow(clippy::too_many_arguments)]
fn pgbench_ceiling(
    a: &Args,
    issuer: &str,
    conn: &mut PgConnection,
    db: &World,
    run: &Path,
    ids: &[Uuid],
    batch: u32,
    sql: CeilingSql,
) -> f64 {
    for stmt in [
        "DROP TABLE IF EXISTS bench_ids, bench_audit_events, bench_chain_head",
        "CREATE TABLE bench_ids (n int PRIMARY KEY, id uuid NOT NULL)",
        "CREATE TABLE bench_audit_events (LIKE audit_events INCLUDING ALL)",
        "CREATE TABLE bench_chain_head (LIKE audit_chain_head INCLUDING ALL)",
        "INSERT INTO bench_chain_head SELECT * FROM audit_chain_head",
    ] {
        diesel::sql_query(stmt).execute(conn).unwrap();
    }
    for (chunk_no, chunk) in ids.chunks(1000).enumerate() {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| format!("({}, '{id}')", chunk_no * 1000 + i + 1))
            .collect();
        diesel::sql_query(format!("INSERT INTO bench_ids VALUES {}", values.join(",")))
            .execute(conn)
            .unwrap();
    }
    diesel::sql_query("ANALYZE").execute(conn).unwrap();
    let sub = if a.scenario == "denied" {
        "bench-outsider"
    } else {
        "bench-clinician"
    };
    let row_select = if a.scenario == "denied" {
        ""
    } else {
        "SELECT id, version, key_version, facility_id, updated_at, gender, mrn_sealed, NULL::bytea AS ssn_sealed, family_sealed, given_sealed, birth_date_sealed, telecom_sealed, address_sealed FROM patients WHERE id = :pid AND deleted_at IS NULL;\n"
    };
    let per_request = match sql {
        CeilingSql::Today => format!(
            r#"SELECT u.id, u.kind, u.disabled_at IS NOT NULL AS disabled, u.facility_id, u.patient_id, r.role, u.family_index, u.family_index_source, p.facility_id AS pfac, (p.id IS NOT NULL AND EXISTS (SELECT 1 FROM care_team_members c WHERE c.patient_id = p.id AND c.user_id = u.id)) AS member, p.confidentiality, (SELECT g.id FROM break_glass_grants g WHERE g.user_id = u.id AND g.patient_id = p.id AND g.status = 'active' AND g.expires_at > now() ORDER BY g.expires_at DESC LIMIT 1) AS grant_id, p.id AS pid FROM users u LEFT JOIN role_assignments r ON r.user_id = u.id LEFT JOIN patients p ON p.id = (SELECT id FROM bench_ids WHERE n = :n) AND p.deleted_at IS NULL WHERE u.issuer = '{issuer}' AND u.subject = '{sub}' LIMIT 1 \gset
{row_select}"#
        ),
        CeilingSql::Minimal => format!(
            r#"SELECT u.id, u.disabled_at, u.facility_id, u.patient_id, (SELECT array_agg(r.role) FROM role_assignments r WHERE r.user_id = u.id) AS roles, p.facility_id AS pfac, EXISTS (SELECT 1 FROM care_team_members c WHERE c.patient_id = p.id AND c.user_id = u.id) AS member, p.id, p.version, p.key_version, p.updated_at, p.gender, p.mrn_sealed, p.family_sealed, p.given_sealed, p.birth_date_sealed, p.telecom_sealed, p.address_sealed FROM users u LEFT JOIN patients p ON p.id = (SELECT id FROM bench_ids WHERE n = :n) AND p.deleted_at IS NULL WHERE u.issuer = '{issuer}' AND u.subject = '{sub}';
"#
        ),
    };
    let script = format!(
        r#"\set n random(1, {n})
\set b random(1, {batch})
{per_request}\if :b = 1
BEGIN;
SELECT seq, hash FROM bench_chain_head FOR UPDATE;
INSERT INTO bench_audit_events (seq, event_id, occurred_at, actor_user_id, actor_client_id, actor_roles, auth_method, client_app, action, resource_type, resource_id, patient_ids, outcome, deny_reason, purpose_of_use, break_glass_grant_id, source_ip, user_agent, request_id, hash)
  SELECT h.seq + g, gen_random_uuid(), now(), gen_random_uuid(), NULL, ARRAY['clinician'], 'bearer', 'bench-app', 'read', 'Patient', gen_random_uuid(), ARRAY[gen_random_uuid()], 'permit', NULL, 'TREAT', NULL, '127.0.0.1', 'wrk', 'r-0123456789abcdef', sha256(g::text::bytea)
  FROM bench_chain_head h, generate_series(1, {batch}) g;
UPDATE bench_chain_head SET seq = seq + {batch}, hash = sha256(hash);
COMMIT;
\endif
"#,
        n = ids.len(),
    );
    let path = run.join(format!("ceiling-{sql:?}.sql").to_lowercase());
    std::fs::write(&path, script).unwrap();
    let load = loadavg();
    eprintln!(
        "[bench] pgbench ceiling, {sql:?} SQL (audit batch {batch}) for {} s, load average {load}",
        a.duration
    );
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c"])
        .arg(a.connections.to_string())
        .args(["-j", "2", "-T"])
        .arg(a.duration.to_string())
        .arg("-f")
        .arg(&path)
        .arg(&db.url)
        .output()
        .expect("pgbench not found (it ships with the PostgreSQL server packages)");
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "pgbench failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let failed = text
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .unwrap_or("");
    eprintln!("[bench] pgbench: {tps:.0} tps {failed}");
    tps
}

/// Writes one row (label, scenario) into the generated results table of
/// docs/benchmarks.md, replacing an earlier row with the same label and scenario.
fn record_row(manifest: &Path, label: &str, r: &Value) {
    let num = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    };
    let scenario = match r["instances"].as_u64() {
        Some(n) if n > 1 => format!("{} ×{n} instances", r["scenario"].as_str().unwrap_or("?")),
        _ => r["scenario"].as_str().unwrap_or("?").to_string(),
    };
    // The commit of the binary that served: another worktree's when it came from there.
    let served = server_binary();
    let tree = served
        .parent()
        .filter(|_| std::env::var_os("CUSTODIAN_BENCH_SERVER_BIN").is_some())
        .unwrap_or(manifest);
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(tree)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(tree)
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let commit = if dirty { format!("{commit}+") } else { commit };
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let row = if scenario == "latency" {
        let l = &r["latency"];
        let pair = |k: &str| format!("{}/{}", num(&l[k]["p50_ms"], 1), num(&l[k]["p99_ms"], 1));
        let stalls: i64 = [
            "http1.1_read",
            "http1.1_search",
            "http2_read",
            "http2_search",
        ]
        .iter()
        .map(|k| l[*k]["over_30_ms"].as_i64().unwrap_or(0))
        .sum();
        format!(
            "| {label} | latency | {commit} | {date} | {} | — | HTTP/1.1 read {}, search {}; HTTP/2 read {}, search {}; {stalls} of 4,000 over 30 ms | — | — | — |",
            r["load_average"].as_str().unwrap_or("?"),
            pair("http1.1_read"),
            pair("http1.1_search"),
            pair("http2_read"),
            pair("http2_search"),
        )
    } else {
        let requests = r["requests"].as_f64().unwrap_or(0.0).max(1.0);
        let per = |k: &str| num(&json!(r[k].as_f64().map(|s| s * 1e3 / requests)), 3);
        let au = &r["audit"];
        format!(
            "| {label} | {scenario} | {commit} | {date} | {} → {} | {} | {} / {} | {} / {} | {} / {} | {} / {}, verify {} |",
            r["load_average"]["before"].as_str().unwrap_or("?"),
            r["load_average"]["after"].as_str().unwrap_or("?"),
            num(&r["requests_per_s"], 0),
            num(&r["latency_ms"]["p50"], 1),
            num(&r["latency_ms"]["p99"], 1),
            per("server_cpu_s"),
            per("postgres_cpu_s"),
            num(&r["fraction_of_ceiling"], 2),
            num(&r["fraction_of_minimal_ceiling"], 2),
            num(&au["matching_events"], 0),
            num(&au["expected_from_responses"], 0),
            if au["verify_ok"].as_bool() == Some(true) {
                "OK"
            } else {
                "FAILED"
            },
        )
    };
    let path = manifest.join("docs/benchmarks.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        "<!-- bench-results:begin -->\n",
        "<!-- bench-results:end -->",
    );
    let start = text
        .find(begin)
        .expect("docs/benchmarks.md: no bench-results:begin")
        + begin.len();
    let stop = text
        .find(end)
        .expect("docs/benchmarks.md: no bench-results:end");
    let key = format!("| {label} | {scenario} |");
    let mut rows: Vec<&str> = text[start..stop]
        .lines()
        .filter(|l| !l.starts_with(&key))
        .collect();
    rows.push(&row);
    let mut out = String::from(&text[..start]);
    for l in rows {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&text[stop..]);
    std::fs::write(&path, out).unwrap();
    println!("recorded in docs/benchmarks.md: {label} / {scenario}");
}

fn print_table(r: &Value) {
    let f = |v: &Value| match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        }
        Value::Null => "n/a".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let l = &r["latency_ms"];
    let au = &r["audit"];
    let rows = [
        ("scenario", f(&r["scenario"])),
        ("token algorithm", f(&r["token_alg"])),
        ("requests/s", f(&r["requests_per_s"])),
        ("requests", f(&r["requests"])),
        (
            "latency p50/p90/p99/max ms",
            format!(
                "{} / {} / {} / {}",
                f(&l["p50"]),
                f(&l["p90"]),
                f(&l["p99"]),
                f(&l["max"])
            ),
        ),
        ("non-2xx", f(&r["non_2xx"])),
        ("socket errors", f(&r["socket_errors"])),
        ("server peak RSS MiB", f(&r["server_peak_rss_mib"])),
        ("server CPU s", f(&r["server_cpu_s"])),
        ("postgres CPU s", f(&r["postgres_cpu_s"])),
        (
            "database transactions per request",
            f(&r["db_transactions_per_request"]),
        ),
        (
            "audit events (matching/expected)",
            format!(
                "{} / {} (+{} in flight at stop)",
                f(&au["matching_events"]),
                f(&au["expected_from_responses"]),
                f(&au["excess_events_in_flight_at_stop"])
            ),
        ),
        ("audit mean batch", f(&au["mean_batch"])),
        ("audit verify", f(&au["verify"])),
        (
            "detector lag max events / s (samples)",
            format!(
                "{} / {} ({})",
                f(&r["detector_lag"]["max_events"]),
                f(&r["detector_lag"]["max_secs"]),
                f(&r["detector_lag"]["samples"])
            ),
        ),
        ("pgbench ceiling tps", f(&r["pgbench_ceiling_tps"])),
        ("fraction of ceiling", f(&r["fraction_of_ceiling"])),
        (
            "pgbench minimal-SQL ceiling tps",
            f(&r["pgbench_minimal_ceiling_tps"]),
        ),
        (
            "fraction of minimal ceiling",
            f(&r["fraction_of_minimal_ceiling"]),
        ),
        (
            "load average before/after",
            format!(
                "{} / {}",
                f(&r["load_average"]["before"]),
                f(&r["load_average"]["after"])
            ),
        ),
    ];
    println!("| metric | value |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

/// Samples the detectors' lag once a second while the load runs: the audit chain head and
/// the detector cursor, and the times of the events they point at. Lag in seconds is the
/// head event's time minus the cursor event's (0 when caught up), so it measures how far
/// behind the trail the detectors are, not how long a poll takes to come round.
struct LagSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Value>,
}

impl LagSampler {
    fn finish(self) -> Value {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(Value::Null)
    }
}

fn detector_lag_sampler(url: String) -> LagSampler {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        head: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        cursor: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        secs: Option<f64>,
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        let (mut samples, mut max_events, mut max_secs, mut sum_secs) = (0u64, 0i64, 0f64, 0f64);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let row = diesel::sql_query(
                "SELECT h.seq AS head, c.seq AS cursor, \
                   CASE WHEN c.seq >= h.seq THEN 0 ELSE extract(epoch FROM \
                     (SELECT occurred_at FROM audit_events WHERE seq = h.seq) - \
                     coalesce((SELECT occurred_at FROM audit_events WHERE seq = c.seq), \
                              (SELECT occurred_at FROM audit_events ORDER BY seq LIMIT 1)))::float8 END AS secs \
                 FROM audit_chain_head h, detector_cursor c",
            )
            .get_result::<Row>(&mut conn);
            if let Ok(r) = row {
                let secs = r.secs.unwrap_or(0.0).max(0.0);
                samples += 1;
                max_events = max_events.max(r.head - r.cursor);
                max_secs = max_secs.max(secs);
                sum_secs += secs;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        json!({
            "samples": samples,
            "max_events": max_events,
            "max_secs": max_secs,
            "mean_secs": if samples > 0 { sum_secs / samples as f64 } else { 0.0 },
        })
    });
    LagSampler { stop, handle }
}
