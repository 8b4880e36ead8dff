//! `GET /console/exports`: the bulk export jobs with their progress, for administrators
//! (the console's `X-Progress`). A job row holds codes, ids and counts only, so the page
//! shows no PHI: who asked (internal user id, or the operator for `custodian export`),
//! level, kind, types, status, resources written, part, when it started and expires.
//! Reading the list is audited (`search` on `ExportJob`).

use super::time;
use crate::admin::op::{Touched, audited};
use crate::audit::{AuditAction, ResourceType as Kind};
use crate::console::gate::{AdminPage, Chrome};
use crate::db::export_jobs;
use crate::error::AppError;
use crate::export::runner::Progress;
use askama::Template;
use askama_web::WebTemplate;

/// Most jobs the page lists (newest first).
const JOBS_SHOWN: i64 = 200;

pub struct JobView {
    pub id: String,
    pub requester: String,
    pub level: String,
    pub kind: String,
    pub types: String,
    pub status: String,
    pub written: u64,
    pub part: String,
    pub created: String,
    pub completed: String,
    pub expires: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/export_jobs.html")]
pub struct ExportJobsPage {
    chrome: Chrome,
    jobs: Vec<JobView>,
}

/// GET /console/exports.
pub async fn export_jobs_page(page: AdminPage) -> Result<ExportJobsPage, AppError> {
    let jobs = audited(&*page, AuditAction::Search, Some(Kind::ExportJob), async {
        let found = page
            .state
            .db
            .run(|c| export_jobs::recent(c, JOBS_SHOWN))
            .await?;
        Ok((found, Touched::default()))
    })
    .await?;
    Ok(ExportJobsPage {
        chrome: page.0.chrome,
        jobs: jobs
            .into_iter()
            .map(|j| {
                let progress: Progress = serde_json::from_value(j.progress).unwrap_or_default();
                let parts = j.parts.as_array().map_or(0, Vec::len);
                JobView {
                    id: j.id.to_string(),
                    requester: if j.auth_method == export_jobs::CLI {
                        "operator (custodian export)".to_string()
                    } else {
                        j.requester_id.to_string()
                    },
                    level: j.level,
                    kind: j.kind,
                    types: j.types.join(", "),
                    written: progress.written(),
                    part: if j.status == "completed" {
                        format!("{parts} of {parts}")
                    } else {
                        format!("{} of {parts}", (progress.part + 1).min(parts.max(1)))
                    },
                    status: j.status,
                    created: time(j.created_at),
                    completed: j.completed_at.map(time).unwrap_or_default(),
                    expires: time(j.expires_at),
                }
            })
            .collect(),
    })
}
