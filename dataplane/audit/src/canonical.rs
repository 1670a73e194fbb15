//! Canonical JSON: object keys sorted, no insignificant whitespace. The same
//! value always gives the same bytes, whatever features serde_json is built
//! with elsewhere in the workspace.

use serde::Serialize;
use serde_json::Value;

/// Canonical bytes of any serializable value.
pub fn to_canonical<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let v = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_value(&v, &mut out);
    Ok(out)
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String((*k).clone()), out);
                out.push(b':');
                write_value(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Scalars serialize the same way in every serde_json configuration.
    if let Ok(bytes) = serde_json::to_vec(v) {
        out.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_whitespace_dropped() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": null, "x": "é"}], "c": 2.5}});
        assert_eq!(
            String::from_utf8(to_canonical(&v).unwrap()).unwrap(),
            r#"{"a":{"c":2.5,"z":[3,{"x":"é","y":null}]},"b":1}"#
        );
    }

    #[test]
    fn round_trip_is_stable() {
        let v = json!({"n": 0.1, "big": 18446744073709551615u64, "neg": -3, "s": "a\"b\n"});
        let once = to_canonical(&v).unwrap();
        let back: Value = serde_json::from_slice(&once).unwrap();
        assert_eq!(to_canonical(&back).unwrap(), once);
    }
}
