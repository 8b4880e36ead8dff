//! `custodian dev`: one command from a fresh clone to a serving HTTPS endpoint — a
//! private PostgreSQL cluster (unless DATABASE_URL is set), migrations, a self-signed
//! certificate, and the service on https://localhost:8443.

use crate::app::{Application, Options};
use crate::config;
use crate::dev::pgcluster::{LocalCluster, reachable_root};
use crate::dev::{dev_dir, write_private};
use crate::{telemetry, tls};
use anyhow::{Context, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Prints a line for the person running `dev`; a closed stdout is not worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEV_DATABASE: &str = "custodian";

/// Holds the dev lock for as long as it lives.
fn take_lock(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("dev.lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `custodian dev` is already running with {} (stop it first, or set CUSTODIAN_DEV_DIR)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("cannot lock the dev folder"),
    }
}

fn ensure_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let tls_dir = dir.join("tls");
    let (cert, key) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
    if !cert.is_file() || !key.is_file() {
        std::fs::create_dir_all(&tls_dir)?;
        let (cert_pem, key_pem) = tls::self_signed(&["localhost", "127.0.0.1"])?;
        std::fs::write(&cert, cert_pem)?;
        write_private(&key, key_pem.as_bytes())?;
        say!(
            "created a self-signed certificate for localhost in {}",
            tls_dir.display()
        );
    }
    Ok((cert, key))
}

/// Development keys for encryption at rest, created on first start in `keys/` (files
/// 0600, folder 0700) and reused afterwards. Environment or config file values win.
fn ensure_dev_keys(dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir)?;
    std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o700))?;
    let mut out = Vec::new();
    for (setting, file) in [
        ("crypto.kek", "kek"),
        ("crypto.blind_index_key", "blind_index_key"),
    ] {
        let path = keys_dir.join(file);
        if !path.is_file() {
            let key = crate::crypto::keyring::generate_key();
            let b64 = zeroize::Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(key.as_ref()),
            );
            write_private(&path, format!("{}\n", b64.as_str()).as_bytes())?;
            println!(
                "created a development key for {setting} in {}",
                path.display()
            );
        }
        let value = std::fs::read_to_string(&path)
            .with_context(|| format!("{setting}: cannot read {}", path.display()))?;
        out.push((setting, value.trim().to_string()));
    }
    Ok(out)
}

/// Audit keys for development, generated once (owner-readable files under the dev
/// folder). Production supplies its own through configuration.
fn ensure_audit_keys(dir: &Path) -> anyhow::Result<(String, String)> {
    use base64::Engine;
    use rand::RngCore;
    let keys = dir.join("audit-keys");
    std::fs::create_dir_all(&keys)?;
    let read_or_create = |name: &str| -> anyhow::Result<String> {
        let path = keys.join(name);
        if let Ok(existing) = std::fs::read_to_string(&path) {
            return Ok(existing.trim().to_string());
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes.as_ref());
        write_private(&path, encoded.as_bytes())?;
        Ok(encoded)
    };
    let chain = read_or_create("chain_key")?;
    let signing = read_or_create("checkpoint_signing_key")?;
    Ok((chain, signing))
}

fn database_configured() -> bool {
    [
        "CUSTODIAN_DATABASE_URL",
        "CUSTODIAN_DATABASE_URL_FILE",
        "DATABASE_URL",
        "DATABASE_URL_FILE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

pub async fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = dev_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = take_lock(&dir)?;

    let mut defaults = toml::Table::new();
    let mut set = |key: &str, value: toml::Value| config::insert_dotted(&mut defaults, key, value);
    let (cert, key) = ensure_certificate(&dir)?;
    set("server.listen", "127.0.0.1:8443".into());
    set("server.http_redirect_listen", "127.0.0.1:8080".into());
    set("server.public_url", "https://localhost:8443".into());
    set("tls.cert_file", cert.display().to_string().into());
    set("tls.key_file", key.display().to_string().into());
    set("log.format", "text".into());
    for (setting, value) in ensure_dev_keys(&dir)? {
        set(setting, value.into());
    }
    // Development tokens: our own signing key, served as the JWKS by this server.
    let token_key = crate::dev::token::DevSigningKey::ensure(&dir.join("keys"))?;
    set("auth.issuer", crate::dev::token::DEV_ISSUER.into());
    set("auth.audience", crate::dev::token::DEV_AUDIENCE.into());
    set(
        "auth.jwks_url",
        format!("https://localhost:8443{}", crate::dev::token::DEV_JWKS_PATH).into(),
    );
    // The console signs in at the development sign-in provider this server runs (issuer
    // = the dev token issuer, so a demo person is one user for the API and the console).
    let keys_dir = dir.join("keys");
    set("console.issuer", crate::dev::token::DEV_ISSUER.into());
    set("console.client_id", crate::dev::idp::CLIENT_ID.into());
    set(
        "console.client_secret",
        crate::dev::idp::ensure_client_secret(&keys_dir)?.into(),
    );
    set(
        "console.redirect_url",
        "https://localhost:8443/console/callback".into(),
    );
    let idp_key = crate::dev::idp::IdpKey::ensure(&keys_dir)?;
    let totp_key = crate::dev::totp::DevTotpKey::ensure(&keys_dir)?;
    let dev_jwks = crate::dev::token::DevJwks {
        document: std::sync::Arc::new(token_key.jwks()),
        trust_root_pem: Some(
            std::fs::read_to_string(&cert)
                .with_context(|| format!("cannot read {}", cert.display()))?,
        ),
    };
    let (chain_key, signing_key) = ensure_audit_keys(&dir)?;
    set("audit.chain_key", chain_key.into());
    set("audit.checkpoint_signing_key", signing_key.into());
    set(
        "audit.checkpoint_dir",
        dir.join("audit").display().to_string().into(),
    );

    let cluster = if database_configured() {
        say!("using the database from the environment");
        None
    } else {
        let (root, moved) = reachable_root(&dir.join("postgres"))?;
        if moved {
            say!(
                "the postgres system user cannot reach {} (a folder it may not traverse), so the private cluster lives in {}",
                dir.display(),
                root.display()
            );
        }
        let cluster = LocalCluster::new(&root, None, true)?;
        if cluster.init_if_needed()? {
            say!("created a private PostgreSQL cluster in {}", root.display());
        }
        cluster.start()?;
        cluster.ensure_database(DEV_DATABASE)?;
        let url = cluster.url(DEV_DATABASE);
        std::fs::write(dir.join("database_url"), format!("{url}\n"))?;
        set("database.url", url.into());
        Some(cluster)
    };

    let dev = DevParts {
        jwks: dev_jwks,
        idp_key,
        totp_key,
    };
    let result = serve(config_path, defaults, dev, started).await;
    if let Some(cluster) = cluster {
        say!("stopping the private PostgreSQL cluster");
        cluster.stop()?;
    }
    result
}

/// What `custodian dev` serves besides the product: the dev token JWKS, the dev sign-in
/// provider's key and the development TOTP key.
struct DevParts {
    jwks: crate::dev::token::DevJwks,
    idp_key: crate::dev::idp::IdpKey,
    totp_key: crate::dev::totp::DevTotpKey,
}

/// The dev JWKS and sign-in provider are served by this server: when `server.listen` was
/// moved off 8443, every URL still at its dev default (public URL, token issuer and JWKS,
/// console issuer and redirect) follows to the new port.
fn follow_listen_port(table: &mut toml::Table) {
    let get = |t: &toml::Table, key: &str| {
        let (a, b) = key.split_once('.')?;
        t.get(a)
            .and_then(|s| s.get(b))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let port = get(table, "server.listen")
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    let Some(port) = port.filter(|p| *p != 0 && *p != 8443) else {
        return;
    };
    let dev_default = "https://localhost:8443";
    for key in [
        "server.public_url",
        "auth.issuer",
        "auth.jwks_url",
        "console.issuer",
        "console.redirect_url",
    ] {
        let value = get(table, key);
        let defaults = [
            dev_default.to_string(),
            crate::dev::token::DEV_ISSUER.to_string(),
            format!("{dev_default}{}", crate::dev::token::DEV_JWKS_PATH),
            format!("{dev_default}/console/callback"),
        ];
        if let Some(value) = value.filter(|v| defaults.contains(v)) {
            let moved = value.replacen(dev_default, &format!("https://localhost:{port}"), 1);
            config::insert_dotted(table, key, moved.into());
        }
    }
}

/// Migrations, then the synthetic population and demo principals (once; resumes an
/// interrupted run), with progress.
fn seed_synthetic(
    config: &config::Config,
    totp: &crate::dev::totp::DevTotpKey,
) -> anyhow::Result<()> {
    use diesel::Connection;
    let url = config.database.url.expose();
    let timeout = config.database.connect_timeout_secs;
    crate::db::migrate(url, timeout)?;
    let keyring = crate::app::keys::load_keyring(&config.crypto, url, timeout)?;
    let mut conn = diesel::PgConnection::establish(&crate::db::with_connect_timeout(url, timeout))
        .context("database.url: cannot connect to PostgreSQL")?;
    let issuer = config
        .auth
        .as_ref()
        .map_or(crate::dev::token::DEV_ISSUER, |a| a.issuer.as_str());
    let plan = crate::dev::seed::SeedPlan::dev(issuer);
    let started = Instant::now();
    let report = crate::dev::seed::seed(&mut conn, &keyring, &plan, |done, total| {
        say!("  seeding synthetic patients: {done}/{total}");
    })
    .map_err(|e| anyhow::anyhow!("seeding synthetic data failed: {e}"))?;
    if report.patients_created > 0 {
        say!(
            "seeded {} synthetic patients, {} observations, {} notes, {} claims in {:.1} s (MRNs SYN-000001…, SSNs 123-45-0001… are made up)",
            report.patients_created,
            report.observations_created,
            report.notes_created,
            report.claims_created,
            started.elapsed().as_secs_f64()
        );
    } else {
        say!(
            "synthetic data already present ({} patients)",
            report.already_present
        );
    }
    let history = crate::dev::history::seed_history(
        &mut conn,
        &keyring,
        &config.audit.chain_key()?,
        &config.audit.signing_key()?,
        issuer,
        chrono::Utc::now(),
    )
    .map_err(|e| anyhow::anyhow!("seeding the demo access history failed: {e}"))?;
    if history > 0 {
        say!(
            "seeded {history} synthetic audit events (30 days of demo access history, client app {})",
            crate::dev::history::MARK
        );
    }
    let password_file = dev_dir()
        .join("keys")
        .join(crate::dev::totp::EMERGENCY_PASSWORD_FILE);
    let console = crate::dev::seed::enrol_console_people(&mut conn, &keyring, issuer, totp, || {
        emergency_password_hash(&password_file)
    })
    .map_err(|e| anyhow::anyhow!("enrolling the demo console people failed: {e}"))?;
    if !console.enrolled.is_empty() {
        say!(
            "pre-enrolled {} in TOTP with development secrets (codes: dev-totp <person>)",
            console.enrolled.join(", ")
        );
    }
    if console.emergency_created {
        say!(
            "created the development emergency account {} (password in {})",
            crate::dev::totp::EMERGENCY_ACCOUNT,
            password_file.display()
        );
    }
    Ok(())
}

/// The development emergency account's password: random, created once (file 0600).
fn emergency_password_hash(path: &Path) -> Result<String, crate::error::AppError> {
    let internal = |e: anyhow::Error| crate::error::AppError::Internal(e);
    if !path.is_file() {
        let password = crate::console::session::random_token();
        write_private(path, format!("{password}\n").as_bytes()).map_err(internal)?;
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .map_err(internal)?,
    );
    let password = crate::console::emergency::NewPassword::parse(zeroize::Zeroizing::new(
        text.trim().to_string(),
    ))
    .map_err(|e| internal(anyhow::anyhow!("{}: {e}", path.display())))?;
    password.hash()
}

async fn serve(
    config_path: Option<&Path>,
    defaults: toml::Table,
    dev: DevParts,
    started: Instant,
) -> anyhow::Result<()> {
    let mut table = defaults;
    config::merge(
        &mut table,
        config::load_table(config_path, std::env::vars())?,
    );
    follow_listen_port(&mut table);
    let config = config::from_table(table.clone())?;
    config.validate()?;
    telemetry::init(&config.log);
    // Other commands run in this folder (`audit verify`, `keys status`, `admin …`) use
    // this instance's configuration when given none (see `cli::config_path`).
    let effective = dev_dir().join(crate::dev::CONFIG_FILE);
    write_private(&effective, toml::to_string(&table)?.as_bytes())?;

    let seeding = config.clone();
    let DevParts {
        jwks,
        idp_key,
        totp_key,
    } = dev;
    let totp_key =
        actix_web::web::block(move || seed_synthetic(&seeding, &totp_key).map(|()| totp_key))
            .await
            .context("seeding task failed")??;
    // The dev sign-in provider, for the console settings above (unless the developer
    // pointed the console at a provider of their own).
    let idp = config
        .console
        .as_ref()
        .filter(|c| c.client_id == crate::dev::idp::CLIENT_ID)
        .map(|c| {
            std::sync::Arc::new(crate::dev::idp::DevIdp::new(
                &c.issuer,
                &c.client_id,
                c.client_secret.clone(),
                &c.redirect_url,
                idp_key,
                Some(totp_key),
            ))
        });
    let options = Options {
        dev_jwks: Some(jwks),
        dev_idp: idp.clone(),
        ..Options::default()
    };
    let app = Application::build(config.clone(), options).await?;
    let port = app.https_addr().port();
    let base = format!("https://localhost:{port}");
    // Printed so that it runs as printed, also for someone with no `custodian` on PATH.
    let me = crate::dev::me();
    say!();
    say!(
        "Custodian is running (ready in {:.1} s).",
        started.elapsed().as_secs_f64()
    );
    say!("  HTTPS:     {base}/");
    if let Some(http) = app.http_addr() {
        say!(
            "  HTTP:      http://localhost:{}/ (redirects to HTTPS)",
            http.port()
        );
    }
    say!("  Health:    curl -sk {base}/healthz");
    say!("  Database:  URL in {}/database_url", dev_dir().display());
    say!("The certificate is self-signed: your browser will ask you to accept it.");
    say!();
    if idp.is_some() {
        say!("Administrators and privacy officers: the admin console");
        say!(
            "  Open {base}/console/signin and pick admin.demo (or po.demo) on the DEVELOPMENT sign-in page."
        );
        say!("  TOTP code (pre-enrolled, also shown on that page): {me} dev-totp admin.demo");
        say!(
            "  Emergency access: {base}/console/emergency as {}, password in {}, code from {me} dev-totp {}",
            crate::dev::totp::EMERGENCY_ACCOUNT,
            dev_dir()
                .join("keys")
                .join(crate::dev::totp::EMERGENCY_PASSWORD_FILE)
                .display(),
            crate::dev::totp::EMERGENCY_ACCOUNT
        );
        say!();
    }
    say!(
        "API clients: development tokens (signed with the dev key; accepted only by `custodian dev`)"
    );
    say!("  TOKEN=$({me} dev-token --sub dr.demo)");
    say!("  curl -sk -H \"Authorization: Bearer $TOKEN\" '{base}/fhir/Patient?family=Smith'");
    say!("  Admin API:  TOKEN=$({me} dev-token --sub admin.demo --scope admin)");
    say!("             curl -sk -H \"Authorization: Bearer $TOKEN\" {base}/api/admin/users");
    say!();
    say!("Demo people (synthetic; also listed on {base}/):");
    for p in crate::dev::idp::demo_people() {
        say!("  {:<13} {:<16} {}", p.subject, p.roles, p.can);
    }
    say!();
    say!(
        "Other commands in this folder use this instance's configuration ({}), e.g.",
        effective.display()
    );
    say!("  {me} audit verify");
    say!("Press Ctrl-C to stop.");
    say!();
    app.run().await.context("server stopped with an error")
}
