//! The Bulk Data `$export` routes (Bulk Data Access IG v2), each through the access
//! pipeline on its declared [`Action::Export`](crate::policy::Action) operation:
//!
//! - kick-off `GET /fhir/$export`, `/fhir/Group/{id}/$export`, `/fhir/Patient/$export`
//!   with `Prefer: respond-async` → 202 and the absolute status URL in `Content-Location`;
//! - `GET /fhir/$export-status/{id}` → 202 (`X-Progress`, `Retry-After`) while it runs,
//!   200 with the manifest when done; `DELETE` → 202, the job and its files are gone;
//! - `GET /fhir/$export-file/{link}` → one output file, by its short-lived link.
//!
//! A person's token needs a recent multi-factor sign-in (RFC 9470 step-up, the check
//! break-glass uses); jobs are seen only by their requester (404 for anyone else).

use super::files::{self, Link};
use super::request;
use super::runner::Progress;
use super::source::PartSpec;
use crate::access::{Pipeline, refusal};
use crate::audit::{AuditAction, DenyReason, ResourceType as Kind, What};
use crate::db::export_jobs::{self, Job, NewJob};
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::break_glass::{Authentication, StepUpFor, judge_authentication_for};
use crate::policy::export::{self as rules, Kind as ExportKind, Level};
use crate::policy::{Decision, Interaction, ResourceType, Target};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use std::io::BufRead;
use uuid::Uuid;

/// What the handlers need of the export configuration.
pub struct ExportSettings {
    pub config: super::config::ExportConfig,
    /// `<server.public_url>/fhir`.
    pub base: String,
    /// Whether `crypto.export_key` is set (de-identified exports need it).
    pub has_key: bool,
}

const NDJSON: &str = "application/fhir+ndjson";
const BUSY: &str = "An export of yours is still running: wait for it to finish or cancel it (DELETE its status URL) before starting another.";

fn job_what(action: AuditAction, id: Option<Uuid>) -> What {
    let what = What::new(action).on(Kind::ExportJob);
    match id {
        Some(id) => what.id(id),
        None => what,
    }
}

/// `Prefer: respond-async` (RFC 7240), required by the IG for a kick-off.
fn respond_async(req: &HttpRequest) -> bool {
    req.headers().get_all("prefer").any(|v| {
        v.to_str().is_ok_and(|t| {
            t.split([',', ';'])
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

/// The step-up of a person (a service has no sign-in to step up: its client credentials
/// are the whole authentication, see docs/export.md).
async fn step_up(pipeline: &Pipeline) -> Result<(), AppError> {
    if pipeline.is_service() {
        return Ok(());
    }
    let token = &pipeline.principal.token;
    let auth = Authentication {
        auth_time: token.auth_time,
        acr: token.acr.as_deref(),
        amr: &token.amr,
    };
    let state = pipeline.state();
    let now = state.clock.now().timestamp();
    if let Err(challenge) =
        judge_authentication_for(&state.break_glass, &auth, now, StepUpFor::Export)
    {
        pipeline
            .recorder
            .deny(
                job_what(AuditAction::Export, None),
                [],
                DenyReason::StepUpRequired,
            )
            .await?;
        return Err(AppError::InsufficientAuthentication { challenge });
    }
    Ok(())
}

pub async fn kick_off_system(
    req: HttpRequest,
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
) -> Result<HttpResponse, AppError> {
    kick_off(req, pipeline, settings, Level::System, None).await
}

pub async fn kick_off_patient(
    req: HttpRequest,
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
) -> Result<HttpResponse, AppError> {
    kick_off(req, pipeline, settings, Level::Patient, None).await
}

pub async fn kick_off_group(
    req: HttpRequest,
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let group = Uuid::parse_str(&path).ok();
    kick_off(req, pipeline, settings, Level::Group, Some(group)).await
}

async fn kick_off(
    req: HttpRequest,
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
    level: Level,
    group: Option<Option<Uuid>>,
) -> Result<HttpResponse, AppError> {
    step_up(&pipeline).await?;
    if !respond_async(&req) {
        return Err(AppError::bad_request(
            "Bulk export is asynchronous: send the header Prefer: respond-async.",
        ));
    }
    let asked = request::parse(req.query_string())?;
    let roles = pipeline.principal.user.roles.clone();
    let kind = asked.kind.unwrap_or(rules::default_kind(&roles, level));
    let what = job_what(AuditAction::Export, None);
    let permitted = match rules::decide(&roles, kind, level) {
        Ok(parts) => parts,
        Err(reason) => {
            pipeline.recorder.deny(what, [], reason).await?;
            return Err(refusal::on_capability(reason));
        }
    };
    if let Some(types) = &asked.types
        && types
            .iter()
            .any(|t| !permitted.iter().any(|p| p.resource == *t))
    {
        return Err(AppError::bad_request(
            "_type names a resource type you may not export: see docs/export.md#policy.",
        ));
    }
    // Each type through the one decision point, as a search of it (scopes ∩ roles ∩
    // relationship), in the view the export policy names.
    let mut parts = Vec::new();
    for p in &permitted {
        let wanted = asked.types.as_ref().is_none_or(|t| t.contains(&p.resource));
        let needed =
            wanted || (kind == ExportKind::Deidentified && p.resource == ResourceType::Patient);
        if !needed {
            continue;
        }
        let decision = pipeline.decide_on(p.resource, Interaction::Search, Target::Search)?;
        let Decision::Permit {
            view,
            search: Some(scope),
            ..
        } = decision
        else {
            continue;
        };
        if view != p.view {
            continue;
        }
        parts.push((p.resource, view, rules::export_scope(scope), wanted));
    }
    let deid_without_patients = kind == ExportKind::Deidentified
        && !parts.iter().any(|(r, ..)| *r == ResourceType::Patient);
    if !parts.iter().any(|(.., wanted)| *wanted) || deid_without_patients {
        pipeline
            .recorder
            .deny(what, [], crate::policy::DenyReason::ScopeMissing)
            .await?;
        return Err(refusal::on_capability(
            crate::policy::DenyReason::ScopeMissing,
        ));
    }
    let group_id = match group {
        None => None,
        Some(None) => return Err(AppError::not_found()),
        Some(Some(g)) => {
            if !parts.iter().all(|(_, _, s, _)| rules::group_matches(*s, g)) {
                return Err(AppError::not_found());
            }
            Some(g)
        }
    };
    if kind == ExportKind::Deidentified && !settings.has_key {
        return Err(AppError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "De-identified exports are not set up on this server (crypto.export_key).",
        ));
    }
    let specs: Vec<PartSpec> = parts
        .iter()
        .map(|(r, v, s, w)| PartSpec::new(*r, *v, *s, *w))
        .collect();
    let now = pipeline.state().clock.now();
    let actor = pipeline.principal.actor();
    let id = Uuid::new_v4();
    let job = NewJob {
        id,
        requester_id: pipeline.principal.user.id.as_uuid(),
        status: "queued".into(),
        level: level.as_str().into(),
        kind: kind.as_str().into(),
        group_id,
        types: specs
            .iter()
            .filter(|s| s.write)
            .map(|s| s.kind.clone())
            .collect(),
        since: asked.since,
        k: i32::try_from(asked.k.unwrap_or(settings.config.k)).unwrap_or(5),
        suppress: asked.suppress,
        parts: serde_json::to_value(&specs).map_err(|_| AppError::internal("export parts"))?,
        progress: serde_json::to_value(Progress::new(specs.len()))
            .map_err(|_| AppError::internal("export progress"))?,
        actor_client_id: actor.client_id.as_ref().map(|c| c.as_str().to_string()),
        actor_roles: actor.roles.iter().map(|r| r.as_str().to_string()).collect(),
        auth_method: actor.auth_method.code().to_string(),
        client_app: pipeline
            .principal
            .client_app()
            .map(|c| c.as_str().to_string()),
        transaction_time: now,
        created_at: now,
        // A job that never finishes is swept after the same retention as a finished one.
        expires_at: now
            + chrono::Duration::minutes(i64::try_from(settings.config.retain_mins).unwrap_or(1440)),
    };
    let write = move |c: &mut diesel::PgConnection| match export_jobs::insert(c, &job)? {
        Some(id) => Ok(id),
        None => Err(AppError::client(StatusCode::TOO_MANY_REQUESTS, BUSY)),
    };
    pipeline
        .recorder
        .commit_with(job_what(AuditAction::Export, Some(id)), [], write, None)
        .await?;
    let status_url = format!("{}/$export-status/{id}", settings.base);
    Ok(HttpResponse::Accepted()
        .insert_header(("Content-Location", status_url))
        .insert_header(("Cache-Control", "no-store"))
        .finish())
}

/// The caller's own job `id` (audited as an error and answered 404 otherwise).
async fn own_job(pipeline: &Pipeline, raw: &str, action: AuditAction) -> Result<Job, AppError> {
    let id = Uuid::parse_str(raw).ok();
    let job = match id {
        Some(id) => {
            pipeline
                .state()
                .db
                .run(move |c| export_jobs::get(c, id))
                .await?
        }
        None => None,
    };
    match job {
        Some(job) if rules::owns_job(pipeline.principal.user.id, UserId(job.requester_id)) => {
            Ok(job)
        }
        _ => {
            pipeline.recorder.error(job_what(action, id), []).await?;
            Err(AppError::not_found())
        }
    }
}

/// `GET /fhir/$export-status/{id}`.
pub async fn status(
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let job = own_job(&pipeline, &path, AuditAction::Read).await?;
    let progress: Progress = serde_json::from_value(job.progress.clone()).unwrap_or_default();
    let what = job_what(AuditAction::Read, Some(job.id));
    match job.status.as_str() {
        "queued" | "running" => {
            pipeline.recorder.permit(what, []).await?;
            let parts = progress.counts.len().max(1);
            let percent = (progress.part * 100 / parts).min(99);
            Ok(HttpResponse::Accepted()
                .insert_header((
                    "X-Progress",
                    format!(
                        "{} ({percent}%): {} resources written",
                        job.status,
                        progress.written()
                    ),
                ))
                .insert_header(("Retry-After", "2"))
                .insert_header(("Cache-Control", "no-store"))
                .finish())
        }
        "completed" => {
            let manifest = manifest(&pipeline, &settings, &job, &progress)?;
            pipeline.recorder.permit(what, []).await?;
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .insert_header(("Cache-Control", "no-store"))
                .body(manifest.to_string()))
        }
        _ => {
            pipeline.recorder.error(what, []).await?;
            Err(AppError::client(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The export failed; its partial output was discarded. Start a new export.",
            ))
        }
    }
}

/// The completion manifest (IG v2): one output entry per written type with lines.
fn manifest(
    pipeline: &Pipeline,
    settings: &ExportSettings,
    job: &Job,
    progress: &Progress,
) -> Result<Value, AppError> {
    let parts: Vec<PartSpec> = serde_json::from_value(job.parts.clone())
        .map_err(|_| AppError::internal("export job parts"))?;
    let state = pipeline.state();
    let expires = state.clock.now()
        + chrono::Duration::seconds(i64::try_from(settings.config.link_secs).unwrap_or(300));
    let mut output = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let count = progress.counts.get(i).copied().unwrap_or(0);
        if !part.write || count == 0 {
            continue;
        }
        let link = Link {
            job: job.id,
            part: u8::try_from(i).map_err(|_| AppError::internal("export part index"))?,
            expires,
        };
        let token = link.seal(&state.keyring, pipeline.principal.user.id)?;
        output.push(json!({
            "type": part.kind,
            "url": format!("{}/$export-file/{token}", settings.base),
            "count": count,
        }));
    }
    let level_path = match job.level.as_str() {
        "system" => "/$export".to_string(),
        "group" => format!(
            "/Group/{}/$export",
            job.group_id.map(|g| g.to_string()).unwrap_or_default()
        ),
        _ => "/Patient/$export".to_string(),
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("_outputFormat", NDJSON);
    query.append_pair("kind", &job.kind);
    if !job.types.is_empty() {
        query.append_pair("_type", &job.types.join(","));
    }
    if let Some(since) = job.since {
        query.append_pair("_since", &since.to_rfc3339());
    }
    let mut extension = json!({
        "https://custodian.example/fhir/StructureDefinition/export-kind": job.kind,
        "https://custodian.example/fhir/StructureDefinition/export-expires":
            expires.to_rfc3339(),
    });
    if let Some(report) = &job.report {
        extension["https://custodian.example/fhir/StructureDefinition/k-anonymity"] =
            report.clone();
    }
    Ok(json!({
        "transactionTime": job.transaction_time.to_rfc3339(),
        "request": format!("{}{level_path}?{}", settings.base, query.finish()),
        "requiresAccessToken": true,
        "output": output,
        "error": [],
        "extension": extension,
    }))
}

/// `DELETE /fhir/$export-status/{id}`: cancels a running job or deletes a finished one,
/// with its files.
pub async fn cancel(
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let job = own_job(&pipeline, &path, AuditAction::Delete).await?;
    let (id, user) = (job.id, pipeline.principal.user.id);
    let root = std::path::PathBuf::from(&settings.config.dir);
    let write = move |c: &mut diesel::PgConnection| {
        if !export_jobs::delete(c, id, user)? {
            return Err(AppError::not_found());
        }
        // A runner still writing finds the job gone at its next batch and removes the
        // directory again.
        files::remove_job(&root, id)
    };
    pipeline
        .recorder
        .commit_with(job_what(AuditAction::Delete, Some(id)), [], write, None)
        .await?;
    Ok(HttpResponse::Accepted()
        .insert_header(("Cache-Control", "no-store"))
        .finish())
}

/// `GET /fhir/$export-file/{link}`: one output file, to the requester, while its link
/// is valid; identified files are opened line by line as they stream.
pub async fn download(
    pipeline: Pipeline,
    settings: web::Data<ExportSettings>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    // The data leaves here: the same step-up as the kick-off.
    step_up(&pipeline).await?;
    let state = pipeline.state();
    let user = pipeline.principal.user.id;
    let link = Link::open(&state.keyring, user, &path).filter(|l| l.expires >= state.clock.now());
    let Some(link) = link else {
        pipeline
            .recorder
            .error(job_what(AuditAction::Read, None), [])
            .await?;
        return Err(AppError::not_found());
    };
    let job = own_job(&pipeline, &link.job.to_string(), AuditAction::Read).await?;
    let parts: Vec<PartSpec> = serde_json::from_value(job.parts.clone())
        .map_err(|_| AppError::internal("export job parts"))?;
    let part = usize::from(link.part);
    let spec = parts.get(part).filter(|_| job.status == "completed");
    let Some(spec) = spec else {
        pipeline
            .recorder
            .error(job_what(AuditAction::Read, Some(job.id)), [])
            .await?;
        return Err(AppError::not_found());
    };
    let kind = spec.resource()?;
    let file_path = files::part_file(
        std::path::Path::new(&settings.config.dir),
        job.id,
        part,
        kind,
    );
    let file = web::block(move || std::fs::File::open(file_path))
        .await
        .map_err(|_| AppError::internal("export file task"))?
        .map_err(|_| AppError::not_found())?;
    pipeline
        .recorder
        .permit(job_what(AuditAction::Read, Some(job.id)), [])
        .await?;
    let reader = std::io::BufReader::new(file);
    let sealed = job.kind == "identified";
    let kr = state.keyring.clone();
    let job_id = job.id;
    // Up to 256 lines per chunk, read (and opened) on a blocking thread.
    let stream = futures_util::stream::unfold(Some((reader, 0u64)), move |st| {
        let kr = kr.clone();
        async move {
            let (mut reader, mut line) = st?;
            let chunk = web::block(move || {
                let mut out = Vec::new();
                for _ in 0..256 {
                    let mut text = String::new();
                    match reader.read_line(&mut text) {
                        Ok(0) => return Ok((out, None)),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                    if sealed {
                        let plain = files::open_line(&kr, kind, job_id, line, &text)
                            .map_err(|_| std::io::Error::other("export line does not open"))?;
                        out.extend_from_slice(&plain);
                        out.push(b'\n');
                    } else {
                        out.extend_from_slice(text.as_bytes());
                    }
                    line += 1;
                }
                Ok((out, Some((reader, line))))
            })
            .await;
            match chunk {
                Ok(Ok((out, next))) => Some((Ok::<Bytes, std::io::Error>(Bytes::from(out)), next)),
                Ok(Err(e)) => Some((Err(e), None)),
                Err(_) => Some((Err(std::io::Error::other("export stream task")), None)),
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type(NDJSON)
        .insert_header(("Cache-Control", "no-store"))
        .streaming(stream))
}
