//! The admin console in a real browser (headless chromium over WebDriver, see
//! `common/browser.rs`), over HTTPS as an administrator would use it.

use crate::common::browser::Browser;
use crate::common::{TestApp, test_cert};

/// An app with the console enabled. Provider discovery happens on first sign-in, so pages
/// before it work with a provider that is not running.
async fn console_app() -> TestApp {
    TestApp::builder()
        .set("console.issuer", "http://127.0.0.1:9")
        .set("console.client_id", "custodian-console")
        .set("console.client_secret", "test-secret")
        .set(
            "console.redirect_url",
            "https://localhost:8443/console/callback",
        )
        .spawn()
        .await
}

/// CSP violations and other errors the page logged to the browser console.
fn csp_violations(messages: &[String]) -> Vec<&String> {
    messages
        .iter()
        .filter(|m| m.contains("Content Security Policy"))
        .collect()
}

#[tokio::test]
async fn signin_page_renders_styled_over_https_without_csp_violations() {
    let app = console_app().await;
    let browser = Browser::start(&test_cert().cert_pem).await;
    browser.goto(&app.url("/console/signin")).await;
    let text = browser
        .wait_for_text("Sign in with your organisation")
        .await;
    assert!(text.contains("Admin console"), "{text}");
    assert_eq!(browser.current_url().await.scheme(), "https");
    // The stylesheet is same-origin, so the strict CSP lets it apply.
    let styled = browser
        .execute(
            "return document.styleSheets.length > 0 && document.styleSheets[0].cssRules.length > 0;",
            vec![],
        )
        .await;
    assert_eq!(styled, serde_json::json!(true), "console.css did not load");
    browser.screenshot("signin").await;

    browser.goto(&app.url("/")).await;
    browser.wait_for_text("Custodian").await;
    let messages = browser.console_messages().await;
    assert!(csp_violations(&messages).is_empty(), "{messages:?}");
    assert!(browser.alert_text().await.is_err(), "a dialog is open");
}

/// A failing browser test leaves a screenshot, the page's HTML and its URL behind.
#[tokio::test]
async fn a_failing_browser_test_saves_screenshot_and_html() {
    let app = console_app().await;
    let url = app.url("/console/signin");
    let dir = {
        let browser = Browser::start(&test_cert().cert_pem).await;
        browser.artifacts().to_path_buf()
    };
    let _ = std::fs::remove_dir_all(&dir);
    let failing = tokio::spawn(async move {
        let browser = Browser::start(&test_cert().cert_pem).await;
        browser.goto(&url).await;
        browser
            .wait_for_text("Sign in with your organisation")
            .await;
        panic!("deliberate failure after the page loaded");
    });
    assert!(failing.await.unwrap_err().is_panic());
    let png = std::fs::read(dir.join("failure.png")).expect("failure.png saved");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let html = std::fs::read_to_string(dir.join("failure.html")).expect("failure.html saved");
    assert!(html.contains("Sign in with your organisation"), "{html}");
    let at = std::fs::read_to_string(dir.join("failure-url.txt")).unwrap();
    assert!(at.ends_with("/console/signin"), "{at}");
}
