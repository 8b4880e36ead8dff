//! Signed webhook delivery (Standard Webhooks). Messages wait in the outbox
//! (`db::webhooks`, written in the transaction of what they report); this worker sends
//! each due delivery to its endpoint over HTTPS, signed with the endpoint's secret by the
//! `standardwebhooks` crate (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`).
//!
//! One runner at a time across instances: a pass takes the session-level advisory lock
//! [`db::webhooks::DELIVERY_LOCK_KEY`] on a connection of its own (closing it, whatever
//! happened, releases the lock), like the break-glass expiry sweeper. A failed attempt
//! (no 2xx answer in time) is retried after an exponential backoff with a cap; after
//! `webhooks.max_attempts` failures the delivery is dead-lettered until an administrator
//! redelivers it from the console. Redirects are not followed.
//!
//! The body is `{"type", "timestamp", "data"}`: ids, codes and a console link built from
//! `server.public_url` — never PHI (the outbox holds nothing else). The `webhook-id` is
//! the message's (the same for every endpoint and every retry, so a receiver can drop a
//! duplicate); the signature's timestamp is the time of the attempt.

pub mod config;
pub mod guard;

use crate::crypto::Keyring;
use crate::db::Db;
use crate::db::webhooks::{self as store, AttemptResult, Due};
use crate::domain::SharedClock;
use crate::error::AppError;
use crate::monitoring::{self, DeliveryOutcome};
use crate::state::AppState;
use anyhow::Context;
use config::WebhookConfig;
use diesel::PgConnection;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// False when another runner held the lock (nothing was attempted).
    pub ran: bool,
    pub delivered: usize,
    /// Failed attempts to be retried.
    pub failed: usize,
    /// Failed attempts that dead-lettered their delivery.
    pub dead: usize,
}

/// The delivery worker of one instance.
pub struct Deliverer {
    db: Db,
    keyring: Arc<Keyring>,
    clock: SharedClock,
    cfg: WebhookConfig,
    /// `server.public_url` without a trailing slash: the console links start with it.
    public_url: String,
    client: reqwest::Client,
}

impl Deliverer {
    /// Reads `webhooks.ca_file` (if set) and builds the HTTPS client.
    pub fn new(
        db: Db,
        keyring: Arc<Keyring>,
        clock: SharedClock,
        cfg: WebhookConfig,
        public_url: &str,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(cfg.timeout_secs))
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .user_agent(concat!("Custodian-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !cfg.allow_private_hosts {
            // Every name is resolved through the guard, which refuses internal addresses
            // (address literals are checked in `send`).
            builder = builder.dns_resolver(Arc::new(guard::GuardedResolver));
        }
        if !cfg.ca_file.trim().is_empty() {
            let pem = std::fs::read(cfg.ca_file.trim())
                .with_context(|| format!("webhooks.ca_file: cannot read {}", cfg.ca_file))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .context("webhooks.ca_file: is not a PEM certificate bundle")?;
            if roots.is_empty() {
                anyhow::bail!("webhooks.ca_file: holds no certificate");
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let client = builder
            .build()
            .context("webhooks: cannot build the HTTPS client")?;
        Ok(Deliverer {
            db,
            keyring,
            clock,
            cfg,
            public_url: public_url.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// One pass: under the advisory lock (if this session gets it), every due delivery
    /// (at most `webhooks.batch_max`) is attempted once and its result recorded. Returns
    /// the session for the next pass; on an error the session is dropped (closed), which
    /// releases the lock.
    pub async fn pass(
        &self,
        session: Option<PgConnection>,
    ) -> Result<(PgConnection, Pass), AppError> {
        let (db, keyring) = (self.db.clone(), self.keyring.clone());
        let (now, limit) = (self.clock.now(), self.cfg.batch_max);
        let (mut session, due) = blocking(move || {
            let mut conn = match session {
                Some(conn) => conn,
                None => db.dedicated()?,
            };
            if !store::try_lock_delivery(&mut conn)? {
                return Ok((conn, None));
            }
            let due = store::due(&mut conn, &keyring, now, limit)?;
            Ok((conn, Some(due)))
        })
        .await?;
        let Some(due) = due else {
            return Ok((session, Pass::default()));
        };
        let mut pass = Pass {
            ran: true,
            ..Pass::default()
        };
        let attempts =
            futures_util::future::join_all(due.into_iter().map(|d| self.attempt(d))).await;
        let now = self.clock.now();
        let results: Vec<_> = attempts
            .into_iter()
            .map(|(id, failed_before, sent)| (id, self.judge(failed_before, sent, now)))
            .collect();
        for (_, r) in &results {
            let outcome = match r {
                AttemptResult::Delivered { .. } => {
                    pass.delivered += 1;
                    DeliveryOutcome::Delivered
                }
                AttemptResult::Failed { retry_at: None, .. } => {
                    pass.dead += 1;
                    DeliveryOutcome::Dead
                }
                AttemptResult::Failed { .. } => {
                    pass.failed += 1;
                    DeliveryOutcome::Failed
                }
            };
            monitoring::webhook_delivery(outcome);
        }
        let session = blocking(move || {
            for (id, r) in results {
                store::record_attempt(&mut session, id, r, now)?;
            }
            store::unlock_delivery(&mut session)?;
            Ok(session)
        })
        .await?;
        Ok((session, pass))
    }

    /// Signs and sends one delivery: the delivery, its earlier attempts and what the
    /// receiver answered (a status) or why there was no answer (an outcome code).
    async fn attempt(
        &self,
        d: Due,
    ) -> (
        crate::domain::WebhookDeliveryId,
        i32,
        Result<u16, &'static str>,
    ) {
        let sent = self.send(&d).await;
        if let Err(code) = sent {
            // The endpoint's URL is an administrator's setting, not PHI; the body is not
            // logged.
            tracing::warn!(delivery = %d.id, outcome = code, "webhook delivery attempt failed");
        }
        (d.id, d.attempts, sent)
    }

    async fn send(&self, d: &Due) -> Result<u16, &'static str> {
        if !self.cfg.allow_private_hosts && guard::forbidden_literal(&d.url) {
            return Err("forbidden-address");
        }
        let body = body(d, &self.public_url);
        let msg_id = message_id(d.message_id);
        // The signature's time is the real time of the attempt (the receiver compares it
        // with its own clock), whatever clock schedules the retries.
        let timestamp = chrono::Utc::now().timestamp();
        let signature = standardwebhooks::Webhook::from_bytes(d.key.to_vec())
            .and_then(|w| w.sign(&msg_id, timestamp, body.as_bytes()))
            .map_err(|_| "signing")?;
        let res = self
            .client
            .post(&d.url)
            .header(standardwebhooks::HEADER_WEBHOOK_ID, msg_id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) if guard::stopped_by_guard(&e) => Err("forbidden-address"),
            Err(e) if e.is_timeout() => Err("timeout"),
            Err(e) if e.is_connect() => Err("connect"),
            Err(_) => Err("request"),
        }
    }

    /// The result of an attempt: delivered on a 2xx answer; otherwise retried after the
    /// backoff, or dead-lettered after `webhooks.max_attempts` failures.
    fn judge(
        &self,
        failed_before: i32,
        sent: Result<u16, &'static str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> AttemptResult {
        let (outcome, status) = match sent {
            Ok(status) if (200..300).contains(&status) => {
                return AttemptResult::Delivered { status };
            }
            Ok(status) => ("http-status", Some(status)),
            Err(code) => (code, None),
        };
        let failed = u32::try_from(failed_before).unwrap_or(0).saturating_add(1);
        let retry_at = self
            .cfg
            .retry_after(failed)
            .and_then(|wait| chrono::Duration::from_std(wait).ok().map(|wait| now + wait));
        AttemptResult::Failed {
            outcome,
            status,
            retry_at,
        }
    }
}

/// The Standard Webhooks message id of an outbox message.
pub fn message_id(message: uuid::Uuid) -> String {
    format!("msg_{}", message.simple())
}

/// The JSON body of a delivery: the message's type, time and data, its console path
/// turned into a link under `public_url`.
fn body(d: &Due, public_url: &str) -> String {
    let mut data = d.data.clone();
    if let Some(obj) = data.as_object_mut()
        && let Some(path) = obj.remove("console_path")
        && let Some(path) = path.as_str()
    {
        obj.insert(
            "console_url".into(),
            serde_json::Value::String(format!("{public_url}{path}")),
        );
    }
    serde_json::json!({
        "type": d.event_type,
        "timestamp": d.message_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

async fn blocking<T, F>(f: F) -> Result<T, AppError>
where
    F: FnOnce() -> Result<T, AppError> + Send + 'static,
    T: Send + 'static,
{
    actix_web::web::block(f)
        .await
        .map_err(|_| AppError::internal("webhook delivery task was cancelled"))?
}

/// Runs [`Deliverer::pass`] every `webhooks.poll_ms` for as long as the application state
/// lives (the task holds it weakly). Its session is opened on first use and reopened
/// after an error.
pub fn spawn(state: Weak<AppState>, deliverer: Deliverer) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(deliverer.cfg.poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session: Option<PgConnection> = None;
        loop {
            tick.tick().await;
            if state.upgrade().is_none() {
                return;
            }
            match deliverer.pass(session.take()).await {
                Ok((kept, _)) => session = Some(kept),
                Err(e) => tracing::warn!(error = %e, "webhook delivery pass not done yet"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_body_carries_type_time_data_and_a_console_link() {
        let d = Due {
            id: crate::domain::WebhookDeliveryId::new(),
            message_id: uuid::Uuid::nil(),
            event_type: "alert.raised".into(),
            data: serde_json::json!({"alert_id": "a", "console_path": "/console/alerts/a"}),
            message_at: chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            url: "https://example.test/hook".into(),
            key: zeroize::Zeroizing::new(vec![1; 32]),
            attempts: 0,
        };
        let v: serde_json::Value =
            serde_json::from_str(&body(&d, "https://custodian.example")).unwrap();
        assert_eq!(v["type"], "alert.raised");
        assert_eq!(v["timestamp"], "2026-01-02T03:04:05.000Z");
        assert_eq!(
            v["data"]["console_url"],
            "https://custodian.example/console/alerts/a"
        );
        assert!(v["data"].get("console_path").is_none());
        assert_eq!(
            message_id(uuid::Uuid::nil()),
            "msg_00000000000000000000000000000000"
        );
    }
}
