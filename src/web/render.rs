//! Error bodies in the caller's format: FHIR `OperationOutcome` under `/fhir`,
//! `application/problem+json` under `/api`, an HTML page elsewhere. Every body is built
//! from a fixed message and the request id — never from the request.

use crate::error::{INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE};
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use askama::Template;

/// Which part of the product a path belongs to; decides the error format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Fhir,
    Api,
    Console,
}

impl Surface {
    pub fn of(path: &str) -> Surface {
        if path == "/fhir" || path.starts_with("/fhir/") {
            Surface::Fhir
        } else if path == "/api" || path.starts_with("/api/") {
            Surface::Api
        } else {
            Surface::Console
        }
    }
}

/// Marks an error-status response whose body is already our own HTML page (for example
/// the console's "no access" page); the edge leaves its body alone.
#[derive(Clone, Copy, Debug)]
pub struct OwnPage;

/// The message used when an error response carries none of ours (framework errors).
pub fn default_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "The request is malformed.",
        401 => "Authentication is required.",
        403 => "Access to this resource is denied.",
        404 => "The requested resource was not found.",
        405 => "This method is not allowed on this resource.",
        406 => "The requested representation is not available.",
        408 => "The request took too long to arrive.",
        409 => "The request conflicts with the current state of the resource.",
        411 => "A Content-Length header is required.",
        412 => "A precondition of the request failed.",
        413 => "The request body is too large.",
        414 => "The request URI is too long.",
        415 => "This content type is not supported here.",
        422 => "The request body is not acceptable.",
        429 => "Too many requests. Retry later.",
        431 => "The request headers are too large.",
        503 => UNAVAILABLE_MESSAGE,
        s if s >= 500 => INTERNAL_MESSAGE,
        _ => "The request could not be processed.",
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// FHIR `issue.code` for a status (https://hl7.org/fhir/R4/valueset-issue-type.html).
fn fhir_issue_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 415 | 422 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 => "not-found",
        405 | 501 => "not-supported",
        409 | 412 => "conflict",
        413 => "too-costly",
        429 => "throttled",
        503 => "transient",
        _ => "exception",
    }
}

pub fn error_body(
    surface: Surface,
    status: StatusCode,
    message: &str,
    request_id: &str,
) -> (HeaderValue, String) {
    match surface {
        Surface::Fhir => (
            HeaderValue::from_static("application/fhir+json"),
            serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "error",
                    "code": fhir_issue_code(status),
                    "diagnostics": message,
                    "details": { "text": format!("Request id {request_id}") },
                }],
            })
            .to_string(),
        ),
        Surface::Api => (
            HeaderValue::from_static("application/problem+json"),
            serde_json::json!({
                "type": "about:blank",
                "title": status.canonical_reason().unwrap_or("Error"),
                "status": status.as_u16(),
                "detail": message,
                "request_id": request_id,
            })
            .to_string(),
        ),
        Surface::Console => {
            let page = ErrorPage {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("Error"),
                message,
                request_id,
            };
            let html = page.render().unwrap_or_else(|_| {
                format!(
                    "<!doctype html><title>Error</title><p>{}</p>",
                    status.as_u16()
                )
            });
            (HeaderValue::from_static("text/html; charset=utf-8"), html)
        }
    }
}

/// Replaces the body of an error response, keeping its status and headers.
pub fn rewrite(
    res: HttpResponse,
    surface: Surface,
    message: &str,
    request_id: &str,
) -> HttpResponse {
    let status = res.status();
    let (content_type, body) = error_body(surface, status, message, request_id);
    let mut out = HttpResponse::with_body(status, body).map_into_boxed_body();
    for (name, value) in res.headers() {
        if name != CONTENT_TYPE && name != actix_web::http::header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out.headers_mut().insert(CONTENT_TYPE, content_type);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surfaces_are_decided_by_path_prefix() {
        assert_eq!(Surface::of("/fhir/Patient/1"), Surface::Fhir);
        assert_eq!(Surface::of("/fhirx"), Surface::Console);
        assert_eq!(Surface::of("/api/users"), Surface::Api);
        assert_eq!(Surface::of("/"), Surface::Console);
    }

    #[test]
    fn html_error_page_escapes_its_message() {
        let (_, body) = error_body(Surface::Console, StatusCode::BAD_REQUEST, "<b>x</b>", "rid");
        assert!(!body.contains("<b>x</b>"));
        assert!(
            body.contains("&#60;b&#62;x") || body.contains("&lt;b&gt;x"),
            "{body}"
        );
        assert!(body.contains("rid"));
    }
}
