//! The checked-in JSON schemas (policies/schema/) must match the model types.
//! `UPDATE_SCHEMA=1 cargo test -p tappass-policies --test schema` rewrites them.

use std::path::Path;

#[test]
fn checked_in_schemas_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let mut stale = Vec::new();
    for (name, text) in tappass_policies::schema::schemas() {
        let path = dir.join(name);
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale schema files (UPDATE_SCHEMA=1 to regenerate): {stale:?}"
    );
}

#[test]
fn schema_rejects_unknown_top_level_keys() {
    let (_, text) = tappass_policies::schema::schemas()
        .into_iter()
        .find(|(n, _)| *n == "policy-document.schema.json")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let props = v["properties"].as_object().expect("properties");
    for k in [
        "agent", "org", "catalog", "overlay", "packs", "steps", "tools", "budget",
    ] {
        assert!(props.contains_key(k), "schema lacks {k}");
    }
    assert_eq!(
        v["additionalProperties"],
        serde_json::Value::Bool(false),
        "{}",
        &text[..200.min(text.len())]
    );
}
