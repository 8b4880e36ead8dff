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

    let parsed =
        prom_text_format_parser::Scrape::parse(&body).expect("Prometheus text exposition format");
    // (labels, value) of every sample of one family; a histogram's value is its count.
    let samples = |name: &str| -> Vec<(Vec<(String, String)>, f64)> {
        use prom_text_format_parser::{Type, ValueType};
        let Some(metric) = parsed.metrics.iter().find(|m| m.name == name) else {
            return Vec::new();
        };
        metric
            .samples
            .iter()
            .filter(|s| {
                !matches!(metric.kind, Type::Histogram | Type::Summary)
                    || s.value.value_type == ValueType::Count
            })
            .map(|s| {
                let labels = s.labels.iter().map(|l| (l.key.clone(), l.value.clone()));
                (labels.collect(), s.value.value.as_f64())
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
    for metric in &parsed.metrics {
        let name = &metric.name;
        for (labels, _) in samples(name) {
            for (k, v) in labels {
                // A detector label is an alert-kind code, a fixed vocabulary.
                let detector = k == "detector"
                    && custodian::db::alerts::AlertKind::ALL
                        .iter()
                        .any(|kind| kind.code() == v);
                // An outcome label is a webhook delivery outcome code, a fixed vocabulary.
                let outcome = k == "outcome"
                    && custodian::monitoring::DeliveryOutcome::ALL
                        .iter()
                        .any(|o| o.code() == v);
                assert!(
                    detector || outcome || ["method", "route", "status"].contains(&k.as_str()),
                    "unexpected label {k} on {name}"
                );
            }
        }
    }
}
