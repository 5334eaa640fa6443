//! schema/guard.schema.json: every record the integration tests read from
//! the agent is checked against it (in `Agent::stop_with`), so the schema
//! and the records cannot drift apart unnoticed.

use std::sync::OnceLock;

use serde_json::Value;

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    // Built in, so that the checker in a VM guest (no source tree there)
    // checks its records too.
    const SCHEMA: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/guard.schema.json"
    ));
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA)
            .unwrap_or_else(|e| panic!("schema/guard.schema.json is not JSON: {e}"));
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("schema/guard.schema.json is not a valid JSON Schema: {e}"))
    })
}

/// Why `record` does not match the schema, if it does not.
pub fn check(record: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator()
        .iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .take(5)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
