//! FHIR `DocumentReference` (clinical notes): read, search, create and version-checked
//! update. The note travels as base64 `text/plain` in `content[0].attachment.data`; on the
//! way in it is decoded and sanitised with ammonia so that no markup at all is kept (it is
//! stored as plain text); on the way out it is base64 inside JSON. The author is the
//! principal who created the note, never taken from the input.

use super::params;
use super::resource::{self, Descriptor, RecordResource};
use super::types::{LOINC, bounded_len, input, invalid, loinc_code};
use crate::access::Principal;
use crate::db::documents::{DocumentReference, DocumentTable, NewDocumentReference};
use crate::error::AppError;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// The longest note, in characters, after sanitising.
pub const MAX_NOTE_CHARS: usize = 20_000;
const STATUSES: &[&str] = &["current", "superseded", "entered-in-error"];

/// One ammonia pass that keeps no element at all (script and style lose their content
/// too), with the text's HTML escaping undone so that the result is plain text.
fn strip_once(text: &str) -> String {
    let html = ammonia::Builder::empty().clean(text).to_string();
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Sanitises a note to plain text: markup is removed until none is left (text that was
/// entity-encoded markup is stripped on the next pass), control characters other than
/// line breaks and tabs are refused, and the length is bounded.
pub fn sanitise_note(raw: &str) -> Result<String, AppError> {
    const FIELD: &str = "content[0].attachment.data";
    if raw
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(FIELD, "contains control characters"));
    }
    let mut text = raw.to_string();
    let mut settled = false;
    for _ in 0..5 {
        let next = strip_once(&text);
        if next == text {
            settled = true;
            break;
        }
        text = next;
    }
    if !settled {
        return Err(invalid(
            FIELD,
            "is nested markup that cannot be reduced to text",
        ));
    }
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(invalid(FIELD, "has no text after removing markup"));
    }
    if text.chars().count() > MAX_NOTE_CHARS {
        return Err(invalid(FIELD, "is longer than 20000 characters"));
    }
    Ok(text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DocumentReferenceIn {
    resource_type: String,
    id: Option<String>,
    #[allow(dead_code)]
    meta: Option<serde::de::IgnoredAny>,
    status: String,
    #[serde(rename = "type")]
    doc_type: Option<input::CodeableConcept>,
    subject: input::Reference,
    date: Option<String>,
    /// Accepted so that a read resource can be sent back, but ignored: the author is the
    /// authenticated principal.
    #[allow(dead_code)]
    author: Option<serde::de::IgnoredAny>,
    content: Vec<ContentIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentIn {
    attachment: AttachmentIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AttachmentIn {
    content_type: String,
    data: String,
}

fn validate(input: DocumentReferenceIn, author: Uuid) -> Result<NewDocumentReference, AppError> {
    if input.resource_type != "DocumentReference" {
        return Err(invalid("resourceType", "must be DocumentReference"));
    }
    if !STATUSES.contains(&input.status.as_str()) {
        return Err(invalid(
            "status",
            "must be current, superseded or entered-in-error",
        ));
    }
    let doc_type = match input.doc_type {
        None => None,
        Some(t) => {
            bounded_len("type.coding", &t.coding, 1)?;
            let Some(c) = t.coding.first() else {
                return Err(invalid("type.coding", "must have one LOINC coding"));
            };
            if c.system.as_deref() != Some(LOINC) {
                return Err(invalid("type.coding[0].system", "must be http://loinc.org"));
            }
            Some(loinc_code("type.coding[0].code", &c.code)?)
        }
    };
    let patient_id = params::patient_reference("subject.reference", &input.subject.reference)?;
    let date = match &input.date {
        Some(d) => params::date_time("date", d)?,
        None => chrono::Utc::now(),
    };
    if input.content.is_empty() {
        return Err(invalid("content", "must have one attachment"));
    }
    bounded_len("content", &input.content, 1)?;
    let att = &input.content[0].attachment;
    let essence = att
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "text/plain" {
        return Err(invalid(
            "content[0].attachment.contentType",
            "must be text/plain",
        ));
    }
    // Four UTF-8 bytes per character at most, base64 adds a third.
    if att.data.len() > MAX_NOTE_CHARS * 4 * 4 / 3 + 4 {
        return Err(invalid(
            "content[0].attachment.data",
            "is longer than 20000 characters",
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(att.data.trim())
        .map_err(|_| invalid("content[0].attachment.data", "must be base64"))?;
    let raw = String::from_utf8(bytes)
        .map_err(|_| invalid("content[0].attachment.data", "must be UTF-8 text"))?;
    let text = sanitise_note(&raw)?;
    Ok(NewDocumentReference {
        patient_id: patient_id.into(),
        author_id: Some(author.into()),
        doc_type,
        date: Some(date),
        text,
        status: input.status,
    })
}

/// The DocumentReference API, served by the generic handlers of [`super::resource`].
pub struct DocumentReferences;

impl RecordResource for DocumentReferences {
    const DESCRIPTOR: &'static Descriptor = &resource::DOCUMENT_REFERENCE;
    type Input = DocumentReferenceIn;
    type Table = DocumentTable;

    fn input_id(input: &DocumentReferenceIn) -> Option<&str> {
        input.id.as_deref()
    }
    /// The author is the authenticated principal, never taken from the input.
    fn validate(
        input: DocumentReferenceIn,
        principal: &Principal,
    ) -> Result<NewDocumentReference, AppError> {
        validate(input, principal.user.id.as_uuid())
    }
    /// The one patient to search (optional).
    fn criteria(params: &[(&'static str, String)]) -> Result<Option<Uuid>, AppError> {
        resource::subject_criterion(params)
    }
    fn to_fhir(doc: &DocumentReference) -> Value {
        let data = base64::engine::general_purpose::STANDARD.encode(doc.text.expose().as_bytes());
        let mut out = json!({
            "resourceType": "DocumentReference",
            "id": doc.id,
            "meta": { "versionId": doc.version.to_string(), "lastUpdated": params::instant(&doc.updated_at) },
            "status": doc.status,
            "subject": { "reference": format!("Patient/{}", doc.patient_id) },
            "date": params::instant(&doc.date.unwrap_or(doc.created_at)),
            "content": [{ "attachment": { "contentType": "text/plain", "data": data } }],
        });
        if let Some(author) = doc.author_id {
            out["author"] = json!([{ "reference": format!("Practitioner/{author}") }]);
        } else {
            out["author"] = json!([]);
        }
        if let Some(code) = &doc.doc_type {
            out["type"] = json!({ "coding": [{ "system": LOINC, "code": code }] });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_removed_and_plain_text_kept() {
        let clean = |s: &str| sanitise_note(s).unwrap();
        assert_eq!(clean("<script>alert(1)</script>Hello"), "Hello");
        assert_eq!(clean("<b>BP</b> < 120 & stable"), "BP < 120 & stable");
        assert_eq!(clean("&lt;script&gt;alert(1)&lt;/script&gt;Hi"), "Hi");
        assert_eq!(
            clean("<img src=x onerror=alert(1)>line 1\nline 2"),
            "line 1\nline 2"
        );
        assert!(!clean("<a href='javascript:x'>link</a>").contains('<'));
        assert!(sanitise_note("<script>x</script>").is_err(), "nothing left");
        assert!(sanitise_note("a\u{0}b").is_err());
        assert!(sanitise_note(&"x".repeat(MAX_NOTE_CHARS + 1)).is_err());
        assert!(sanitise_note(&"x".repeat(MAX_NOTE_CHARS)).is_ok());
    }
}
