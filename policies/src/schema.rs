//! JSON schemas of the authoring formats, generated from the model types.
//! The checked-in copies live in `policies/schema/`; a test fails when they
//! are stale (`UPDATE_SCHEMA=1 cargo test -p tappass-policies` rewrites them).

use crate::model::{CatalogDocument, PackDocument, PolicyDocument};

/// `(file name, pretty JSON)` of every schema.
pub fn schemas() -> Vec<(&'static str, String)> {
    let pretty = |s: schemars::Schema| serde_json::to_string_pretty(&s).unwrap_or_default() + "\n";
    vec![
        (
            "policy-document.schema.json",
            pretty(schemars::schema_for!(PolicyDocument)),
        ),
        (
            "pack.schema.json",
            pretty(schemars::schema_for!(PackDocument)),
        ),
        (
            "catalog.schema.json",
            pretty(schemars::schema_for!(CatalogDocument)),
        ),
    ]
}
