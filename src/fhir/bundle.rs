//! Search results: FHIR `Bundle` (searchset) pages with opaque, tamper-proof cursors.

use super::config::FhirSettings;
use crate::crypto::{FieldPlace, Keyring};
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::ResourceType;
use actix_web::HttpRequest;
use base64::Engine;
use serde_json::{Value, json};
use uuid::Uuid;

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 100;

/// `_count`: default 20, at most 100.
pub fn page_size(param: Option<&str>) -> Result<usize, AppError> {
    match param {
        None => Ok(DEFAULT_COUNT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_COUNT).contains(n))
            .ok_or_else(|| super::types::invalid("_count", "must be a number from 1 to 100")),
    }
}

/// A cursor is the last id of a page, sealed (AES-GCM) with the data key and bound to the
/// user and resource type: opaque, unforgeable, and useless to anyone else.
pub struct Cursor;

fn place(user: UserId, resource: ResourceType) -> FieldPlace {
    crate::crypto::columns::cursor(resource.as_str(), user)
}

impl Cursor {
    pub fn seal(
        kr: &Keyring,
        user: UserId,
        resource: ResourceType,
        last: Uuid,
    ) -> Result<String, AppError> {
        let sealed = kr.seal(&place(user, resource), last.as_bytes())?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    pub fn open(
        kr: &Keyring,
        user: UserId,
        resource: ResourceType,
        cursor: &str,
    ) -> Result<Uuid, AppError> {
        let bad = || super::types::invalid("_cursor", "is not a cursor this server issued to you");
        if cursor.len() > 200 {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| bad())?;
        let plain = kr.open(&place(user, resource), &bytes).map_err(|_| bad())?;
        Uuid::from_slice(&plain).map_err(|_| bad())
    }
}

/// A searchset bundle: absolute `fullUrl`s and links (from `server.public_url`), `next`
/// carrying the cursor of the following page, `total` when asked for, and no `entry` at
/// all when there is none (FHIR JSON has no empty arrays).
pub fn searchset(
    settings: &FhirSettings,
    req: &HttpRequest,
    resource: &str,
    entries: Vec<Value>,
    next: Option<&str>,
    total: Option<i64>,
) -> Value {
    let base = format!("{}/{resource}", settings.base);
    let with_query = |q: &str| {
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{q}")
        }
    };
    let mut links = vec![json!({ "relation": "self", "url": with_query(req.query_string()) })];
    if let Some(cursor) = next {
        // The next link keeps the caller's own parameters and replaces the cursor.
        let kept: Vec<(String, String)> =
            url::form_urlencoded::parse(req.query_string().as_bytes())
                .filter(|(k, _)| k != "_cursor")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        q.append_pair("_cursor", cursor);
        links.push(json!({ "relation": "next", "url": with_query(&q.finish()) }));
    }
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|resource| {
            let id = resource["id"].as_str().unwrap_or_default().to_string();
            json!({ "fullUrl": format!("{base}/{id}"), "resource": resource, "search": { "mode": "match" } })
        })
        .collect();
    let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset", "link": links });
    if let Some(total) = total {
        bundle["total"] = json!(total);
    }
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}
