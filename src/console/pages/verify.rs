//! "Verify now" on the dashboard: `POST /console/audit/verify` starts a verification of
//! the whole audit chain (`audit::ops::verify_database`, the check `custodian audit
//! verify` runs, against the checkpoints in the database) in the background; its progress
//! and result are kept in `audit_verifications` (so every instance's dashboard shows
//! them), and the start and the result are recorded (`audit-verify AuditLog`: permit when
//! the chain verified, error when it did not).

use super::actions::Form;
use super::review::{admit, reviewer};
use crate::audit::{AuditAction, Outcome, Recorder, ResourceType as Kind, What, checks, ops};
use crate::console::gate::{ConsoleForm, check_post, see_other};
use crate::error::AppError;
use crate::policy::review::Review;
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// How often a running verification writes its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn what() -> What {
    What::new(AuditAction::AuditVerify).on(Kind::AuditLog)
}

pub async fn verify_now(
    req: HttpRequest,
    page: ConsoleForm,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let form = Form::parse(&body);
    check_post(&req, &page.me.session, form.get("csrf_token"))?;
    admit(&page, Review::VerifyChain, what()).await?;
    let by = page.me.user.id.as_uuid();
    let now = page.state.clock.now();
    let started = page
        .state
        .db
        .run(move |c| {
            let head = crate::audit::store::head(c)?;
            Ok(checks::start(c, by, head.seq, now)?)
        })
        .await?;
    let Some(id) = started else {
        return Err(AppError::client(
            StatusCode::CONFLICT,
            "A verification is already running: its progress is on the dashboard.",
        ));
    };
    let recorder = reviewer(&page);
    recorder.permit(what().id(id), []).await?;
    actix_web::rt::spawn(run(page.state.clone(), recorder, id));
    Ok(see_other("/console"))
}

/// Runs the verification on the blocking pool, writing its progress meanwhile; then
/// records the result in its row and in the audit trail.
async fn run(state: web::Data<AppState>, recorder: Recorder, id: Uuid) {
    let done = Arc::new(AtomicI64::new(0));
    let ticker = {
        let (state, done) = (state.clone(), done.clone());
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(PROGRESS_EVERY).await;
                let n = done.load(Ordering::Relaxed);
                let _ = state.db.run(move |c| Ok(checks::progress(c, id, n)?)).await;
            }
        })
    };
    let key = state.audit.chain_key().clone();
    let public = state.audit.signer().public_key();
    let counter = done.clone();
    let verdict = state
        .db
        .run(move |c| {
            ops::verify_database(c, key, public, Vec::new(), |n| {
                counter.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed)
            })
            .map_err(|_| AppError::internal("the verification could not read the chain"))
        })
        .await;
    ticker.abort();
    let result = match verdict {
        Ok(Ok(v)) => Ok(i64::try_from(v.events).unwrap_or(i64::MAX)),
        Ok(Err(f)) => Err((f.seq, f.problem)),
        Err(_) => Err((0, "the verification could not read the chain".to_string())),
    };
    let outcome = if result.is_ok() {
        Outcome::Permit
    } else {
        Outcome::Error
    };
    let now = state.clock.now();
    if let Err(e) = state
        .db
        .run(move |c| checks::finish(c, id, result, now))
        .await
    {
        tracing::error!(error = %e, "the result of a chain verification could not be stored");
    }
    let event = recorder.event(what().id(id), [], outcome).build();
    if let Err(e) = recorder.record(event).await {
        tracing::error!(error = %e, "the result of a chain verification could not be recorded");
    }
}
