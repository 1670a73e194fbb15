//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant
//! whitespace, strings escaped the way `serde_json` escapes them, numbers as
//! `serde_json` prints them. The same value always gives the same bytes, so
//! signatures can be computed over the canonical form.

use serde::Serialize;
use serde_json::Value;

use crate::error::{PolicyError, Result};

/// Canonical bytes of a JSON value.
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(value, &mut out);
    out
}

/// Canonical bytes of any serializable value (serialized to a `Value` first).
pub fn canonicalize<T: Serialize>(value: &T) -> Result<String> {
    let v = serde_json::to_value(value).map_err(|e| PolicyError::Compiled(e.to_string()))?;
    Ok(to_canonical_string(&v))
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(&map[k.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's string escaping is deterministic and minimal.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively_and_strips_whitespace() {
        let v: Value = serde_json::from_str(
            r#"{ "b": 1, "a": { "z": [3, 2, {"y": null, "x": true}], "c": "s" } }"#,
        )
        .unwrap();
        assert_eq!(
            to_canonical_string(&v),
            r#"{"a":{"c":"s","z":[3,2,{"x":true,"y":null}]},"b":1}"#
        );
    }

    #[test]
    fn same_value_different_insertion_order_same_bytes() {
        let a = json!({"x": 1, "y": {"p": 1, "q": 2}});
        let mut m = serde_json::Map::new();
        m.insert("y".into(), json!({"q": 2, "p": 1}));
        m.insert("x".into(), json!(1));
        assert_eq!(
            to_canonical_string(&a),
            to_canonical_string(&Value::Object(m))
        );
    }

    #[test]
    fn escapes_strings_and_sorts_by_bytes() {
        let v = json!({"é": "a\"b\n\u{1}", "Z": -3, "a": 1.5});
        assert_eq!(
            to_canonical_string(&v),
            "{\"Z\":-3,\"a\":1.5,\"é\":\"a\\\"b\\n\\u0001\"}"
        );
    }

    #[test]
    fn round_trip_is_stable() {
        let v = json!({"k": [1, "two", {"b": false, "a": [] }], "e": {}});
        let once = to_canonical_string(&v);
        let again = to_canonical_string(&serde_json::from_str(&once).unwrap());
        assert_eq!(once, again);
    }
}
