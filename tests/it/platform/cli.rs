//! The command line: configuration errors are one clear line naming the setting.

use crate::common::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, TestDb, test_cert};
use std::process::{Command, Output};

fn custodian(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custodian"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    lines[0].to_string()
}

fn base_env() -> Vec<(&'static str, String)> {
    let cert = test_cert();
    vec![
        ("CUSTODIAN_TLS_CERT_FILE", cert.cert.display().to_string()),
        ("CUSTODIAN_TLS_KEY_FILE", cert.key.display().to_string()),
        ("CUSTODIAN_SERVER_LISTEN", "127.0.0.1:0".to_string()),
        (
            "DATABASE_URL",
            "postgres://u:pw@127.0.0.1:1/none".to_string(),
        ),
        ("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY.to_string()),
        (
            "CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY",
            TEST_SIGNING_KEY.to_string(),
        ),
    ]
}

fn run_serve(env: &[(&'static str, String)], config_file: Option<&str>) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match config_file {
        Some(f) => custodian(&["--config", f, "serve"], &env),
        None => custodian(&["serve"], &env),
    }
}

#[test]
fn unknown_key_in_the_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custodian.toml");
    std::fs::write(&file, "[server]\nlissten = \"0.0.0.0:1\"\n").unwrap();
    let line = one_error_line(&run_serve(&base_env(), Some(file.to_str().unwrap())));
    assert!(line.contains("server.lissten"), "{line}");
    assert!(line.contains("not a known setting"), "{line}");
}

#[test]
fn missing_certificate_file_is_named() {
    let mut env = base_env();
    env[0].1 = "/nonexistent/cert.pem".into();
    let line = one_error_line(&run_serve(&env, None));
    assert!(line.contains("tls.cert_file"), "{line}");
}

#[test]
fn malformed_database_url_is_named_and_not_echoed() {
    let mut env = base_env();
    env[3].1 = "postgres//secret-password@@".into();
    let line = one_error_line(&run_serve(&env, None));
    assert!(line.contains("database.url"), "{line}");
    assert!(!line.contains("secret-password"), "{line}");
}

#[test]
fn missing_database_url_is_named() {
    let env: Vec<_> = base_env()
        .into_iter()
        .filter(|(k, _)| *k != "DATABASE_URL")
        .collect();
    let line = one_error_line(&run_serve(&env, None));
    assert!(line.contains("database.url"), "{line}");
}

#[test]
fn unreachable_database_is_a_clear_error() {
    let line = one_error_line(&run_serve(&base_env(), None));
    assert!(line.contains("database.url"), "{line}");
    assert!(!line.contains("pw@"), "{line}");
}

#[test]
fn migrate_command_brings_a_database_up_to_date() {
    let db = TestDb::create();
    let out = custodian(&["migrate"], &[("DATABASE_URL", &db.url)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

/// `custodian dev` from nothing: private cluster, certificate, HTTPS; a second instance is
/// refused; Ctrl-C stops the server and the cluster it started.
#[tokio::test]
async fn dev_mode_serves_refuses_a_second_instance_and_stops_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The cluster runs as the postgres user when we are root: it must reach the folder.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev_dir = dir.path().join("dev");
    let spawn_dir = dev_dir.clone();
    let spawn = move || {
        Command::new(env!("CARGO_BIN_EXE_custodian"))
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTODIAN_DEV_DIR", &spawn_dir)
            .env("CUSTODIAN_SERVER_LISTEN", "127.0.0.1:0")
            .env("CUSTODIAN_SERVER_HTTP_REDIRECT_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    let stdout = first.stdout.take().unwrap();
    let port = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("HTTPS:") {
                let port = rest
                    .trim()
                    .trim_start_matches("https://localhost:")
                    .trim_end_matches('/');
                let port = port.parse::<u16>().unwrap();
                // Keep draining stdout so the server never writes into a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return port;
            }
        }
        panic!("dev never printed its URL");
    })
    .await
    .unwrap();

    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let res = insecure
        .get(format!("https://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(dev_dir.join("database_url").is_file());

    let second = tokio::task::spawn_blocking(move || spawn_second(spawn))
        .await
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    let pid = first.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "dev exits cleanly on SIGINT");
    assert!(
        !dev_dir.join("postgres/pgdata/postmaster.pid").exists(),
        "the private cluster was stopped"
    );
}

fn spawn_second(spawn: impl Fn() -> std::process::Child) -> Output {
    spawn().wait_with_output().unwrap()
}

/// The text between `<!-- {marker}:begin -->` and `<!-- {marker}:end -->` in a file of the
/// repository (the generated tables in `docs/`).
fn generated_section(path: &str, marker: &str) -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let begin = format!("<!-- {marker}:begin -->\n");
    let end_marker = format!("<!-- {marker}:end -->");
    let start = text
        .find(&begin)
        .unwrap_or_else(|| panic!("{path} has no `{}` line", begin.trim_end()))
        + begin.len();
    let end = text
        .find(&end_marker)
        .unwrap_or_else(|| panic!("{path} has no `{end_marker}` line"));
    text[start..end].to_string()
}

#[test]
fn docs_configuration_table_is_current() {
    assert_eq!(
        generated_section("docs/configuration.md", "settings"),
        custodian::config::markdown_table(),
        "docs/configuration.md settings table is stale: replace it with the output of `custodian settings`"
    );
}

#[test]
fn docs_policy_table_is_current() {
    assert_eq!(
        generated_section("docs/api-fhir.md", "policy"),
        custodian::policy::matrix::markdown_table(),
        "docs/api-fhir.md policy table is stale: replace it with the output of `custodian policy`"
    );
}
