//! The manifest contract: `schema/manifest.schema.json` (JSON Schema 2020-12) is the one
//! description of `manifest.json`; this module validates a manifest against it (naming the
//! full path of a bad field, e.g. `sampler.temperature`) and parses it with the schema's
//! defaults for absent optional fields.
//!
//! The validator covers the keywords the schema uses: `type`, `const`, `enum`, `required`,
//! `properties`, `items`, `minimum`, `maximum`, `minLength` and `pattern` (annotations such as
//! `description` and `default` are not checked; `x-expected` words a pattern's error).
//! `tests/outside_port.rs` checks it against Python's `jsonschema` on a set of valid and
//! invalid manifests.
use super::Manifest;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::sync::OnceLock;

/// The schema text, as shipped in the repository.
pub const MANIFEST_SCHEMA: &str = include_str!("../../schema/manifest.schema.json");

/// The parsed schema.
pub fn manifest_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(MANIFEST_SCHEMA).expect("schema/manifest.schema.json is valid JSON")
    })
}

/// A manifest that does not match the schema: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Dotted path of the field (`sampler.temperature`, `prompt.token_ids[3]`); empty for the
    /// whole document.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON Schema's `integer`: any number with a zero fractional part (so `3.0` is one).
fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64()
                || n.is_u64()
                || n.as_f64()
                    .is_some_and(|x| x.is_finite() && x.fract() == 0.0)
        }
        _ => false,
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(57).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

/// Validates `v` against `schema`, normalizing integral floats at `integer` positions (`3.0`
/// becomes `3`) so the typed parse that follows agrees with the schema. Returns the first
/// error in document order.
pub fn validate(schema: &Value, v: &mut Value, path: &str) -> Result<(), SchemaError> {
    let err = |message: String| SchemaError {
        path: path.to_string(),
        message,
    };
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if let Some(c) = s.get("const") {
        if !json_eq(v, c) {
            return Err(err(format!("must be {}, got {}", show(c), show(v))));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.iter().any(|o| json_eq(v, o)) {
            let names: Vec<String> = options.iter().map(show).collect();
            return Err(err(format!(
                "{} is not one of {}",
                show(v),
                names.join(", ")
            )));
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(xs) => xs.iter().filter_map(|x| x.as_str()).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| has_type(v, t)) {
            let want: Vec<String> = types
                .iter()
                .map(|t| match *t {
                    "integer" | "object" | "array" => format!("an {t}"),
                    "null" => "null".to_string(),
                    other => format!("a {other}"),
                })
                .collect();
            return Err(err(format!(
                "expected {}, got {} ({})",
                want.join(" or "),
                type_name(v),
                show(v)
            )));
        }
        if types.contains(&"integer") && !v.is_i64() && !v.is_u64() && is_integer(v) {
            let x = v.as_f64().unwrap_or(0.0);
            if x >= 0.0 && x < u64::MAX as f64 {
                *v = Value::from(x as u64);
            } else if x < 0.0 && x >= i64::MIN as f64 {
                *v = Value::from(x as i64);
            }
        }
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(|m| m.as_f64()) {
            if x < min {
                return Err(err(format!("must be ≥ {min}, got {}", show(v))));
            }
        }
        if let Some(max) = s.get("maximum").and_then(|m| m.as_f64()) {
            if x > max {
                return Err(err(format!("must be ≤ {max}, got {}", show(v))));
            }
        }
    }
    if let Value::String(text) = &*v {
        if let Some(n) = s.get("minLength").and_then(|m| m.as_u64()) {
            if (text.chars().count() as u64) < n {
                return Err(err(if n == 1 {
                    "must not be empty".to_string()
                } else {
                    format!("must have at least {n} characters")
                }));
            }
        }
        if let Some(p) = s.get("pattern").and_then(|p| p.as_str()) {
            let re = regex::Regex::new(p).map_err(|e| err(format!("bad schema pattern: {e}")))?;
            if !re.is_match(text) {
                return Err(err(match s.get("x-expected").and_then(|x| x.as_str()) {
                    Some(forms) => format!("{} is not valid: expected {forms}", show(v)),
                    None => format!("{} does not match the pattern {p}", show(v)),
                }));
            }
        }
    }
    if let Value::Array(items) = v {
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter_mut().enumerate() {
                validate(item_schema, item, &format!("{path}[{i}]"))?;
            }
        }
    }
    if let Value::Object(map) = v {
        if let Some(Value::Array(req)) = s.get("required") {
            for key in req.iter().filter_map(|k| k.as_str()) {
                if !map.contains_key(key) {
                    return Err(SchemaError {
                        path: join(path, key),
                        message: "required field is missing".to_string(),
                    });
                }
            }
        }
        if let Some(Value::Object(props)) = s.get("properties") {
            for (key, sub) in props {
                if let Some(child) = map.get_mut(key) {
                    validate(sub, child, &join(path, key))?;
                }
            }
        }
    }
    Ok(())
}

/// JSON equality with numbers compared by value (`1` equals `1.0`, as in JSON Schema).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A float setting as it was meant: the shortest decimal that rounds to the same f32 (the
/// samplers compute in f32). `0.8999999761581421` (an f32 0.9 widened) and `0.9` (written by
/// Python) both become `0.9`.
pub fn f32_precision(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let f = x as f32;
    if !f.is_finite() {
        return x;
    }
    format!("{f}").parse().unwrap_or(x)
}

/// True when two float settings are the same at f32 precision.
pub fn same_setting(a: f64, b: f64) -> bool {
    a == b || (a as f32) == (b as f32)
}

/// Parses a manifest: validates it against the schema (errors name the field's full path),
/// fills absent optional fields with the schema's defaults, and reads float sampler settings
/// at f32 precision.
pub fn parse_manifest(mut raw: Value) -> Result<Manifest> {
    if let Err(e) = validate(manifest_schema(), &mut raw, "") {
        bail!("{e}");
    }
    let mut m: Manifest = serde_json::from_value(raw)
        .context("does not match the manifest schema (a field has the wrong shape)")?;
    m.sampler.temperature = f32_precision(m.sampler.temperature);
    m.sampler.top_p = m.sampler.top_p.map(f32_precision);
    m.sampler.min_p = m.sampler.min_p.map(f32_precision);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "format": "csm-parity-run", "format_version": 1, "status": "complete",
            "backend": {"name": "my-port"}, "model": {"kind": "llama"},
            "prompt": {"token_ids": [1, 2]},
            "sampler": {"noise": "shared", "temperature": 0.9, "top_k": 50, "seed": 3},
            "frames": 2, "codebooks": 1, "vocab": 10,
            "logits_storage": "f32", "probs_storage": "none"
        })
    }

    fn error_of(edit: impl FnOnce(&mut Value)) -> String {
        let mut v = minimal();
        edit(&mut v);
        format!("{:#}", parse_manifest(v).unwrap_err())
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse_manifest(minimal()).unwrap();
        assert_eq!(m.tool_version, "unknown");
        assert_eq!(m.backend.device, "unknown");
        assert_eq!(m.backend.dtype, "f32");
        assert_eq!(m.model.path, "");
        assert_eq!(m.sampler.mode, "independent");
        assert_eq!(m.sampler.post, "none");
        assert_eq!(m.stop_reason, "unknown");
        assert_eq!(m.timings.total_ms, 0.0);
        assert_eq!(m.sampler.temperature, 0.9);
        assert!(m.rescore_of.is_none());
    }

    #[test]
    fn errors_name_the_full_path() {
        let e = error_of(|v| {
            v["sampler"].as_object_mut().unwrap().remove("temperature");
        });
        assert_eq!(e, "sampler.temperature: required field is missing");
        let e = error_of(|v| v["sampler"]["temperature"] = json!("hot"));
        assert!(
            e.starts_with("sampler.temperature: expected a number"),
            "{e}"
        );
        let e = error_of(|v| v["sampler"]["mode"] = json!("free"));
        assert!(
            e.starts_with("sampler.mode: \"free\" is not one of \"independent\""),
            "{e}"
        );
        let e = error_of(|v| v["prompt"]["token_ids"] = json!([1, -2]));
        assert!(e.starts_with("prompt.token_ids[1]: must be ≥ 0"), "{e}");
        let e = error_of(|v| v["probs_storage"] = json!("top:0"));
        assert!(
            e.starts_with("probs_storage: \"top:0\" is not valid: expected f32, f16, top:N"),
            "{e}"
        );
        let e = error_of(|v| v["backend"]["name"] = json!(""));
        assert_eq!(e, "backend.name: must not be empty");
        let e = error_of(|v| v["sampler"]["top_k"] = json!(2.5));
        assert!(
            e.starts_with("sampler.top_k: expected an integer, got a number"),
            "{e}"
        );
    }

    #[test]
    fn integral_floats_are_integers() {
        let mut v = minimal();
        v["frames"] = json!(2.0);
        assert_eq!(parse_manifest(v).unwrap().frames, 2);
    }

    #[test]
    fn floats_are_read_at_f32_precision() {
        let mut v = minimal();
        v["sampler"]["temperature"] = json!(0.9f32 as f64);
        v["sampler"]["top_p"] = json!(0.95f32 as f64);
        let m = parse_manifest(v).unwrap();
        assert_eq!(m.sampler.temperature, 0.9);
        assert_eq!(m.sampler.top_p, Some(0.95));
        assert!(same_setting(0.9, 0.9f32 as f64));
        assert!(!same_setting(0.9, 0.91));
    }
}
