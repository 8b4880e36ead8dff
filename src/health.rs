//! Liveness and readiness probes (no authentication, no PHI).

use crate::error::AppError;
use crate::state::AppState;
use actix_web::{HttpResponse, web};

/// The process is alive and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// The database answers and its schema is current.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    state.db.run(crate::db::check_ready).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}
