//! The console's webhooks page (administrators): the endpoints with their state and a
//! disable and a rotate-secret form, a form to register one, and the recent deliveries
//! with their outcome and a redeliver button. Every change is an [`Op`] through
//! [`super::actions`] (step-up for the endpoint changes); a new or rotated secret is shown
//! once, on the answer to the change, and never again.

use super::actions::{self, Form};
use super::time;
use crate::admin::op::{Op, Touched, audited};
use crate::audit::{AuditAction, ResourceType as Kind};
use crate::console::gate::{AdminForm, AdminPage, Chrome, Console};
use crate::db::webhooks as hooks;
use crate::domain::{WebhookDeliveryId, WebhookEndpointId};
use crate::error::AppError;
use crate::secret::Secret;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use askama_web::WebTemplate;

/// Most deliveries the page lists.
const DELIVERIES_SHOWN: i64 = 100;

pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub enabled: bool,
    pub created: String,
    pub rotated: String,
}

pub struct DeliveryView {
    pub id: String,
    pub endpoint: String,
    pub message: String,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub outcome: String,
    pub last_attempt: String,
    pub delivered: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/webhooks.html")]
pub struct WebhooksPage {
    chrome: Chrome,
    message: &'static str,
    endpoints: Vec<EndpointView>,
    deliveries: Vec<DeliveryView>,
}

/// GET /console/webhooks.
pub async fn webhooks_page(req: HttpRequest, page: AdminPage) -> Result<WebhooksPage, AppError> {
    let (endpoints, deliveries) = audited(
        &*page,
        AuditAction::Search,
        Some(Kind::WebhookEndpoint),
        async {
            let found = page
                .state
                .db
                .run(|c| {
                    Ok((
                        hooks::endpoints(c)?,
                        hooks::recent_deliveries(c, DELIVERIES_SHOWN)?,
                    ))
                })
                .await?;
            Ok((found, Touched::default()))
        },
    )
    .await?;
    Ok(WebhooksPage {
        chrome: page.0.chrome,
        message: super::done_from(&req),
        endpoints: endpoints
            .into_iter()
            .map(|e| EndpointView {
                id: e.id.to_string(),
                url: e.url,
                enabled: e.enabled,
                created: time(e.created_at),
                rotated: e.secret_rotated_at.map(time).unwrap_or_default(),
            })
            .collect(),
        deliveries: deliveries
            .into_iter()
            .map(|d| DeliveryView {
                id: d.id.to_string(),
                endpoint: d.endpoint_id.to_string(),
                message: crate::webhooks::message_id(d.message_id),
                event_type: d.event_type,
                state: d.state,
                attempts: d.attempts,
                outcome: match (d.last_outcome, d.last_status) {
                    (Some(o), Some(s)) => format!("{o} ({s})"),
                    (Some(o), None) => o,
                    _ => String::new(),
                },
                last_attempt: d.last_attempt_at.map(time).unwrap_or_default(),
                delivered: d.delivered_at.map(time).unwrap_or_default(),
            })
            .collect(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "console/webhook_secret.html")]
pub struct SecretPage {
    chrome: Chrome,
    endpoint: String,
    secret: String,
}

/// The answer to a change that made a secret: the one time it is shown.
pub fn secret_page(
    page: &Console,
    endpoint: WebhookEndpointId,
    secret: Secret<String>,
) -> Result<HttpResponse, AppError> {
    let body = SecretPage {
        chrome: Chrome {
            subject: page.chrome.subject.clone(),
            minutes_left: page.chrome.minutes_left,
            seconds_left: page.chrome.seconds_left,
            csrf_token: page.chrome.csrf_token.clone(),
            admin: page.chrome.admin,
        },
        endpoint: endpoint.to_string(),
        secret: secret.expose().clone(),
    }
    .render()
    .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("webhook secret page")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body))
}

/// POST /console/webhooks `{csrf_token, url}`: registers an endpoint.
pub async fn create(
    req: HttpRequest,
    page: AdminForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    actions::submit(&req, page, &body, |f: &Form| {
        Ok(Op::CreateWebhookEndpoint {
            url: f.get("url").unwrap_or_default().to_string(),
        })
    })
    .await
}

/// POST /console/webhooks/{id}/{disable|rotate}.
pub async fn endpoint_action(
    req: HttpRequest,
    page: AdminForm,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let (id, action) = path.into_inner();
    actions::submit(&req, page, &body, |_| {
        let endpoint = WebhookEndpointId::parse(&id).ok_or_else(AppError::not_found)?;
        match action.as_str() {
            "disable" => Ok(Op::DisableWebhookEndpoint { endpoint }),
            "rotate" => Ok(Op::RotateWebhookSecret { endpoint }),
            _ => Err(AppError::not_found()),
        }
    })
    .await
}

/// POST /console/webhooks/deliveries/{id}/redeliver.
pub async fn redeliver(
    req: HttpRequest,
    page: AdminForm,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    actions::submit(&req, page, &body, |_| {
        let delivery = WebhookDeliveryId::parse(&path).ok_or_else(AppError::not_found)?;
        Ok(Op::RedeliverWebhook { delivery })
    })
    .await
}
