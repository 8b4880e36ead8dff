//! The Prometheus listener (issue 15, metrics): off by default; when on, it parses as
//! Prometheus text, counts requests by route template and status, reports the audit
//! writer and the pool — and never carries an id or anything a client sent.

use crate::support::TestApp;

const CANARY: &str = "zz-canary-path-7f3a";

#[tokio::test]
async fn metrics_are_off_unless_a_listener_is_configured() {
    let app = TestApp::spawn().await;
    assert!(app.metrics.is_none());
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_carry_no_ids() {
    let app = TestApp::builder()
        .set("metrics.listen", "127.0.0.1:0")
        .spawn()
        .await;
    let id = uuid::Uuid::new_v4();
    for _ in 0..3 {
        // Unauthenticated: 401, and audited (so the writer commits a batch).
        assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status(), 401);
    }
    assert_eq!(app.get(&format!("/{CANARY}")).await.status(), 404);
    assert_eq!(app.get("/healthz").await.status(), 200);

    let url = format!("http://{}/metrics", app.metrics.unwrap());
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = res.text().await.unwrap();
    assert!(!body.contains(&id.to_string()), "an id in the metrics");
    assert!(!body.contains(CANARY), "a client's path in the metrics");

    let parsed = openmetrics_parser::prometheus::parse_prometheus(&body)
        .expect("Prometheus text exposition format");
    // (labels, value) of every sample of one family; a histogram's value is its count.
    let samples = |name: &str| -> Vec<(Vec<(String, String)>, f64)> {
        use openmetrics_parser::PrometheusValue as V;
        let Some(family) = parsed.families.get(name) else {
            return Vec::new();
        };
        family
            .iter_samples()
            .map(|s| {
                let labels = s
                    .get_labelset()
                    .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                let value = match &s.value {
                    V::Unknown(n) | V::Gauge(n) => n.as_f64(),
                    V::Counter(c) => c.value.as_f64(),
                    V::Histogram(h) => h.count.unwrap_or(0) as f64,
                    V::Summary(m) => m.count.unwrap_or(0) as f64,
                };
                (labels, value)
            })
            .collect()
    };
    let value = |name: &str, want: &[(&str, &str)]| -> Option<f64> {
        samples(name)
            .into_iter()
            .find(|(labels, _)| {
                want.iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
    };
    // Counters are process-wide (other apps in this test process add to them): at least.
    let reads = value(
        "custodian_http_requests_total",
        &[
            ("route", "/fhir/Patient/{id}"),
            ("status", "401"),
            ("method", "GET"),
        ],
    );
    assert!(reads.is_some_and(|v| v >= 3.0), "{reads:?}");
    assert!(
        value(
            "custodian_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(
            "custodian_http_request_duration_seconds",
            &[("route", "/healthz")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(value("custodian_audit_batch_size", &[]).is_some_and(|v| v >= 1.0));
    assert!(value("custodian_audit_commit_seconds", &[]).is_some());
    assert!(value("custodian_db_pool_connections", &[]).is_some());
    // Labels are only ever these names.
    for name in parsed.families.keys() {
        for (labels, _) in samples(name) {
            for (k, _) in labels {
                assert!(
                    ["method", "route", "status"].contains(&k.as_str()),
                    "unexpected label {k} on {name}"
                );
            }
        }
    }
}
