//! A real browser for end-to-end tests: Debian's `chromium`, driven over WebDriver by
//! `chromedriver` (both installed by `.ci/run`). One chromedriver and one headless chromium
//! with a fresh profile per [`Browser`]; both end when it is dropped. If the test is
//! failing (dropped while panicking), a screenshot, the page's HTML and its URL are saved
//! to `target/test-artifacts/<test>/` first.
//!
//! The WebDriver protocol is spoken directly over `reqwest` (already a dev-dependency):
//! a dozen JSON commands, no extra crates, and the same code works from `Drop`, where the
//! test's own runtime cannot be used.

use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long [`Browser::wait_for_text`] and friends wait before failing.
const WAIT: Duration = Duration::from_secs(15);

/// Whether the browser and its driver are there; the error says how to install them.
pub fn installed(chromium: &Path, chromedriver: &Path) -> Result<(), String> {
    for (path, package) in [(chromium, "chromium"), (chromedriver, "chromium-driver")] {
        if !path.exists() {
            return Err(format!(
                "{} is missing (Debian package {package}): the browser tests need Debian's \
                 chromium and chromedriver. Install them with \
                 `apt-get install -y chromium chromium-driver` (.ci/run does this).",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A WebDriver error (`value.error` of a failed command), e.g. `no such alert`.
#[derive(Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

/// One WebDriver session: `http://127.0.0.1:<port>/session/<id>`.
struct Session {
    http: reqwest::Client,
    base: String,
}

impl Session {
    async fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.map_err(|e| WdError {
            error: "transport".into(),
            message: format!("{url}: {e}"),
        })?;
        let ok = res.status().is_success();
        let body: Value = res.json().await.map_err(|e| WdError {
            error: "transport".into(),
            message: format!("{url}: {e}"),
        })?;
        let value = body.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            let field = |k: &str| {
                value
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            Err(WdError {
                error: field("error"),
                message: field("message"),
            })
        }
    }

    async fn get(&self, path: &str) -> Result<Value, WdError> {
        self.cmd(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, WdError> {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    async fn screenshot_png(&self) -> Result<Vec<u8>, WdError> {
        use base64::Engine;
        let b64 = self.get("/screenshot").await?;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .map_err(|e| WdError {
                error: "decode".into(),
                message: e.to_string(),
            })
    }
}

fn driver_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    session: Session,
    driver: Child,
    /// The per-test profile (`--user-data-dir`), removed on drop.
    profile: Option<tempfile::TempDir>,
    artifacts: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless chromium session. `trusted_cert_pem`
    /// is the test server's certificate: chromium accepts exactly that key (see below).
    pub async fn start(trusted_cert_pem: &str) -> Browser {
        // Not a silent skip: CI installs the browser, so a missing one is a broken setup.
        if let Err(missing) = installed(Path::new(CHROMIUM), Path::new(CHROMEDRIVER)) {
            panic!("{missing}");
        }
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .replace("::", ".");
        let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(|target| target.join("test-artifacts").join(&test))
            .unwrap_or_else(|| PathBuf::from("test-artifacts").join(&test));
        let profile = tempfile::Builder::new()
            .prefix("custodian-chromium")
            .tempdir()
            .unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that drop can end chromium too if quitting fails.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let http = driver_client();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{root}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                end_process_group(&mut driver);
                panic!("chromedriver did not start on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            // Containers often have a tiny /dev/shm, where chromium's renderers crash.
            "--disable-dev-shm-usage".into(),
            // The console's target: a 1280-px window (the review pages must not scroll
            // sideways in it).
            "--window-size=1280,900".into(),
            format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ),
            // The test server's certificate is self-signed. Instead of trusting a CA in an NSS
            // database or ignoring all certificate errors, this browser (and only this
            // test browser) accepts exactly the test certificate's public key; the flag is
            // honoured because --user-data-dir is set.
            format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_sha256(trusted_cert_pem)
            ),
        ];
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                // Console messages (CSP violations among them) for console_errors().
                "goog:loggingPrefs": { "browser": "ALL" },
            }}
        });
        let mut new = Session {
            http,
            base: root.clone(),
        };
        let created = match new.post("/session", caps).await {
            Ok(v) => v,
            Err(e) => {
                end_process_group(&mut driver);
                let log = std::fs::read_to_string(profile.path().join("chromedriver.log"))
                    .unwrap_or_default();
                panic!("chromium did not start: {e:?}\nchromedriver log:\n{log}")
            }
        };
        let id = created["sessionId"].as_str().unwrap().to_string();
        new.base = format!("{root}/session/{id}");
        Browser {
            session: new,
            driver,
            profile: Some(profile),
            artifacts,
        }
    }

    /// Where this test's screenshots and failure artefacts go.
    pub fn artifacts(&self) -> &Path {
        &self.artifacts
    }

    pub async fn goto(&self, url: &str) {
        self.session
            .post("/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e:?}"));
    }

    /// Sets a secure, host-only, HTTP-only cookie on the current page's origin (a session
    /// created in the database, without going through sign-in).
    pub async fn add_cookie(&self, name: &str, value: &str) {
        let cookie = json!({
            "name": name, "value": value, "path": "/", "secure": true, "httpOnly": true,
        });
        self.session
            .post("/cookie", json!({ "cookie": cookie }))
            .await
            .unwrap_or_else(|e| panic!("add cookie {name}: {e:?}"));
    }

    pub async fn current_url(&self) -> url::Url {
        let v = self.session.get("/url").await.unwrap();
        url::Url::parse(v.as_str().unwrap()).unwrap()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.try_text()
            .await
            .unwrap_or_else(|e| panic!("reading the page text: {e:?}"))
    }

    /// Like [`Browser::text`], but a page in the middle of loading is an error, not a panic.
    async fn try_text(&self) -> Result<String, WdError> {
        let script = "return document.body ? document.body.innerText : '';";
        let v = self
            .session
            .post("/execute/sync", json!({ "script": script, "args": [] }))
            .await?;
        Ok(v.as_str().unwrap_or("").to_string())
    }

    /// Like [`Browser::current_url`], without panicking mid-navigation.
    async fn try_url(&self) -> Option<url::Url> {
        let v = self.session.get("/url").await.ok()?;
        url::Url::parse(v.as_str()?).ok()
    }

    /// The page's HTML as the browser has it now.
    pub async fn html(&self) -> String {
        let v = self.session.get("/source").await.unwrap();
        v.as_str().unwrap_or("").to_string()
    }

    /// Runs a script in the page (WebDriver scripts are not subject to the page's CSP).
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.session
            .post("/execute/sync", json!({ "script": script, "args": args }))
            .await
            .unwrap_or_else(|e| panic!("script failed: {e:?}"))
    }

    /// Number of elements matching a CSS selector.
    pub async fn count(&self, css: &str) -> usize {
        let v = self
            .session
            .post(
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .unwrap();
        v.as_array().map(Vec::len).unwrap_or(0)
    }

    /// The form control whose `<label>` text is `key`, else the one named `key`.
    async fn control(&self, key: &str) -> Value {
        let script = "const key = arguments[0];
            for (const l of document.querySelectorAll('label')) {
              if (l.textContent.trim() === key && l.control) { return l.control; }
            }
            return document.getElementsByName(key)[0] || null;";
        let el = self.execute(script, vec![json!(key)]).await;
        assert!(
            !el.is_null(),
            "no form field labelled or named {key:?} on {}",
            self.current_url().await
        );
        el
    }

    fn element_id(el: &Value) -> String {
        el[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("not an element: {el}"))
            .to_string()
    }

    /// Types `value` into the field labelled (or named) `key`, replacing what was there.
    pub async fn fill(&self, key: &str, value: &str) {
        let id = Self::element_id(&self.control(key).await);
        self.session
            .post(&format!("/element/{id}/clear"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("clear {key:?}: {e:?}"));
        self.session
            .post(&format!("/element/{id}/value"), json!({ "text": value }))
            .await
            .unwrap_or_else(|e| panic!("type into {key:?}: {e:?}"));
    }

    /// Selects the option with this visible text in the `<select>` labelled (or named) `key`.
    pub async fn select(&self, key: &str, option: &str) {
        let select = self.control(key).await;
        let script = "const [s, text] = arguments;
            const o = [...s.options].find(o => o.textContent.trim() === text);
            return o || null;";
        let opt = self.execute(script, vec![select, json!(option)]).await;
        assert!(!opt.is_null(), "no option {option:?} in {key:?}");
        let id = Self::element_id(&opt);
        self.session
            .post(&format!("/element/{id}/click"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("select {option:?}: {e:?}"));
    }

    /// Clicks the button or link whose visible text (or value) is `text`, as a person would.
    pub async fn click(&self, text: &str) {
        let script = "const t = arguments[0];
            const all = document.querySelectorAll('button, a, input[type=submit]');
            return [...all].find(e => (e.value && e.tagName === 'INPUT' ? e.value : e.textContent).trim() === t) || null;";
        let el = self.execute(script, vec![json!(text)]).await;
        assert!(
            !el.is_null(),
            "no button or link {text:?} on {}",
            self.current_url().await
        );
        let id = Self::element_id(&el);
        self.session
            .post(&format!("/element/{id}/click"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("click {text:?}: {e:?}"));
    }

    /// Waits until the page's text contains `needle` (pages load after clicks and redirects).
    pub async fn wait_for_text(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.try_text().await.unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "page {} never showed {needle:?}; it shows:\n{text}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the URL's path is `path`.
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.try_url().await;
            if url.as_ref().is_some_and(|u| u.path() == path) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never reached {path}; at {url:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the URL's path starts with `prefix`.
    pub async fn wait_for_path_prefix(&self, prefix: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.try_url().await;
            if url.as_ref().is_some_and(|u| u.path().starts_with(prefix)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never reached {prefix}...; at {url:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of an open `alert()`/`confirm()` dialog; `Err` (`no such alert`) when none.
    pub async fn alert_text(&self) -> Result<String, WdError> {
        self.session
            .get("/alert/text")
            .await
            .map(|v| v.as_str().unwrap_or("").to_string())
    }

    /// Console messages since the last call (CSP violations are logged here as errors).
    pub async fn console_messages(&self) -> Vec<String> {
        let v = self
            .session
            .post("/se/log", json!({ "type": "browser" }))
            .await
            .unwrap_or_else(|e| panic!("reading the browser log: {e:?}"));
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["level"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The session cookie values visible to WebDriver (it sees HttpOnly cookies too).
    pub async fn cookies(&self) -> Vec<Value> {
        let v = self.session.get("/cookie").await.unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    /// Saves a screenshot as `<artifacts>/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.artifacts.join(format!("{name}.png"));
        self.screenshot_to(&path).await;
        path
    }

    /// Saves the page as a test artefact `<name>.png`, and with `CUSTODIAN_SCREENSHOTS=1`
    /// also as `docs/screenshots/<name>.png` (the docs show them).
    pub async fn page_shot(&self, name: &str) {
        self.screenshot(name).await;
        if std::env::var("CUSTODIAN_SCREENSHOTS").is_ok_and(|v| v == "1") {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs/screenshots")
                .join(format!("{name}.png"));
            self.screenshot_to(&path).await;
        }
    }

    /// Saves a screenshot of the viewport to `path`.
    pub async fn screenshot_to(&self, path: &Path) {
        let png = self.session.screenshot_png().await.unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        // A new HTTP client: pooled connections of the old one are driven by the test's
        // runtime, which is blocked in this drop.
        let session = Session {
            http: driver_client(),
            base: self.session.base.clone(),
        };
        let artifacts = self.artifacts.clone();
        let log = self
            .profile
            .as_ref()
            .map(|p| p.path().join("chromedriver.log"));
        // Drop cannot await on the test's runtime (it may be the one blocked here), so the
        // last WebDriver commands run on a thread with a runtime of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                if failing {
                    save_failure(&session, &artifacts, log.as_deref()).await;
                }
                let _ = session.cmd(reqwest::Method::DELETE, "", None).await;
            });
            Some(())
        });
        let _ = done.join();
        end_process_group(&mut self.driver);
        self.profile.take();
    }
}

/// Ends chromedriver and whatever is left of its process group (chromium included).
fn end_process_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

async fn save_failure(session: &Session, dir: &Path, driver_log: Option<&Path>) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(png) = session.screenshot_png().await {
        let _ = std::fs::write(dir.join("failure.png"), png);
    }
    if let Ok(Value::String(html)) = session.get("/source").await {
        let _ = std::fs::write(dir.join("failure.html"), html);
    }
    if let Ok(Value::String(url)) = session.get("/url").await {
        let _ = std::fs::write(dir.join("failure-url.txt"), url);
    }
    if let Some(log) = driver_log {
        let _ = std::fs::copy(log, dir.join("chromedriver.log"));
    }
    eprintln!(
        "browser test failed: screenshot and page saved in {}",
        dir.display()
    );
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, for chromium's
/// `--ignore-certificate-errors-spki-list`.
pub fn spki_sha256(cert_pem: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}
