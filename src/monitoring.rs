//! Prometheus metrics on a listener of their own, off unless `metrics.listen` is set.
//!
//! Recorded through the `metrics` facade and rendered by `metrics-exporter-prometheus`
//! (text exposition). Labels are route templates (`/fhir/Patient/{id}`, never the path),
//! methods, status codes and fixed names: never an id, a query string or PHI. Without a
//! listener no recorder is installed and every recording is a no-op.

use actix_web::http::Method;
use actix_web::{HttpResponse, HttpServer, web};
use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Plain-HTTP listener for `GET /metrics`; absent = no metrics.
    pub listen: Option<SocketAddr>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Whether a recorder is installed: without one, the request path builds no labels.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The process-wide recorder, installed once: instances started in one process (tests)
/// share it.
fn handle() -> anyhow::Result<&'static PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)?
        .install_recorder()
        .context("metrics: cannot install the recorder")?;
    ENABLED.store(true, Ordering::Relaxed);
    Ok(HANDLE.get_or_init(|| handle))
}

/// A finished HTTP request (recorded by the edge for every response).
pub fn request(method: &Method, route: &str, status: u16, elapsed: Duration) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let method = match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    // Unmatched paths are the client's text: never a label.
    let route = if route.starts_with('/') {
        route
    } else {
        "unmatched"
    };
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("custodian_http_requests_total", &labels).increment(1);
    metrics::histogram!(
        "custodian_http_request_duration_seconds",
        "route" => route.to_string()
    )
    .record(elapsed.as_secs_f64());
    if status == 429 {
        metrics::counter!("custodian_rate_limit_rejections_total").increment(1);
    }
}

/// One audit group commit: its size and how long it took.
pub fn audit_batch(events: usize, took: Duration) {
    metrics::histogram!("custodian_audit_batch_size").record(events as f64);
    metrics::histogram!("custodian_audit_commit_seconds").record(took.as_secs_f64());
}

/// A request answered 503 because its audit event was not committed (in time).
pub fn fail_closed() {
    metrics::counter!("custodian_audit_fail_closed_total").increment(1);
}

/// Events waiting for the audit writer.
pub fn audit_queue_depth(events: usize) {
    metrics::gauge!("custodian_audit_queue_depth").set(events as f64);
}

/// One detectors' pass: whether this instance ran it (else another held the lock), how
/// many events the detectors are behind the chain head, the break-glass grants active, and
/// the kinds of the alerts it raised (fixed codes: the only label).
pub fn detector_pass<'a>(
    ran: bool,
    lag: i64,
    active_grants: i64,
    raised: impl Iterator<Item = &'a str>,
) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if ran {
        metrics::gauge!("custodian_detector_lag_events").set(lag.max(0) as f64);
        metrics::gauge!("custodian_break_glass_active_grants").set(active_grants.max(0) as f64);
    }
    for kind in raised {
        metrics::counter!("custodian_alerts_total", "detector" => kind.to_string()).increment(1);
    }
}

/// What became of one webhook delivery attempt: the only label of
/// `custodian_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Failed; it will be retried.
    Failed,
    /// Failed for the last time: dead-lettered.
    Dead,
}

impl DeliveryOutcome {
    pub const ALL: [DeliveryOutcome; 3] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Failed,
        DeliveryOutcome::Dead,
    ];

    pub fn code(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Dead => "dead",
        }
    }
}

/// One webhook delivery attempt, by outcome.
pub fn webhook_delivery(outcome: DeliveryOutcome) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    metrics::counter!("custodian_webhook_deliveries_total", "outcome" => outcome.code())
        .increment(1);
}

/// The metrics listener, `GET /metrics` in Prometheus text format, and its bound address.
/// `pool` reports the database pool's (connections, idle connections) at each scrape.
pub fn server<P>(
    listen: SocketAddr,
    pool: P,
) -> anyhow::Result<(actix_web::dev::Server, SocketAddr)>
where
    P: Fn() -> (u32, u32) + Clone + Send + Sync + 'static,
{
    let handle = handle()?;
    let server = HttpServer::new(move || {
        let pool = pool.clone();
        actix_web::App::new().route(
            "/metrics",
            web::get().to(move || {
                let (connections, idle) = pool();
                metrics::gauge!("custodian_db_pool_connections").set(f64::from(connections));
                metrics::gauge!("custodian_db_pool_idle_connections").set(f64::from(idle));
                handle.run_upkeep();
                let body = handle.render();
                async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4; charset=utf-8")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .tcp_nodelay(true)
    .disable_signals()
    .bind(listen)
    .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .context("metrics.listen: no address bound")?;
    Ok((server.run(), bound))
}
