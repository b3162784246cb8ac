//! Reading awsJson1_1 request members: wrong JSON types are
//! `SerializationException`, like the real service.

use serde_json::{Map, Value};

use super::error::KmsError;

pub type Body = Map<String, Value>;

fn wrong_type(member: &str, expected: &str) -> KmsError {
    KmsError::new(
        "SerializationException",
        format!("Member '{member}' must be {expected}."),
    )
}

/// Parse the request body; an empty body counts as `{}`.
pub fn parse(bytes: &[u8]) -> Result<Body, KmsError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(KmsError::new(
            "SerializationException",
            "The request body must be a JSON object.",
        )),
        Err(_) => Err(KmsError::new(
            "SerializationException",
            "The request body is not valid JSON.",
        )),
    }
}

pub fn opt_str(body: &Body, member: &str) -> Result<Option<String>, KmsError> {
    match body.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong_type(member, "a string")),
    }
}

pub fn req_str(body: &Body, member: &str) -> Result<String, KmsError> {
    opt_str(body, member)?.ok_or_else(|| {
        KmsError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(member)
        ))
    })
}

pub fn opt_int(body: &Body, member: &str) -> Result<Option<i64>, KmsError> {
    match body.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong_type(member, "an integer")),
        Some(_) => Err(wrong_type(member, "an integer")),
    }
}

pub fn opt_obj<'a>(body: &'a Body, member: &str) -> Result<Option<&'a Body>, KmsError> {
    match body.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(wrong_type(member, "a structure")),
    }
}

/// `CustomKeyStoreName` → `customKeyStoreName`, as KMS names members in
/// validation messages.
pub fn lower_first(member: &str) -> String {
    let mut chars = member.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
