//! The one middleware that every route passes through: request id, early limits, CORS,
//! error bodies in the caller's format, security headers, no-store
//! caching and the access log line.

use super::render::{self, Surface};
use crate::domain::request_id::{self, RequestId};
use crate::error::SafeMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use std::time::Instant;
use tracing::Instrument;

/// Per-listener settings of the edge middleware.
#[derive(Clone)]
pub struct EdgeSettings {
    /// Send HSTS (only on the HTTPS listener).
    pub hsts: bool,
    pub body_limit: usize,
    pub cors_allowed_origins: Vec<String>,
    /// Per-source-address limit (health probes exempt).
    pub address_limit: Option<std::sync::Arc<super::ratelimit::RateLimiter>>,
}

pub const CSP: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; \
frame-ancestors 'none'; form-action 'self'";
pub const HSTS: &str = "max-age=31536000; includeSubDomains";
const PERMISSIONS_POLICY: &str = "accelerometer=(), camera=(), geolocation=(), gyroscope=(), \
magnetometer=(), microphone=(), payment=(), usb=(), interest-cohort=()";

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let settings = req
        .app_data::<actix_web::web::Data<EdgeSettings>>()
        .map(|d| d.get_ref().clone())
        .ok_or_else(|| actix_web::error::ErrorInternalServerError("edge settings missing"))?;
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(request_id::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(request_id.clone());
    let surface = Surface::of(req.path());
    let method = req.method().clone();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| settings.cors_allowed_origins.iter().any(|a| a == o))
        .map(str::to_string);
    let span = tracing::info_span!("request", request_id = %request_id);

    // First: nothing below (the router, the guard, the redirect listener) may see a second
    // spelling of a path (`web::path`).
    let canonical = super::path::is_canonical(req.path());
    let refusal = if canonical {
        early_refusal(&req, &settings)
    } else {
        None
    };
    let res = match refusal {
        _ if !canonical => req.into_response(
            crate::error::AppError::bad_request(super::path::NOT_CANONICAL).error_response(),
        ),
        Some(refusal) if surface == Surface::Console || is_preflight(&req) => {
            req.into_response(refusal.response())
        }
        Some(refusal) => {
            // An API request refused here is still routed, so that its route's guard
            // (`access::guard::contain`) audits the refusal and answers it without running
            // the handler; a request no guard claims (no such route) is answered here.
            req.extensions_mut().insert(refusal);
            let res = next
                .call(req)
                .instrument(span.clone())
                .await?
                .map_into_boxed_body();
            let unclaimed = res.request().extensions_mut().remove::<EdgeRefusal>();
            match unclaimed {
                Some(refusal) => res.into_response(refusal.response()),
                None => res,
            }
        }
        None => match early_response(&req, origin.as_deref()) {
            Some(early) => req.into_response(early),
            // Handler errors and panics were already turned into responses by
            // `access::guard::contain`.
            None => next
                .call(req)
                .instrument(span.clone())
                .await?
                .map_into_boxed_body(),
        },
    };

    let status = res.status();
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "-".to_string());
    let (req_back, mut response) = res.into_parts();
    let own_page = response.extensions().get::<render::OwnPage>().is_some();
    if (status.is_client_error() || status.is_server_error()) && !own_page {
        let message = response
            .extensions()
            .get::<SafeMessage>()
            .map(|m| m.0.clone())
            .unwrap_or_else(|| render::default_message(status).into());
        response = render::rewrite(response, surface, &message, request_id.as_str());
    }
    let path_is_static = req_back.path().starts_with("/static/");
    apply_headers(
        response.headers_mut(),
        &settings,
        &request_id,
        path_is_static,
        origin.as_deref(),
    );
    crate::monitoring::request(&method, &route, status.as_u16(), started.elapsed());
    tracing::info!(
        target: "custodian::access",
        parent: &span,
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(ServiceResponse::new(req_back, response))
}

/// A request the edge refuses before routing. On the console and public surface it is
/// answered at once; on the API (`/fhir`, `/api`) it travels to the route's guard as a
/// request extension, which audits it and answers [`EdgeRefusal::response`] without
/// running the handler (every request to a PHI or admin route leaves an audit event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeRefusal {
    /// Over the per-address request limit (checked first, so that a flood of any kind of
    /// request is cheap).
    RateLimited { retry_after_secs: u64 },
    /// A declared `Content-Length` above `server.body_limit_bytes`: the body is not read.
    TooLarge,
}

impl EdgeRefusal {
    pub fn response(self) -> HttpResponse {
        match self {
            EdgeRefusal::RateLimited { retry_after_secs } => {
                crate::error::AppError::RateLimited { retry_after_secs }.error_response()
            }
            EdgeRefusal::TooLarge => HttpResponse::new(StatusCode::PAYLOAD_TOO_LARGE),
        }
    }
}

/// The per-address limit, then the declared body size.
fn early_refusal(req: &ServiceRequest, settings: &EdgeSettings) -> Option<EdgeRefusal> {
    let is_probe = matches!(req.path(), "/healthz" | "/readyz");
    if let (Some(limit), Some(peer), false) = (&settings.address_limit, req.peer_addr(), is_probe)
        && let Err(wait) = limit.check(&peer.ip().to_string())
    {
        let retry_after_secs = wait.as_secs() + 1;
        return Some(EdgeRefusal::RateLimited { retry_after_secs });
    }
    let declared_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > settings.body_limit as u64) {
        return Some(EdgeRefusal::TooLarge);
    }
    None
}

fn is_preflight(req: &ServiceRequest) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers before routing: CORS preflights.
fn early_response(req: &ServiceRequest, allowed_origin: Option<&str>) -> Option<HttpResponse> {
    if is_preflight(req) {
        return Some(match allowed_origin {
            Some(_) => {
                let mut res = HttpResponse::NoContent().finish();
                let h = res.headers_mut();
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, PUT, DELETE"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(
                        "authorization, content-type, if-match, x-request-id, x-purpose-of-use",
                    ),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
                res
            }
            None => HttpResponse::new(StatusCode::FORBIDDEN),
        });
    }
    None
}

/// The security headers every response carries, errors and 404s included.
pub fn apply_headers(
    h: &mut HeaderMap,
    settings: &EdgeSettings,
    request_id: &RequestId,
    is_static: bool,
    allowed_origin: Option<&str>,
) {
    let fixed: [(HeaderName, &'static str); 7] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not "no-referrer": under it browsers send `Origin: null` on our own form POSTs,
        // which the console's Origin check must refuse. Other sites still get nothing.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            PERMISSIONS_POLICY,
        ),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    if settings.hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    if is_static {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        h.insert(HeaderName::from_static(request_id::HEADER), v);
    }
    if let Some(origin) = allowed_origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}
