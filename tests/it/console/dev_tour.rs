//! `custodian dev` itself — the real binary in dev mode, with its own development sign-in
//! provider (not the test provider) — shown to each kind of user in Chromium: the README's
//! five-minute tour, step by step. With `CUSTODIAN_SCREENSHOTS=1` the steps' pages are
//! saved as `docs/screenshots/tour-*.png` (README.md and docs/console.md show them).

use crate::support::TestDb;
use crate::support::browser::Browser;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `custodian dev` on a known port, against the test's own database (so no
/// private cluster is started), stopped with SIGINT on drop.
struct DevInstance {
    child: Option<Child>,
    port: u16,
    printed: Vec<String>,
    dev_dir: PathBuf,
    ready_after: Duration,
    _dir: tempfile::TempDir,
}

impl DevInstance {
    async fn start(db: &TestDb) -> DevInstance {
        let dir = tempfile::tempdir().unwrap();
        let dev_dir = dir.path().join("dev");
        let port = crate::support::free_port();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_custodian"))
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTODIAN_DEV_DIR", &dev_dir)
            .env("CUSTODIAN_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("CUSTODIAN_SERVER_HTTP_REDIRECT_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", &db.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let printed = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut printed = Vec::new();
            for line in lines.by_ref() {
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
        let ready_after = started.elapsed();
        // The exact terminal output, for whoever reads the test log.
        eprintln!(
            "custodian dev ready after {:.1} s:\n{}",
            ready_after.as_secs_f64(),
            printed.join("\n")
        );
        DevInstance {
            child: Some(child),
            port,
            printed,
            dev_dir,
            ready_after,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn cert_pem(&self) -> String {
        std::fs::read_to_string(self.dev_dir.join("tls/cert.pem")).unwrap()
    }

    /// The printed line (trimmed) that contains `needle`.
    fn line(&self, needle: &str) -> String {
        self.printed
            .iter()
            .map(|l| l.trim())
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {:?}", self.printed))
            .to_string()
    }

    /// Runs a printed command as printed, in a clean shell (no `custodian` on PATH).
    fn sh(&self, script: &str) -> String {
        let out = Command::new("sh")
            .args(["-c", script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CUSTODIAN_DEV_DIR", &self.dev_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The current code of a pre-enrolled demo person, from the printed `dev-totp` command.
    fn totp(&self, person: &str) -> String {
        let line = self.line("dev-totp admin.demo");
        let command = line
            .split(": ")
            .last()
            .unwrap()
            .replace("admin.demo", person);
        let code = self.sh(&command);
        assert!(
            code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
            "{code}"
        );
        code
    }

    /// A token for `sub` from the printed `dev-token` command.
    fn token(&self, sub: &str) -> String {
        let line = self.line("dev-token --sub dr.demo)");
        let script = format!(
            "{}; printf %s \"$TOKEN\"",
            line.replace("--sub dr.demo", &format!("--sub {sub}"))
        );
        self.sh(&script)
    }

    /// SIGINT, then waits for a clean exit.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "dev exits cleanly on SIGINT");
    }
}

impl Drop for DevInstance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn insecure() -> reqwest::Client {
    // The dev certificate is self-signed; these checks are about the API, not TLS.
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn api_status(dev: &DevInstance, token: &str, path: &str) -> reqwest::StatusCode {
    insecure()
        .get(dev.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// From the sign-in page through the development provider's page and the TOTP check.
async fn sign_in(browser: &Browser, dev: &DevInstance, person: &str, shots: bool) {
    browser.goto(&dev.url("/console/signin")).await;
    browser
        .wait_for_text("Sign in with your organisation")
        .await;
    browser.click("Sign in with your organisation").await;
    browser.wait_for_path("/dev-idp/authorize").await;
    let page = browser.wait_for_text("DEVELOPMENT").await;
    assert!(page.contains("Sign in as a demo person"), "{page}");
    if shots {
        browser.page_shot("tour-2-dev-signin").await;
    }
    browser.click(&format!("Sign in as {person}")).await;
}

async fn enter_totp(browser: &Browser, dev: &DevInstance, person: &str) {
    browser.wait_for_path("/console/totp").await;
    browser.wait_for_text("Code").await;
    browser.fill("Code", &dev.totp(person)).await;
    browser.click("Continue").await;
    browser.wait_for_text("Session time left").await;
    assert_eq!(browser.current_url().await.path(), "/console");
}

#[tokio::test]
async fn the_five_minute_tour_runs_on_custodian_dev_in_chromium() {
    let db = TestDb::create();
    let mut dev = DevInstance::start(&db).await;
    let browser = Browser::start(&dev.cert_pem()).await;

    // The home page: a door for each kind of user, and the demo people.
    browser.goto(&dev.url("/")).await;
    let home = browser.wait_for_text("Development instance").await;
    assert!(home.contains("Sign in to the admin console"), "{home}");
    assert!(home.contains("dev-token --sub dr.demo"), "{home}");
    for person in ["dr.demo", "admin.demo", "po.demo", "billing.demo"] {
        assert!(home.contains(person), "{person} missing: {home}");
    }
    browser.page_shot("tour-1-home").await;

    // 1. The API as dr.demo, with the printed token command: a clinician sees patients on
    //    their care team, and no claims.
    let token = dev.token("dr.demo");
    assert_eq!(
        api_status(&dev, &token, "/fhir/Patient?family=Smith").await,
        200
    );
    assert_eq!(api_status(&dev, &token, "/fhir/Claim").await, 403);

    // 2. The console as admin.demo, through the development provider and a dev TOTP code.
    sign_in(&browser, &dev, "admin.demo", true).await;
    enter_totp(&browser, &dev, "admin.demo").await;
    let dashboard = browser.text().await;
    assert!(dashboard.contains("admin.demo"), "{dashboard}");
    browser.page_shot("tour-3-dashboard").await;

    // 3. A role with a reason: billing for the demo clinician.
    browser.click("Users").await;
    browser.wait_for_text("Demo clinician").await;
    browser.click("Demo clinician").await;
    browser.wait_for_text("Role to add").await;
    let clinician_id = browser
        .current_url()
        .await
        .path()
        .trim_start_matches("/console/users/")
        .to_string();
    browser.select("Role to add", "billing").await;
    browser
        .fill(
            "Reason (required, 3 to 500 characters)",
            "covers the billing desk this week",
        )
        .await;
    browser.click("Add role").await;
    browser.wait_for_text("The role was granted.").await;
    browser.page_shot("tour-4-role-added").await;

    // 4. It takes effect on the next API request, with the same token.
    assert_eq!(api_status(&dev, &token, "/fhir/Claim").await, 200);

    // 5. po.demo finds the access on the audit page.
    browser.click("Sign out").await;
    browser
        .wait_for_text("Sign in with your organisation")
        .await;
    sign_in(&browser, &dev, "po.demo", false).await;
    enter_totp(&browser, &dev, "po.demo").await;
    browser.click("Audit events").await;
    let audit = browser.wait_for_text("Recent audit events").await;
    assert!(audit.contains(&clinician_id), "{audit}");
    assert!(audit.contains("permission-change"), "{audit}");
    assert!(audit.contains("Claim"), "{audit}");
    browser.page_shot("tour-5-audit").await;

    // A clinician is refused the console (after signing in at the provider).
    browser.click("Sign out").await;
    browser
        .wait_for_text("Sign in with your organisation")
        .await;
    sign_in(&browser, &dev, "dr.demo", false).await;
    let refused = browser.wait_for_text("No console access").await;
    assert!(
        refused.contains("does not hold an administrator"),
        "{refused}"
    );
    browser.goto(&dev.url("/console")).await;
    browser.wait_for_path("/console/signin").await;

    // Someone following the terminal reaches the console in one start.
    assert!(dev.line("/console/signin").contains("admin.demo"));
    eprintln!("ready after {:.1} s", dev.ready_after.as_secs_f64());
    dev.stop().await;
}

/// The provider's ID tokens, got by the flow the console uses (PKCE, client secret).
async fn id_token_from_dev_idp(dev: &DevInstance) -> (String, String, String) {
    use base64::Engine;
    use sha2::Digest;
    let config: toml::Table = std::fs::read_to_string(dev.dev_dir.join("custodian.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let console = config["console"].as_table().unwrap();
    let secret = console["client_secret"].as_str().unwrap().to_string();
    let redirect = console["redirect_url"].as_str().unwrap().to_string();
    let verifier = "v".repeat(64);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let res = insecure()
        .post(dev.url("/dev-idp/authorize"))
        .form(&[
            ("response_type", "code"),
            ("client_id", custodian::dev::idp::CLIENT_ID),
            ("redirect_uri", redirect.as_str()),
            ("scope", "openid"),
            ("state", "s1"),
            ("nonce", "n1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("subject", "dr.demo"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let location = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(&redirect), "{location}");
    let param = |k: &str| {
        location
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    assert_eq!(param("state"), "s1");
    assert_eq!(param("iss"), dev.url("/dev-idp"));
    (param("code"), secret, verifier)
}

async fn exchange(
    dev: &DevInstance,
    code: &str,
    secret: &str,
    verifier: &str,
) -> reqwest::Response {
    let config: toml::Table = std::fs::read_to_string(dev.dev_dir.join("custodian.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let redirect = config["console"]["redirect_url"]
        .as_str()
        .unwrap()
        .to_string();
    insecure()
        .post(dev.url("/dev-idp/token"))
        .basic_auth(custodian::dev::idp::CLIENT_ID, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn dev_idp_checks_pkce_and_the_client_and_its_id_tokens_open_no_api_and_serve_has_none_of_it()
{
    let db = TestDb::create();
    let mut dev = DevInstance::start(&db).await;

    // Discovery names this instance's endpoints.
    let meta: serde_json::Value = insecure()
        .get(dev.url("/dev-idp/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], dev.url("/dev-idp"));
    assert_eq!(meta["code_challenge_methods_supported"][0], "S256");

    // An authorization request for another redirect URL gets an error page, no redirect.
    let res = insecure()
        .get(dev.url("/dev-idp/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", custodian::dev::idp::CLIENT_ID),
            ("redirect_uri", "https://attacker.example/console/callback"),
            ("scope", "openid"),
            ("state", "s"),
            ("code_challenge", &"c".repeat(43)),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("location").is_none());

    // Wrong client secret, wrong PKCE verifier, a code used twice: refused.
    let (code, secret, verifier) = id_token_from_dev_idp(&dev).await;
    let res = exchange(&dev, &code, "not-the-secret", &verifier).await;
    assert_eq!(res.status(), 401);
    let res = exchange(&dev, &code, &secret, &"w".repeat(64)).await;
    assert_eq!(res.status(), 400, "a wrong verifier spends the code");
    let (code, secret, verifier) = id_token_from_dev_idp(&dev).await;
    let res = exchange(&dev, &code, &secret, &verifier).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let res = exchange(&dev, &code, &secret, &verifier).await;
    assert_eq!(res.status(), 400, "a code works once");

    // The ID token is RS256 from the provider's JWKS, for the console's client...
    let id_token = body["id_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwks: serde_json::Value = insecure()
        .get(dev.url("/dev-idp/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], header.kid.unwrap().as_str());
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    // ...and no API bearer token.
    assert_eq!(
        api_status(&dev, id_token, "/fhir/Patient?family=Smith").await,
        401
    );
    let access_token = body["access_token"].as_str().unwrap();
    assert_eq!(
        api_status(&dev, access_token, "/fhir/Patient?family=Smith").await,
        401
    );

    // `serve` with this very instance's configuration has no dev route at all.
    dev.stop().await;
    let config = dev.dev_dir.join("custodian.toml");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_custodian"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUSTODIAN_DEV_DIR", &dev.dev_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = insecure()
            .get(dev.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for path in dev_paths() {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let res = insecure()
                .request(method.clone(), dev.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 404, "{method} {path} under serve");
        }
    }
    let _ = Command::new("kill")
        .args(["-INT", &serve.id().to_string()])
        .status();
    let _ = serve.wait();
}

/// Every path the development instance adds.
pub fn dev_paths() -> [&'static str; 5] {
    use custodian::dev::idp;
    [
        idp::DISCOVERY_PATH,
        idp::AUTHORIZE_PATH,
        idp::TOKEN_PATH,
        idp::JWKS_PATH,
        custodian::dev::token::DEV_JWKS_PATH,
    ]
}
