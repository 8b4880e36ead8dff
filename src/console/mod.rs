//! The server-rendered admin console.

use crate::error::AppError;
use actix_web::{HttpResponse, web};
use askama::Template;

#[derive(Template)]
#[template(path = "home.html")]
struct Home;

pub async fn home() -> Result<HttpResponse, AppError> {
    let html = Home
        .render()
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("rendering home")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// Static assets are compiled into the binary so a deployment is one file.
const STATIC_FILES: &[(&str, &str, &[u8])] = &[(
    "console.css",
    "text/css; charset=utf-8",
    include_bytes!("../../static/console.css"),
)];

pub async fn static_file(file: web::Path<String>) -> Result<HttpResponse, AppError> {
    let (_, content_type, bytes) = STATIC_FILES
        .iter()
        .find(|(name, _, _)| *name == file.as_str())
        .ok_or_else(AppError::not_found)?;
    Ok(HttpResponse::Ok().content_type(*content_type).body(*bytes))
}
