//! The JSON body extractor every JSON route uses: JSON content types only (415), the
//! body limit (413), bounded nesting (400), strict parsing with fixed messages (400/422)
//! that never quote the submitted text.

use crate::error::AppError;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

/// Limits applied to JSON bodies; registered as app data.
#[derive(Clone, Copy, Debug)]
pub struct JsonLimits {
    pub max_depth: usize,
}

/// A validated JSON body of type `T` (which should use `deny_unknown_fields`).
pub struct JsonBody<T>(pub T);

pub fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The deepest nesting of arrays and objects in a JSON text (strings are skipped).
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses `bytes` as `T` under the limits; the error names a field path of our schema at
/// most, never a value.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], limits: JsonLimits) -> Result<T, AppError> {
    if nesting_depth(bytes) > limits.max_depth {
        return Err(AppError::bad_request("The JSON body is nested too deeply."));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let inner = e.inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                AppError::bad_request("The request body is not well-formed JSON.")
            }
            serde_json::error::Category::Io => {
                AppError::bad_request("The request body could not be read.")
            }
            serde_json::error::Category::Data => {
                let text = inner.to_string();
                if text.starts_with("unknown field") {
                    AppError::unprocessable(
                        "The request body contains a field that is not allowed.",
                    )
                } else if let Some(field) = missing_field(&text) {
                    // The name comes from our own type, not from the caller.
                    let parent = e.path().to_string();
                    let path = if parent == "." {
                        field
                    } else {
                        format!("{parent}.{field}")
                    };
                    AppError::unprocessable(format!(
                        "The field '{}' is required.",
                        safe_path(&path)
                    ))
                } else {
                    AppError::unprocessable(format!(
                        "The field '{}' is missing or has an invalid value.",
                        safe_path(&e.path().to_string())
                    ))
                }
            }
        }
    })?;
    // One document and nothing after it but whitespace: `{…}garbage` or two documents
    // would otherwise be accepted as the first one (serde stops at its end).
    de.end().map_err(|_| AppError::bad_request(TRAILING_DATA))?;
    Ok(value)
}

/// The answer to bytes after the JSON document.
pub const TRAILING_DATA: &str = "The request body has data after the JSON document.";

/// The field named by serde's "missing field `x`" message.
fn missing_field(text: &str) -> Option<String> {
    let rest = text.strip_prefix("missing field `")?;
    let name = &rest[..rest.find('`')?];
    Some(name.to_string())
}

/// Field paths come from our own types, but map keys could be caller text: keep only
/// plain identifier characters and a bounded length.
fn safe_path(path: &str) -> String {
    let cleaned: String = path
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '[' | ']'))
        .take(80)
        .collect();
    if cleaned.is_empty() {
        "body".into()
    } else {
        cleaned
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        let limits = req
            .app_data::<web::Data<JsonLimits>>()
            .map(|d| *d.get_ref())
            .unwrap_or(JsonLimits { max_depth: 32 });
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !is_json {
                return Err(AppError::client(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "This endpoint accepts JSON bodies only (application/json or application/fhir+json).",
                ));
            }
            let bytes = body.await.map_err(|e| {
                if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::client(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "The request body is too large.",
                    )
                } else {
                    AppError::bad_request("The request body could not be read.")
                }
            })?;
            parse(&bytes, limits).map(JsonBody)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        #[allow(dead_code)]
        name: String,
    }

    const LIMITS: JsonLimits = JsonLimits { max_depth: 4 };

    #[test]
    fn content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("application/fhir+json; charset=utf-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonx"));
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{{"}"#), 1);
        assert_eq!(nesting_depth(br#"[[[["\"]"]]]]"#), 4);
    }

    #[test]
    fn too_deep_is_rejected() {
        let err = parse::<Probe>(b"[[[[[1]]]]]", LIMITS).err().unwrap();
        assert!(err.to_string().contains("nested too deeply"));
    }

    #[test]
    fn unknown_field_is_not_echoed() {
        let err = parse::<Probe>(br#"{"name":"a","CANARY_FIELD":1}"#, LIMITS)
            .err()
            .unwrap();
        assert!(!err.to_string().contains("CANARY"));
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse::<Probe>(br#"{}"#, LIMITS).err().unwrap();
        assert_eq!(err.to_string(), "The field 'name' is required.");
    }

    #[test]
    fn data_after_the_document_is_refused_without_echo() {
        for body in [
            &br#"{"name":"a"}CANARY"#[..],
            br#"{"name":"a"}{"name":"b"}"#,
            br#"{"name":"a"} x"#,
            b"{\"name\":\"a\"}\x00",
        ] {
            let err = parse::<Probe>(body, LIMITS).expect_err("refused");
            assert_eq!(err.to_string(), TRAILING_DATA);
        }
        // Whitespace after the document is not data.
        assert!(parse::<Probe>(b"{\"name\":\"a\"} \r\n\t", LIMITS).is_ok());
    }

    #[test]
    fn bad_value_names_field_not_value() {
        let err = parse::<Probe>(br#"{"name":12345678}"#, LIMITS)
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("'name'"), "{text}");
        assert!(!text.contains("12345678"));
    }
}
