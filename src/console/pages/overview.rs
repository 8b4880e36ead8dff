//! `GET /console/audit/charts?from=&to=`: the trail at a glance, for reviewers who look
//! rather than read — accesses per day by outcome, denials per day and the people who
//! accessed the most distinct patients (server-rendered SVG, `super::charts`). Default
//! period: the last 30 days; at most a year. Viewing it is recorded like a search.

use super::review::{admit, pairs, reviewer};
use crate::audit::search::{self, bound, display_names};
use crate::audit::{AuditAction, ResourceType as Kind, What};
use crate::console::gate::ConsolePage;
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::review::Review;
use actix_web::HttpRequest;
use askama::Template;
use askama_web::WebTemplate;
use chrono::{DateTime, Utc};

/// People the "top people" chart lists.
const TOP: i64 = 10;
/// The longest period the page charts (days).
const MAX_DAYS: i64 = 366;

pub struct TopPerson {
    pub id: String,
    pub name: String,
    pub patients: i64,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/audit_charts.html")]
pub struct Overview {
    chrome: super::Chrome,
    from: String,
    to: String,
    per_day: String,
    denials: String,
    top: String,
    people: Vec<TopPerson>,
    permitted: i64,
    denied: i64,
    failed: i64,
}

fn bad_period() -> AppError {
    AppError::bad_request(
        "Invalid period: from= and to= as YYYY-MM-DD (UTC), at most a year apart.",
    )
}

/// The period of the query string (default: the last 30 days).
fn period(query: &str, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
    let mut since = now - chrono::Duration::days(30);
    let mut until = now;
    for (k, v) in pairs(query) {
        match k.as_str() {
            "from" if !v.is_empty() => since = bound(&v, false).ok_or_else(bad_period)?,
            "to" if !v.is_empty() => until = bound(&v, true).ok_or_else(bad_period)?,
            "from" | "to" => {}
            _ => return Err(bad_period()),
        }
    }
    if until <= since || (until - since).num_days() > MAX_DAYS {
        return Err(bad_period());
    }
    Ok((since, until))
}

pub async fn charts_page(req: HttpRequest, page: ConsolePage) -> Result<Overview, AppError> {
    let what = What::new(AuditAction::Search).on(Kind::AuditLog);
    admit(&page, Review::SearchTrail, what).await?;
    let (since, until) = period(req.query_string(), page.state.clock.now())?;
    let (days, top, names) = page
        .state
        .db
        .run(move |c| {
            let days = search::trail_per_day(c, since, until)?;
            let top = search::top_people(c, since, until, TOP)?;
            let ids: Vec<UserId> = top.iter().map(|(u, _)| *u).collect();
            let names = display_names(c, &ids)?;
            Ok((days, top, names))
        })
        .await?;
    reviewer(&page).permit(what, []).await?;
    // One slot per day of the period, empty days included.
    let first = since.date_naive();
    let n = usize::try_from((until - since).num_days().max(1)).unwrap_or(1);
    let mut slots = vec![(0i64, 0i64, 0i64); n];
    for (day, p, d, e) in &days {
        if let Some(slot) = usize::try_from((*day - first).num_days())
            .ok()
            .and_then(|i| slots.get_mut(i))
        {
            *slot = (*p, *d, *e);
        }
    }
    let denials: Vec<i64> = slots.iter().map(|s| s.1).collect();
    let counts: Vec<i64> = top.iter().map(|(_, n)| *n).collect();
    Ok(Overview {
        chrome: page.0.chrome,
        from: first.to_string(),
        to: (until - chrono::Duration::seconds(1))
            .date_naive()
            .to_string(),
        per_day: super::charts::trail_per_day(&slots).unwrap_or_default(),
        denials: super::charts::denials_per_day(&denials).unwrap_or_default(),
        top: super::charts::top_people(&counts).unwrap_or_default(),
        people: top
            .iter()
            .map(|(u, n)| TopPerson {
                id: u.to_string(),
                name: names
                    .get(u)
                    .cloned()
                    .unwrap_or_else(|| "(no display name)".into()),
                patients: *n,
            })
            .collect(),
        permitted: slots.iter().map(|s| s.0).sum(),
        denied: slots.iter().map(|s| s.1).sum(),
        failed: slots.iter().map(|s| s.2).sum(),
    })
}
