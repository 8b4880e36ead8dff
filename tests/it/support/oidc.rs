//! A real OpenID provider for console tests: `node tests/oidc/provider.mjs` (npm
//! `oidc-provider` with its development login) on a free port, one per test, killed on
//! drop. Its npm packages are installed on first use (`npm ci`, offline first), under a
//! file lock so parallel test processes do not race.
//!
//! Typical use:
//! ```ignore
//! let (app, idp) = oidc::console_app(TestApp::builder()).await;
//! let callback = idp.authorize(&app, &app.client, "alice").await; // not followed
//! let res = app.client.get(callback.as_str()).send().await.unwrap();
//! ```

use super::{TestApp, TestAppBuilder, free_port, node};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The console's client at the provider.
pub const CLIENT_ID: &str = "custodian-console";
pub const CLIENT_SECRET: &str = "console-test-secret-not-for-production";
/// A second registered client (another audience).
pub const OTHER_CLIENT_ID: &str = "another-client";
pub const OTHER_CLIENT_SECRET: &str = "another-test-secret-not-for-production";

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Installs `tests/oidc/node_modules` once (per machine, under a lock).
pub fn ensure_installed() {
    super::node::ensure_installed(&oidc_dir());
}

/// One registered client.
pub struct ClientReg {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
}

/// A running provider, killed on drop.
pub struct Provider {
    child: Child,
    pub port: u16,
    pub issuer: String,
    http: reqwest::Client,
}

impl Provider {
    /// Starts the provider with these clients and waits for its `ready` line.
    pub fn start(clients: &[ClientReg]) -> Provider {
        let json: Vec<_> = clients
            .iter()
            .map(|c| {
                serde_json::json!({
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "redirect_uris": c.redirect_uris,
                })
            })
            .collect();
        Self::spawn(serde_json::Value::Array(json), None)
    }

    /// Starts the provider as the SMART authorization server of the FHIR server at
    /// `resource` (its base URL, the tokens' audience), granting at most `scopes` of it,
    /// with one public client (no secret; PKCE) that may redirect to `redirect_uri`.
    /// See provider.mjs.
    pub fn start_smart(
        client_id: &str,
        redirect_uri: &str,
        resource: &str,
        scopes: &str,
    ) -> Provider {
        let clients = serde_json::json!([{
            "client_id": client_id,
            "public": true,
            "redirect_uris": [redirect_uri],
        }]);
        let smart = serde_json::json!({ "resource": resource, "scopes": scopes });
        Self::spawn(clients, Some(smart))
    }

    /// Makes `patient` the launch context of `subject`'s later SMART launches.
    pub async fn set_launch_patient(&self, subject: &str, patient: &str) {
        let res = self
            .http
            .put(format!(
                "{}/__test/patient/{subject}/{patient}",
                self.issuer
            ))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "launch context: {res:?}");
    }

    fn spawn(clients: serde_json::Value, smart: Option<serde_json::Value>) -> Provider {
        ensure_installed();
        // The free port can be taken by another process before node binds it; the
        // provider then exits (EADDRINUSE) and is started again on another port.
        for _ in 0..3 {
            let port = free_port();
            let mut command = Command::new("node");
            command
                .arg(oidc_dir().join("provider.mjs"))
                .arg(port.to_string())
                .arg(clients.to_string());
            if let Some(smart) = &smart {
                command.arg(smart.to_string());
            }
            // Pass on the provider's errors, not its fixed start-up warnings (dev adapter,
            // dev interactions, Node version).
            let errors: fn(&str) -> bool = |line| !line.starts_with("oidc-provider WARNING:");
            let started = node::spawn_ready(
                command,
                "oidc provider",
                "ready ",
                Some(errors),
                Duration::from_secs(30),
            );
            // Exited before listening (its stderr says why): try another port.
            if let Ok((child, issuer)) = started {
                return Provider {
                    child,
                    port,
                    issuer,
                    http: reqwest::Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .unwrap(),
                };
            }
        }
        panic!("the test OpenID provider exited before listening, three times (see its output)");
    }

    /// Makes later ID tokens bad in one way (`aud`, `nonce`, `iss`, `key`, `exp`),
    /// re-signed but unchanged (`same`), or the provider's own again (`none`). See
    /// provider.mjs.
    pub async fn set_mode(&self, mode: &str) {
        let res = self
            .http
            .put(format!("{}/__test/mode/{mode}", self.issuer))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "provider mode {mode}: {res:?}");
    }

    /// Starts a console sign-in at `app` with `client` (its cookie jar gets the pre-login
    /// session), signs in at the provider as `subject` through the development login and
    /// consent, and returns the provider's redirect to Custodian's callback WITHOUT
    /// following it.
    pub async fn authorize(
        &self,
        app: &TestApp,
        client: &reqwest::Client,
        subject: &str,
    ) -> url::Url {
        let res = client.get(app.url("/console/login")).send().await.unwrap();
        assert_eq!(res.status(), 303, "GET /console/login");
        let start = location(&res).unwrap();
        self.authorize_from(&start, &app.url("/console/callback"), client, subject)
            .await
    }

    /// Like [`Provider::authorize`], from an authorization URL already obtained.
    pub async fn authorize_from(
        &self,
        start: &url::Url,
        callback_prefix: &str,
        client: &reqwest::Client,
        subject: &str,
    ) -> url::Url {
        let mut next = start.clone();
        let mut post: Option<Vec<(&str, &str)>> = None;
        for _ in 0..20 {
            if next.as_str().starts_with(callback_prefix) {
                return next;
            }
            let res = match post.take() {
                Some(form) => client.post(next.clone()).form(&form).send().await,
                None => client.get(next.clone()).send().await,
            }
            .unwrap();
            if res.status().is_redirection() {
                next = location(&res).unwrap();
                continue;
            }
            let status = res.status();
            let url = res.url().clone();
            let body = res.text().await.unwrap();
            assert_eq!(status, 200, "provider at {url}: {body}");
            assert!(
                url.path().starts_with("/interaction/"),
                "unexpected provider page {url}: {body}"
            );
            post = Some(if body.contains(r#"name="login""#) {
                vec![("prompt", "login"), ("login", subject), ("password", "x")]
            } else if body.contains(r#"value="consent""#) {
                vec![("prompt", "consent")]
            } else {
                panic!("unknown provider interaction page {url}: {body}");
            });
            next = url;
        }
        panic!("the provider did not redirect back to {callback_prefix} within 20 steps");
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The absolute URL of a redirect response's `Location`.
pub fn location(res: &reqwest::Response) -> Option<url::Url> {
    let loc = res.headers().get("location")?.to_str().ok()?;
    res.url().join(loc).ok()
}

/// Starts a provider whose client `custodian-console` may redirect to the app's
/// callback, and the app configured to sign in through it (console settings set on
/// top of `builder`, which may carry e.g. shortened timeouts).
pub async fn console_app(builder: TestAppBuilder) -> (TestApp, Provider) {
    let port = free_port();
    let callback = format!("https://localhost:{port}/console/callback");
    let idp = Provider::start(&[
        ClientReg {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![callback.clone()],
        },
        ClientReg {
            client_id: OTHER_CLIENT_ID.into(),
            client_secret: OTHER_CLIENT_SECRET.into(),
            redirect_uris: vec![callback.clone()],
        },
    ]);
    let app = with_console(builder, &idp, port).spawn().await;
    (app, idp)
}

/// The console settings for `idp`, serving on `port` (set on top of `builder`).
pub fn with_console(builder: TestAppBuilder, idp: &Provider, port: u16) -> TestAppBuilder {
    builder
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("console.issuer", idp.issuer.clone())
        .set("console.client_id", CLIENT_ID)
        .set("console.client_secret", CLIENT_SECRET)
        .set(
            "console.redirect_url",
            format!("https://localhost:{port}/console/callback"),
        )
}

/// A client like [`super::client`] whose cookie jar the test can read.
pub fn jar_client() -> (reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>) {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(super::test_cert().cert_pem.as_bytes()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    (client, jar)
}

/// The value of cookie `name` that `jar` would send to `url`.
pub fn cookie_value(jar: &reqwest::cookie::Jar, url: &str, name: &str) -> Option<String> {
    use reqwest::cookie::CookieStore;
    let header = jar.cookies(&url::Url::parse(url).unwrap())?;
    header
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}
