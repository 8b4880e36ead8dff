//! PostgreSQL: readiness, outages, pool exhaustion, migrations under a lock.

use crate::support::proxy::{DbProxy, target_of};
use crate::support::{TestApp, TestDb, admin_url, test_routes};
use diesel::prelude::*;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

#[tokio::test]
async fn ready_when_the_database_answers_and_migrations_are_current() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn database_outage_gives_503_and_recovery_follows() {
    let db = TestDb::create();
    let proxy = DbProxy::start(target_of(&db.url)).await;
    let app = TestApp::builder()
        .set("database.url", proxy.url_via(&db.url))
        .extra_routes(test_routes::add)
        .database(db)
        .spawn()
        .await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/fhir/test/db").await.status(), StatusCode::OK);

    proxy.cut();
    let started = Instant::now();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));
    let route = app.get("/fhir/test/db").await;
    assert_eq!(route.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = route.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "transient");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no hang beyond the timeouts"
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..40 {
        if app.get("/readyz").await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "readiness returns when the database does");
    assert_eq!(app.get("/fhir/test/db").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn exhausted_pool_gives_503_within_the_acquire_timeout() {
    let app = TestApp::builder()
        .set("database.pool_size", 1)
        .set("database.acquire_timeout_ms", 300)
        .extra_routes(test_routes::add)
        .spawn()
        .await;
    let holder = app.client.get(app.url("/api/test/hold")).send();
    let holder = tokio::spawn(holder);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let res = app.get("/fhir/test/db").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    // An empty database, not the migrated template.
    let name = format!(
        "custodian_test_{}_mig{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut admin = PgConnection::establish(admin_url()).unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .unwrap();
    let mut url = url::Url::parse(admin_url()).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();

    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || custodian::db::migrate(&url, 5))
        })
        .collect();
    let applied: Vec<Vec<String>> = runs
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let total: usize = applied.iter().map(Vec::len).sum();
    let expected = applied.iter().map(Vec::len).max().unwrap();
    assert!(expected > 0);
    assert_eq!(
        total, expected,
        "exactly one instance applied the migrations"
    );

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(&url).unwrap();
    let c: Count = diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(c.n as usize, expected);
    drop(conn);
    diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .unwrap();
}

/// The `custodian dev` cluster trusts every connection, so its socket must be its owner's
/// alone (issue 18, finding 11): 0700 on the socket and on its folder, and another local
/// user cannot connect.
#[test]
fn dev_cluster_socket_is_for_its_owner_only() {
    use custodian::dev::pgcluster::{LocalCluster, running_as_root};
    use std::os::unix::fs::PermissionsExt;
    // Under the target folder: reachable by the `postgres` user when we are root.
    let root = tempfile::Builder::new()
        .prefix("socket-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cluster = LocalCluster::new(root.path(), None, false).unwrap();
    cluster.init_if_needed().unwrap();
    cluster.start().unwrap();
    let stop = scopeguard(|| {
        let _ = cluster.stop();
    });

    let socket = std::fs::metadata(cluster.socket_path()).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o700, "socket mode");
    let folder = std::fs::metadata(cluster.socket_path().parent().unwrap()).unwrap();
    assert_eq!(
        folder.permissions().mode() & 0o777,
        0o700,
        "socket folder mode"
    );
    // Its owner connects.
    let mut conn = diesel::PgConnection::establish(&cluster.url("postgres")).unwrap();
    diesel::sql_query("SELECT 1").execute(&mut conn).unwrap();
    if running_as_root() {
        // Another local user does not (`nobody` with psql, as any local account would).
        let dir = cluster
            .socket_path()
            .parent()
            .unwrap()
            .display()
            .to_string();
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "psql", "-h", &dir, "-p", "5432"])
            .args(["-U", "postgres", "-d", "postgres", "-w", "-c", "SELECT 1"])
            .output()
            .expect("runuser and psql (postgresql-client) are installed");
        assert!(
            !out.status.success(),
            "another user connected to the dev cluster: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{err}");
    }
    drop(stop);
}

/// Runs `f` when dropped (also when the test fails half-way).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
