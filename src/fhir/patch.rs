//! JSON Patch (RFC 6902) over a resource's FHIR JSON, for the PATCH interaction: `add`,
//! `remove`, `replace`, `move`, `copy` and `test` with JSON Pointers (RFC 6901). The
//! patched document then goes through the same validation, field-level write control
//! and version check as an update (`resource::patch`). Errors are fixed 422 messages that
//! never echo a path or value.

use super::types::invalid;
use crate::error::AppError;
use serde::Deserialize;
use serde_json::Value;

/// Most operations one PATCH may hold.
pub const MAX_OPS: usize = 50;

/// One operation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    op: String,
    path: String,
    value: Option<Value>,
    from: Option<String>,
}

fn bad(rule: &'static str) -> AppError {
    invalid("JSON Patch", rule)
}

/// The reference tokens of a JSON Pointer (`/a/b~1c/0`).
fn tokens(pointer: &str) -> Result<Vec<String>, AppError> {
    if pointer.is_empty() {
        return Err(bad("may not replace the whole resource"));
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| bad("has a path that is not a JSON Pointer"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The container of the pointer's last token, and that token.
fn parent<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<(&'a mut Value, String), AppError> {
    let (last, path) = tokens
        .split_last()
        .ok_or_else(|| bad("has an empty path"))?;
    let mut at = doc;
    for t in path {
        at = match at {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| bad("has a path that does not exist"))?;
    }
    Ok((at, last.clone()))
}

fn get(doc: &Value, pointer: &str) -> Result<Value, AppError> {
    doc.pointer(pointer)
        .cloned()
        .ok_or_else(|| bad("has a path that does not exist"))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), AppError> {
    let tokens = tokens(pointer)?;
    let (at, last) = parent(doc, &tokens)?;
    match at {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| bad("has an array index out of range"))?
            };
            a.insert(i, value);
        }
        _ => return Err(bad("has a path that does not exist")),
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, AppError> {
    let tokens = tokens(pointer)?;
    let (at, last) = parent(doc, &tokens)?;
    match at {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    }
    .ok_or_else(|| bad("has a path that does not exist"))
}

/// Applies `ops` to `doc` in order; all or nothing (the caller keeps the original).
pub fn apply(mut doc: Value, ops: &[Op]) -> Result<Value, AppError> {
    if ops.len() > MAX_OPS {
        return Err(bad("has too many operations (at most 50)"));
    }
    for op in ops {
        let value = || op.value.clone().ok_or_else(|| bad("needs a value"));
        let from = || op.from.as_deref().ok_or_else(|| bad("needs from"));
        match op.op.as_str() {
            "add" => add(&mut doc, &op.path, value()?)?,
            "remove" => {
                remove(&mut doc, &op.path)?;
            }
            "replace" => {
                remove(&mut doc, &op.path)?;
                add(&mut doc, &op.path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, &op.path, v)?;
            }
            "copy" => {
                let v = get(&doc, from()?)?;
                add(&mut doc, &op.path, v)?;
            }
            "test" => {
                if get(&doc, &op.path)? != value()? {
                    return Err(AppError::client(
                        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "A JSON Patch test operation failed: nothing was changed.",
                    ));
                }
            }
            _ => return Err(bad("has an unknown operation")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(v: Value) -> Vec<Op> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let doc = json!({"a": {"b": [1, 2]}, "c~/d": 1});
        let out = apply(
            doc.clone(),
            &ops(json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "add", "path": "/a/b/0", "value": 0},
                {"op": "replace", "path": "/c~0~1d", "value": 2},
                {"op": "copy", "from": "/a/b/1", "path": "/e"},
                {"op": "move", "from": "/e", "path": "/f"},
                {"op": "remove", "path": "/a/b/1"},
                {"op": "test", "path": "/f", "value": 1},
            ])),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"b": [0, 2, 3]}, "c~/d": 2, "f": 1}));
        for bad in [
            json!([{"op": "remove", "path": "/zz"}]),
            json!([{"op": "replace", "path": "", "value": 1}]),
            json!([{"op": "add", "path": "/a/b/9", "value": 1}]),
            json!([{"op": "test", "path": "/c~0~1d", "value": 9}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "a"}]),
        ] {
            let err = apply(doc.clone(), &ops(bad.clone()))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("zz") && !err.contains("frobnicate"), "{err}");
        }
        let many: Vec<Value> = (0..51)
            .map(|_| json!({"op": "test", "path": "/a", "value": {"b": [1, 2]}}))
            .collect();
        assert!(apply(doc, &ops(Value::Array(many))).is_err());
    }
}
