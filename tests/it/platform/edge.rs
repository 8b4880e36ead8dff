//! The shared middleware stack: security headers, request ids, limits, error bodies.

use crate::support::{TestApp, assert_security_headers, test_routes};
use reqwest::StatusCode;

async fn app() -> TestApp {
    TestApp::builder()
        .set("server.body_limit_bytes", 1024)
        .set(
            "server.cors_allowed_origins",
            vec!["https://app.example.org"],
        )
        .extra_routes(test_routes::add)
        .spawn()
        .await
}

#[tokio::test]
async fn every_registered_route_passes_through_the_middleware_stack() {
    let app = app().await;
    let table = custodian::app::routes::table();
    assert!(!table.is_empty());
    for route in table {
        let path = route.path.replace("{file}", "console.css");
        let res = app
            .client
            .request(
                reqwest::Method::from_bytes(route.method.as_str().as_bytes()).unwrap(),
                app.url(&path),
            )
            .send()
            .await
            .unwrap();
        assert_security_headers(&res);
    }
}

#[tokio::test]
async fn every_kind_of_response_carries_headers_and_request_id() {
    let app = app().await;
    let c = &app.client;
    let cases = vec![
        (c.get(app.url("/healthz")), StatusCode::OK),
        (c.get(app.url("/no/such/page")), StatusCode::NOT_FOUND),
        (
            c.delete(app.url("/healthz")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            c.request(reqwest::Method::TRACE, app.url("/healthz")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            c.post(app.url("/api/test/json"))
                .header("content-type", "application/json")
                .body(vec![b'x'; 4096]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            c.post(app.url("/api/test/json"))
                .header("content-type", "text/plain")
                .body("hello"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            c.get(app.url("/api/test/panic")),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (req, expected) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), expected, "{}", res.url());
        assert_security_headers(&res);
        if res.url().path() != "/static/console.css" {
            assert_eq!(res.headers()["cache-control"], "no-store");
        }
    }
}

#[tokio::test]
async fn static_assets_may_be_cached_everything_else_not() {
    let app = app().await;
    let css = app.get("/static/console.css").await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    assert_eq!(
        app.get("/healthz").await.headers()["cache-control"],
        "no-store"
    );
}

#[tokio::test]
async fn safe_request_ids_are_echoed_and_forged_ones_replaced() {
    let app = app().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "client-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-abc.123");

    for forged in [
        "a".repeat(300),
        "evil value with spaces".to_string(),
        "x\"<y>".to_string(),
    ] {
        let res = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", forged.as_str())
            .send()
            .await
            .unwrap();
        let got = res.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(got, forged);
        assert_eq!(got.len(), 32, "a generated id replaces the forged one");
    }
    // A header value with a newline cannot even be sent by a client library; the id
    // parser refuses it (unit test in src/web/request_id.rs).
}

#[tokio::test]
async fn oversized_body_gets_413_without_echo() {
    let app = app().await;
    let body = format!("{{\"name\":\"{}\"}}", "CANARY-LARGE".repeat(200));
    let res = app
        .client
        .post(app.url("/api/test/json"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let text = res.text().await.unwrap();
    assert!(text.contains("too large"), "{text}");
    assert!(!text.contains("CANARY"));
}

#[tokio::test]
async fn chunked_oversized_body_gets_413() {
    let app = app().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = app
        .client
        .post(app.url("/api/test/json"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn wrong_content_type_gets_415_without_echo() {
    let app = app().await;
    let res = app
        .client
        .post(app.url("/api/test/json"))
        .header("content-type", "text/plain")
        .body("CANARY-TEXT-BODY")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let text = res.text().await.unwrap();
    assert!(text.contains("JSON bodies only"), "{text}");
    assert!(!text.contains("CANARY"));
}

#[tokio::test]
async fn malformed_json_gets_400_without_echo() {
    let app = app().await;
    let res = app
        .client
        .post(app.url("/api/test/json"))
        .header("content-type", "application/json")
        .body("{\"name\": \"CANARY-JSON\" ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let text = res.text().await.unwrap();
    assert!(text.contains("not well-formed JSON"), "{text}");
    assert!(!text.contains("CANARY"));
}

#[tokio::test]
async fn deeply_nested_json_gets_400() {
    let app = app().await;
    let body = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let res = app
        .client
        .post(app.url("/api/test/json"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("nested too deeply"));
}

#[tokio::test]
async fn valid_json_is_accepted() {
    let app = app().await;
    let res = app
        .client
        .post(app.url("/api/test/json"))
        .header("content-type", "application/fhir+json")
        .body("{\"name\":\"abc\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    let app = app().await;
    for _ in 0..4 {
        let res = app.get("/api/test/panic").await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let rid = res.headers()["x-request-id"].to_str().unwrap().to_string();
        let text = res.text().await.unwrap();
        assert!(!text.contains("CANARY"), "{text}");
        assert!(text.contains(&rid), "generic body quotes the request id");
    }
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn errors_take_the_format_of_their_surface() {
    let app = app().await;
    let fhir = app.get("/fhir/Nothing").await;
    assert_eq!(fhir.status(), StatusCode::NOT_FOUND);
    assert_eq!(fhir.headers()["content-type"], "application/fhir+json");
    let body: serde_json::Value = fhir.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "not-found");

    let api = app.get("/api/nothing").await;
    assert_eq!(api.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = api.json().await.unwrap();
    assert_eq!(body["status"], 404);

    let console = app.get("/nothing?q=CANARY-QUERY").await;
    assert!(
        console.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let text = console.text().await.unwrap();
    assert!(!text.contains("CANARY"));
}

#[tokio::test]
async fn cors_is_closed_except_for_configured_origins() {
    let app = app().await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/fhir/metadata"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let denied = preflight("https://evil.example").await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let allowed = preflight("https://app.example.org").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );

    let simple = app
        .client
        .get(app.url("/fhir/metadata"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        simple
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn plain_http_redirects_console_and_refuses_api() {
    let app = TestApp::builder().with_redirect_listener().spawn().await;
    let http = app.http.expect("redirect listener");
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = plain
        .get(format!("http://{http}/console/users?page=2"))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(res.status().as_u16(), 301 | 308),
        "{}",
        res.status()
    );
    assert_eq!(
        res.headers()["location"],
        "https://localhost:8443/console/users?page=2"
    );

    for path in ["/fhir/metadata", "/api/users"] {
        let res = plain
            .get(format!("http://{http}{path}"))
            .header("authorization", "Bearer CANARY-TOKEN")
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{path}: {}", res.status());
        assert!(res.headers().get("location").is_none());
        assert!(!res.text().await.unwrap().contains("CANARY"));
    }

    let post = plain
        .post(format!("http://{http}/login"))
        .send()
        .await
        .unwrap();
    assert!(post.status().is_client_error());
    assert!(post.headers().get("location").is_none());
}

#[tokio::test]
async fn requests_over_the_address_limit_get_429_with_retry_after() {
    let app = TestApp::builder()
        .set("ratelimit.per_address_per_minute", 60)
        .set("ratelimit.per_address_burst", 3)
        .spawn()
        .await;
    for _ in 0..3 {
        assert_eq!(app.get("/fhir/metadata").await.status(), StatusCode::OK);
    }
    let limited = app.get("/fhir/metadata").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_security_headers(&limited);
    // Health probes from a load balancer are never limited.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

/// Spellings of API paths that a router or a browser would take for `/fhir/…` or
/// `/api/…` once decoded or normalised (sent raw: HTTP clients would normalise them).
const NON_CANONICAL: [&str; 16] = [
    "/%66hir/Patient",
    "/%66hir/metadata",
    "/./fhir/Patient",
    "/x/../fhir/Patient",
    "/console/../fhir/Patient",
    "/%61pi/admin/users",
    "/FHIR",
    "/FHIR/Patient",
    "/Api/admin/users",
    "//fhir/Patient",
    "/fhir//Patient",
    "/fhir%2FPatient",
    "/fhir/%50atient",
    "/%2e/fhir/Patient",
    "/fhir/./metadata",
    "/fhir;x/Patient",
];

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn raw_get(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer CANARY-TOKEN\r\n\
         Connection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn non_canonical_paths_are_refused_on_both_listeners() {
    use crate::support::tlsclient::{raw_http, raw_https};
    let app = TestApp::builder().with_redirect_listener().spawn().await;
    let http = app.http.expect("redirect listener");
    // Controls: the canonical spellings still behave as before.
    let console = raw_http(http, &raw_get("/console")).await;
    assert_eq!(status_of(&console), 308, "{console}");
    assert_eq!(
        status_of(&raw_http(http, &raw_get("/fhir/Patient")).await),
        403
    );
    let metadata = raw_https(app.https, &raw_get("/fhir/metadata")).await;
    assert_eq!(status_of(&metadata), 200, "{metadata}");

    for path in NON_CANONICAL {
        for (listener, res) in [
            ("http", raw_http(http, &raw_get(path)).await),
            ("https", raw_https(app.https, &raw_get(path)).await),
        ] {
            let lower = res.to_ascii_lowercase();
            assert_eq!(status_of(&res), 400, "{listener} {path}: {res}");
            assert!(!lower.contains("\r\nlocation:"), "{listener} {path}: {res}");
            // Refused by the edge before routing: not served (as FHIR or anything else).
            assert!(lower.contains("canonical form"), "{listener} {path}: {res}");
            assert!(!res.contains("CANARY"), "{listener} {path}: {res}");
            if listener == "https" {
                assert!(lower.contains("strict-transport-security"), "{path}: {res}");
            }
        }
    }
}
