//! Search results: FHIR `Bundle` (searchset) pages with opaque, tamper-proof cursors.

use super::config::FhirSettings;
use crate::crypto::{FieldPlace, Keyring};
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::ResourceType;
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

pub use crate::db::records::Position;

fn place(user: UserId, resource: ResourceType) -> FieldPlace {
    crate::crypto::columns::cursor(resource.as_str(), user)
}

/// Marks a sorted position in a cursor's plaintext.
const SORTED: u8 = 0xFF;
/// Marks the second sort value of a position sorted by two keys (after the first).
const THEN: u8 = 0xFE;

/// Longest cursor accepted (one carrying a POST search's parameters).
const MAX_CURSOR: usize = 4000;

impl Cursor {
    /// Seals the last id of a page and, for a search by POST, its parameters (so that
    /// the `next` link carries them sealed instead of in the URL).
    pub fn seal(
        kr: &Keyring,
        user: UserId,
        resource: ResourceType,
        last: Uuid,
        carried: Option<&str>,
    ) -> Result<String, AppError> {
        let at = Position {
            id: last,
            at: None,
            then_at: None,
        };
        Cursor::seal_position(kr, user, resource, at, carried)
    }

    /// [`Self::seal`] of a sorted search's position: the last id and its sort value
    /// (marked by a 0xFF byte, which no UTF-8 parameter string starts with), and the
    /// second sort value of a search sorted by two keys (marked by 0xFE, which no UTF-8
    /// string starts with either).
    pub fn seal_position(
        kr: &Keyring,
        user: UserId,
        resource: ResourceType,
        last: Position,
        carried: Option<&str>,
    ) -> Result<String, AppError> {
        let mut plain = last.id.as_bytes().to_vec();
        if let Some(at) = last.at {
            plain.push(SORTED);
            plain.extend_from_slice(&at.timestamp_micros().to_be_bytes());
            if let Some(then_at) = last.then_at {
                plain.push(THEN);
                plain.extend_from_slice(&then_at.timestamp_micros().to_be_bytes());
            }
        }
        if let Some(q) = carried {
            plain.extend_from_slice(q.as_bytes());
        }
        let sealed = kr.seal(&place(user, resource), &plain)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The last id of the previous page, and the parameters the cursor carries (if any).
    pub fn open(
        kr: &Keyring,
        user: UserId,
        resource: ResourceType,
        cursor: &str,
    ) -> Result<(Uuid, Option<String>), AppError> {
        match Cursor::open_position(kr, user, resource, cursor)? {
            (Position { id, at: None, .. }, carried) => Ok((id, carried)),
            _ => Err(super::types::invalid(
                "_cursor",
                "is not a cursor this server issued to you",
            )),
        }
    }

    /// The position of the previous page (with its sort value when sorted) and the
    /// parameters the cursor carries.
    pub fn open_position(
        kr: &Keyring,
        user: UserId,
        resource: ResourceType,
        cursor: &str,
    ) -> Result<(Position, Option<String>), AppError> {
        let bad = || super::types::invalid("_cursor", "is not a cursor this server issued to you");
        if cursor.len() > MAX_CURSOR {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| bad())?;
        let plain = kr.open(&place(user, resource), &bytes).map_err(|_| bad())?;
        let (id, rest) = plain.split_at_checked(16).ok_or_else(bad)?;
        let id = Uuid::from_slice(id).map_err(|_| bad())?;
        let (at, rest) = marked_time(SORTED, rest).ok_or_else(bad)?;
        let (then_at, rest) = if at.is_some() {
            marked_time(THEN, rest).ok_or_else(bad)?
        } else {
            (None, rest)
        };
        let id = Position { id, at, then_at };
        let carried = if rest.is_empty() {
            None
        } else {
            Some(String::from_utf8(rest.to_vec()).map_err(|_| bad())?)
        };
        Ok((id, carried))
    }
}

/// A timestamp (microseconds, big-endian) after a `marker` byte at the start of `rest`:
/// `(Some(time), after it)`; `(None, rest)` without the marker; `None` if malformed.
#[allow(clippy::type_complexity)]
fn marked_time(marker: u8, rest: &[u8]) -> Option<(Option<chrono::DateTime<chrono::Utc>>, &[u8])> {
    match rest.split_first() {
        Some((m, more)) if *m == marker => {
            let (micros, more) = more.split_at_checked(8)?;
            let micros = i64::from_be_bytes(micros.try_into().ok()?);
            let at = chrono::DateTime::from_timestamp_micros(micros)?;
            Some((Some(at), more))
        }
        _ => Some((None, rest)),
    }
}

/// The `self` and `next` URLs of a searchset page (absolute, from `server.public_url`).
/// A GET search's links repeat its query (`next` with the cursor replaced); a POST
/// search's links carry no parameter values: `self` is its `_search` URL and `next` a GET
/// with only the cursor, which carries the parameters sealed.
pub fn links(
    settings: &FhirSettings,
    resource: &str,
    query: &str,
    post: bool,
    cursor: Option<&str>,
) -> (String, Option<String>) {
    let base = format!("{}/{resource}", settings.base);
    let with_query = |q: &str| {
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{q}")
        }
    };
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if !post {
        // The next link keeps the caller's own parameters and replaces the cursor.
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "_cursor")
        {
            q.append_pair(&k, &v);
        }
    }
    let next = cursor.map(|c| {
        q.append_pair("_cursor", c);
        with_query(&q.finish())
    });
    let this = if post {
        format!("{base}/_search")
    } else {
        with_query(query)
    };
    (this, next)
}

/// A searchset bundle: absolute `fullUrl`s and links (from `server.public_url`), `total`
/// when asked for, and no `entry` at all when there is none (FHIR JSON has no empty
/// arrays).
pub fn searchset(
    settings: &FhirSettings,
    resource: &str,
    (this, next): (String, Option<String>),
    entries: Vec<Value>,
    total: Option<i64>,
) -> Value {
    let base = format!("{}/{resource}", settings.base);
    let mut links = vec![json!({ "relation": "self", "url": this })];
    if let Some(next) = next {
        links.push(json!({ "relation": "next", "url": next }));
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

/// Adds resources a search's `_include` brought (`search.mode: include`) to `bundle`.
/// A warning about the page as a searchset entry (`search.mode: outcome`).
pub fn add_outcome(bundle: &mut Value, message: &'static str) {
    let entry = json!({
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "warning", "code": "too-costly", "diagnostics": message }],
        },
        "search": { "mode": "outcome" },
    });
    match bundle["entry"].as_array_mut() {
        Some(list) => list.push(entry),
        None => bundle["entry"] = Value::Array(vec![entry]),
    }
}

pub fn add_included(
    settings: &FhirSettings,
    bundle: &mut Value,
    resource: &str,
    included: Vec<Value>,
) {
    if included.is_empty() {
        return;
    }
    let base = format!("{}/{resource}", settings.base);
    let entries = included.into_iter().map(|r| {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        json!({ "fullUrl": format!("{base}/{id}"), "resource": r, "search": { "mode": "include" } })
    });
    match bundle["entry"].as_array_mut() {
        Some(list) => list.extend(entries),
        None => bundle["entry"] = Value::Array(entries.collect()),
    }
}
