//! The command line: configuration errors are one clear line naming the setting.

use crate::support::cli::custodian;
use crate::support::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, TestDb, test_cert};
use std::process::{Command, Output};

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

/// `custodian dev` serves from a fresh folder — a mode-0700 temporary folder, which the
/// `postgres` user cannot traverse when we are root — prints commands that run as
/// printed, lets other commands find its configuration, refuses a second instance on the
/// same folder, and Ctrl-C stops the server and the cluster it started.
#[tokio::test]
async fn dev_mode_serves_from_any_folder_prints_runnable_commands_and_stops_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Like `mktemp -d` or root's home folder: the postgres user cannot traverse it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dev_dir = dir.path().join("dev");
    let spawn_dir = dev_dir.clone();
    // A known port (not 0): dev serves its own JWKS at the port it listens on.
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let spawn = move || {
        Command::new(env!("CARGO_BIN_EXE_custodian"))
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTODIAN_DEV_DIR", &spawn_dir)
            .env("CUSTODIAN_SERVER_LISTEN", &listen)
            .env("CUSTODIAN_SERVER_HTTP_REDIRECT_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    let stdout = first.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        while let Some(line) = lines.next() {
            let line = line.unwrap();
            let done = line.starts_with("Press Ctrl-C");
            printed.push(line);
            if done {
                // Keep draining stdout so the server never writes into a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return printed;
            }
        }
        panic!("dev never said it was ready: {printed:?}");
    })
    .await
    .unwrap();
    let find = |prefix: &str| {
        printed
            .iter()
            .map(|l| l.trim())
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in {printed:?}"))
            .trim()
            .to_string()
    };
    let port: u16 = find("HTTPS:")
        .trim_start_matches("https://localhost:")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let moved = printed
        .iter()
        .find_map(|l| l.split("so the private cluster lives in ").nth(1))
        .map(|p| std::path::PathBuf::from(p.trim()));
    if custodian::dev::pgcluster::running_as_root() {
        assert!(
            moved.is_some(),
            "as root, a 0700 folder needs the cluster elsewhere: {printed:?}"
        );
    }

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

    // Every printed command runs as printed (no `custodian` on PATH, no flags), and finds
    // this instance's configuration.
    let sh = |script: &str| {
        let out = Command::new("sh")
            .args(["-c", script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CUSTODIAN_DEV_DIR", &dev_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let verify_line = printed
        .iter()
        .map(|l| l.trim())
        .find(|l| l.ends_with(" audit verify"))
        .expect("an audit verify line")
        .to_string();
    let verified = sh(&verify_line);
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("OK"));
    assert!(
        String::from_utf8_lossy(&verified.stderr).contains("using the development configuration")
    );
    let exe = verify_line.trim_end_matches(" audit verify");
    sh(&format!("{exe} keys status"));
    let token_line = find("Admin API:");
    let token = sh(&format!("{token_line}; printf %s \"$TOKEN\""));
    let token = String::from_utf8(token.stdout).unwrap();
    let res = insecure
        .get(format!("https://127.0.0.1:{port}/api/admin/users"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

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
    let cluster = moved.unwrap_or_else(|| dir.path().join("dev/postgres"));
    assert!(
        !cluster.join("pgdata/postmaster.pid").exists(),
        "the private cluster was stopped"
    );
    if cluster.starts_with("/var/tmp") {
        std::fs::remove_dir_all(&cluster).unwrap();
    }
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

#[test]
fn docs_smart_context_table_is_current() {
    assert_eq!(
        generated_section("docs/api-fhir.md", "smart-context"),
        custodian::policy::matrix::smart_context_table(),
        "docs/api-fhir.md SMART context table is stale: replace it with the output of `custodian policy`"
    );
}

#[test]
fn docs_admin_rules_table_is_current() {
    assert_eq!(
        generated_section("docs/api-admin.md", "policy-admin"),
        custodian::policy::admin::markdown_table(),
        "docs/api-admin.md administration rules are stale: replace them with the second table `custodian policy` prints"
    );
}

#[test]
fn docs_confidentiality_table_is_current() {
    assert_eq!(
        generated_section("docs/break-glass.md", "confidentiality"),
        custodian::policy::confidentiality::markdown_table(),
        "docs/break-glass.md confidentiality table is stale: replace it with the confidentiality table `custodian policy` prints"
    );
}

#[test]
fn docs_export_policy_table_is_current() {
    assert_eq!(
        generated_section("docs/export.md", "policy-export"),
        custodian::policy::export::markdown_table(),
        "docs/export.md export policy is stale: replace it with the export table `custodian policy` prints"
    );
}

#[test]
fn docs_reidentify_policy_table_is_current() {
    assert_eq!(
        generated_section("docs/export.md", "policy-reidentify"),
        custodian::policy::reidentify::markdown_table(),
        "docs/export.md re-identification rule is stale: replace it with the last table `custodian policy` prints"
    );
}
