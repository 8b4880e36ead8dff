//! The optional plain-HTTP listener: console paths (GET/HEAD) are redirected to HTTPS;
//! API paths are refused without a redirect so that a client that sent a token in clear
//! text learns about it instead of silently retrying.

use super::edge::{self, EdgeSettings};
use super::render::Surface;
use crate::error::AppError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::{App, HttpRequest, HttpResponse, middleware::from_fn, web};

#[derive(Clone, Debug)]
pub struct RedirectTarget {
    /// `https://host[:port]`, from `server.public_url` (never from the Host header).
    pub base: String,
}

pub fn build_app(
    target: RedirectTarget,
    body_limit: usize,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(target))
        .app_data(web::Data::new(EdgeSettings {
            hsts: false,
            body_limit,
            cors_allowed_origins: Vec::new(),
            address_limit: None,
        }))
        .wrap(from_fn(edge::edge))
        .default_service(web::to(redirect_or_refuse))
}

async fn redirect_or_refuse(
    req: HttpRequest,
    target: web::Data<RedirectTarget>,
) -> Result<HttpResponse, AppError> {
    if Surface::of(req.path()) != Surface::Console {
        return Err(AppError::client(
            StatusCode::FORBIDDEN,
            "The API is served over HTTPS only. Nothing was processed; do not resend credentials over plain HTTP.",
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(AppError::client(
            StatusCode::FORBIDDEN,
            "The console is served over HTTPS only.",
        ));
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let location = format!("{}{}", target.base.trim_end_matches('/'), path_and_query);
    Ok(HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, location))
        .finish())
}
