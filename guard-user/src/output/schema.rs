//! The JSON Schema of the stream, derived from the record types (`record`
//! and `events`) with schemars. `guard schema` prints it; `cargo xtask
//! schema` writes it to schema/guard.schema.json and docs/schema-fields.md,
//! and a unit test fails when either file is not what the types give.
//!
//! What the types cannot say by themselves is added here, once for all:
//! every record's `kind`, `time`, `boot_ns` and `host`; that no object carries a
//! field its type does not name; and the `<key>_hex` twin any name that is
//! not UTF-8 gets (see `Output::record` and `JsonObject::bytes`).

use guard_common::EventKind;
use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use super::{events, record};

/// The schema's id: where the repository keeps it.
pub const ID: &str = "https://github.com/guard/guard/schema/guard.schema.json";

/// One record kind: its name and the schema of its fields.
struct Kind {
    name: &'static str,
    fields: Value,
    /// Fields written ahead of every form's own (an alert's incident).
    head: Option<Value>,
}

fn generator() -> SchemaGenerator {
    // `for_serialize`: a field is required unless it may be skipped when
    // written (`Option` fields are always written, as `null`).
    SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
}

fn fields_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

fn event_fields(kind: EventKind, g: &mut SchemaGenerator) -> Value {
    // Exhaustive: a new event kind does not build until it has a type.
    match kind {
        EventKind::Fork => fields_of::<events::Fork>(g),
        EventKind::Exec => fields_of::<events::Exec>(g),
        EventKind::Exit => fields_of::<events::Exit>(g),
        EventKind::OomKill => fields_of::<events::OomKill>(g),
        EventKind::HungTask => fields_of::<events::HungTask>(g),
        EventKind::CgroupAttach => fields_of::<events::CgroupAttach>(g),
        // The probe's exact event, or the agent's approximate record from a
        // snapshot (`approximate: true`).
        EventKind::Unblocked => json!({"anyOf": [
            fields_of::<events::Unblocked>(g),
            fields_of::<record::UnblockedSeen>(g),
        ]}),
        EventKind::Rss => fields_of::<events::Rss>(g),
        EventKind::ReclaimStall => fields_of::<events::ReclaimStall>(g),
        EventKind::Condemned => fields_of::<events::Condemned>(g),
    }
}

/// Every kind, in the order the document lists them.
fn kinds(g: &mut SchemaGenerator) -> Vec<Kind> {
    use record::RecordKind as R;
    let mut kinds: Vec<Kind> = EventKind::ALL
        .into_iter()
        .map(|k| Kind {
            name: k.name(),
            fields: event_fields(k, g),
            head: None,
        })
        .collect();
    for kind in [
        R::Start,
        R::Summary,
        R::Lost,
        R::Blocked,
        R::Alert,
        R::Action,
        R::Resolved,
        R::Refusal,
        R::Snapshot,
        R::Unblocked,
    ] {
        let fields = match kind {
            R::Start => fields_of::<record::Start>(g),
            R::Summary => fields_of::<record::Summary>(g),
            R::Lost => fields_of::<record::Lost>(g),
            R::Blocked => fields_of::<record::Blocked>(g),
            R::Alert => fields_of::<record::Alert>(g),
            R::Action => fields_of::<record::ActionRecord>(g),
            R::Resolved => fields_of::<record::Resolved>(g),
            R::Refusal => fields_of::<record::RefusalRecord>(g),
            R::Snapshot => fields_of::<record::Snapshot>(g),
            // Shares its kind with the event (see `event_fields`).
            R::Unblocked => continue,
        };
        // An alert is written as `AlertRecord`: its incident, then the
        // rule's figures.
        let head = (kind == R::Alert).then(|| fields_of::<record::IncidentFields>(g));
        kinds.push(Kind {
            name: kind.name(),
            fields,
            head,
        });
    }
    kinds
}

/// The `$defs` entry a local `$ref` names.
fn target<'a>(defs: &'a Map<String, Value>, reference: &str) -> Option<&'a Value> {
    defs.get(reference.strip_prefix("#/$defs/")?)
}

/// The object schemas a record's fields may take: one, or one per variant
/// of an enum written untagged (`anyOf`), each resolved from `$defs`.
fn variants(fields: &Value, defs: &Map<String, Value>) -> Vec<Value> {
    if let Some(reference) = fields.get("$ref").and_then(Value::as_str) {
        return target(defs, reference).map_or_else(Vec::new, |t| variants(t, defs));
    }
    if let Some(any) = fields.get("anyOf").and_then(Value::as_array) {
        return any.iter().flat_map(|v| variants(v, defs)).collect();
    }
    vec![fields.clone()]
}

/// Every object with named fields allows no other, but the `_hex` twins.
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
                map.insert(
                    "patternProperties".into(),
                    json!({ "_hex$": { "$ref": "#/$defs/Hex" } }),
                );
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Whether `value` refers to `#/$defs/<name>` anywhere.
fn refers_to(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "$ref" && v.as_str() == Some(&format!("#/$defs/{name}"))) || refers_to(v, name)
        }),
        Value::Array(items) => items.iter().any(|v| refers_to(v, name)),
        _ => false,
    }
}

/// The whole document (JSON Schema 2020-12).
pub fn document() -> Value {
    let mut g = generator();
    let kinds = kinds(&mut g);
    let mut types: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    let mut defs = Map::new();
    for kind in &kinds {
        // Record roots are copied in whole, with the fields every record
        // has; the types they refer to stay shared in `$defs`.
        let head = kind
            .head
            .as_ref()
            .and_then(|h| variants(h, &types).into_iter().next());
        let head_part = |key: &str| head.as_ref().and_then(|h| h.get(key)).cloned();
        let forms: Vec<Value> = variants(&kind.fields, &types)
            .into_iter()
            .map(|mut form| {
                let description = form
                    .as_object_mut()
                    .and_then(|o| o.remove("description"));
                let properties = form
                    .get("properties")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let required = form
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut all = Map::new();
                all.insert("kind".into(), json!({ "const": kind.name }));
                all.insert(
                    "time".into(),
                    json!({ "type": "string", "format": "date-time",
                            "description": "RFC 3339, UTC, nanoseconds: boot_ns on the wall clock." }),
                );
                all.insert(
                    "boot_ns".into(),
                    json!({ "type": "integer", "minimum": 0,
                            "description": "CLOCK_BOOTTIME nanoseconds: the kernel's own timestamp." }),
                );
                all.insert(
                    "host".into(),
                    json!({ "type": "string",
                            "description": "The host: --hostname, or the kernel's host name." }),
                );
                if let Some(Value::Object(p)) = head_part("properties") {
                    all.extend(p);
                }
                all.extend(properties);
                let mut req = vec![json!("kind"), json!("time"), json!("boot_ns"), json!("host")];
                if let Some(Value::Array(r)) = head_part("required") {
                    req.extend(r);
                }
                req.extend(required);
                let mut object = Map::new();
                if let Some(d) = description {
                    object.insert("description".into(), d);
                }
                object.insert("type".into(), json!("object"));
                object.insert("properties".into(), Value::Object(all));
                object.insert("required".into(), Value::Array(req));
                Value::Object(object)
            })
            .collect();
        let def = match <[Value; 1]>::try_from(forms) {
            Ok([one]) => one,
            Err(forms) => json!({ "anyOf": forms }),
        };
        defs.insert(kind.name.to_owned(), def);
    }
    types.insert(
        "Hex".into(),
        json!({
            "description": "The exact bytes of the name beside it (which is lossy: it is not UTF-8), in hex; for arguments, one per argument.",
            "anyOf": [
                { "type": "string", "pattern": "^([0-9a-f]{2})*$" },
                { "type": "array", "items": { "type": "string", "pattern": "^([0-9a-f]{2})*$" } }
            ]
        }),
    );
    // Types used only as record roots were copied in above.
    loop {
        let unused: Vec<String> = types
            .keys()
            .filter(|name| {
                *name != "Hex"
                    && !defs.values().any(|d| refers_to(d, name))
                    && !types
                        .iter()
                        .any(|(other, d)| other != *name && refers_to(d, name))
            })
            .cloned()
            .collect();
        if unused.is_empty() {
            break;
        }
        for name in unused {
            types.remove(&name);
        }
    }
    defs.extend(types);
    let mut doc = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": ID,
        "title": "guard records (NDJSON, one object per line)",
        "description": "Every line guard writes with --json is one of these, told apart by `kind`. Generated from the record types (guard-user/src/output/record.rs and events.rs) by `cargo xtask schema`: do not edit by hand.",
        "type": "object",
        "required": ["kind"],
        "oneOf": kinds
            .iter()
            .map(|k| json!({ "$ref": format!("#/$defs/{}", k.name) }))
            .collect::<Vec<_>>(),
        "$defs": defs,
    });
    close_objects(&mut doc);
    // The document itself is no record object to close.
    if let Some(o) = doc.as_object_mut() {
        o.remove("additionalProperties");
        o.remove("patternProperties");
    }
    doc
}

/// The document as the repository keeps it (pretty, newline-terminated).
pub fn text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// A Markdown page of every kind's fields, from the schema's own
/// descriptions (docs/schema-fields.md).
pub fn markdown() -> String {
    use std::fmt::Write as _;
    let doc = document();
    let empty = Map::new();
    let defs = doc["$defs"].as_object().unwrap_or(&empty);
    let mut md = String::from(
        "<!-- Generated by `cargo xtask schema` from the record types: do not edit. -->\n\
         # Record fields\n\n\
         Every record has `kind`, `time`, `boot_ns` and `host`; a name that is not UTF-8 is \
         written lossy with its exact bytes beside it as `<field>_hex`. Types: \
         `?` marks a field that may be `null`; a field in *italics* may be absent. \
         See [schema.md](schema.md) for the meaning of each kind, and \
         [schema/guard.schema.json](../schema/guard.schema.json) for the schema itself.\n",
    );
    let kinds: Vec<&str> = doc["oneOf"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["$ref"].as_str()?.strip_prefix("#/$defs/"))
                .collect()
        })
        .unwrap_or_default();
    for kind in kinds {
        let def = &defs[kind];
        let forms: Vec<&Value> = match def.get("anyOf").and_then(Value::as_array) {
            Some(forms) => forms.iter().collect(),
            None => vec![def],
        };
        let _ = writeln!(md, "\n## `{kind}`");
        for form in forms {
            if let Some(d) = form["description"].as_str() {
                let _ = writeln!(md, "\n{}", d.replace('\n', " "));
            }
            let _ = writeln!(md, "\n| field | type | meaning |\n|---|---|---|");
            let required: Vec<&str> = form["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, property) in form["properties"].as_object().unwrap_or(&empty) {
                if matches!(name.as_str(), "kind" | "time" | "boot_ns" | "host") {
                    continue;
                }
                let shown = if required.contains(&name.as_str()) {
                    format!("`{name}`")
                } else {
                    format!("*`{name}`*")
                };
                let meaning = property["description"]
                    .as_str()
                    .or_else(|| {
                        let reference = property["$ref"].as_str()?;
                        target(defs, reference)?["description"].as_str()
                    })
                    .unwrap_or("")
                    .replace('\n', " ");
                let _ = writeln!(md, "| {shown} | {} | {meaning} |", type_name(property));
            }
        }
    }
    // The types records refer to (an offender, an outcome...).
    let mut shared: Vec<(&String, &Value)> = defs
        .iter()
        .filter(|(name, def)| {
            name.chars().next().is_some_and(char::is_uppercase)
                && (def.get("properties").is_some() || def.get("anyOf").is_some())
        })
        .collect();
    shared.sort_by_key(|(name, _)| *name);
    if !shared.is_empty() {
        md.push_str("\n# Types the records refer to\n");
    }
    for (name, def) in shared {
        let _ = writeln!(md, "\n## {name}");
        let forms: Vec<&Value> = match def.get("anyOf").and_then(Value::as_array) {
            Some(forms) => forms
                .iter()
                .filter_map(|f| match f["$ref"].as_str() {
                    Some(r) => target(defs, r),
                    None => Some(f),
                })
                .filter(|f| f.get("properties").is_some())
                .collect(),
            None => vec![def],
        };
        if let Some(d) = def["description"].as_str() {
            let _ = writeln!(md, "\n{}", d.replace('\n', " "));
        }
        for form in forms {
            let _ = writeln!(md, "\n| field | type | meaning |\n|---|---|---|");
            let required: Vec<&str> = form["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (field, property) in form["properties"].as_object().unwrap_or(&empty) {
                let shown = if required.contains(&field.as_str()) {
                    format!("`{field}`")
                } else {
                    format!("*`{field}`*")
                };
                let meaning = property["description"]
                    .as_str()
                    .unwrap_or("")
                    .replace('\n', " ");
                let _ = writeln!(md, "| {shown} | {} | {meaning} |", type_name(property));
            }
        }
    }
    md
}

/// A short name for a property's type.
fn type_name(property: &Value) -> String {
    if let Some(r) = property["$ref"].as_str() {
        return r.trim_start_matches("#/$defs/").to_owned();
    }
    if let Some(c) = property.get("const") {
        return c.to_string();
    }
    if let Some(any) = property["anyOf"].as_array() {
        let names: Vec<String> = any
            .iter()
            .map(|v| {
                if v["type"] == "null" {
                    "null".to_owned()
                } else {
                    type_name(v)
                }
            })
            .collect();
        if names.len() == 2 && names.contains(&"null".to_owned()) {
            let other = names
                .iter()
                .find(|n| *n != "null")
                .cloned()
                .unwrap_or_default();
            return format!("{other}?");
        }
        return names.join(" \\| ");
    }
    let base = |t: &str| match t {
        "array" => format!(
            "[{}]",
            property
                .get("items")
                .map(type_name)
                .unwrap_or_else(|| "any".into())
        ),
        "object" => property
            .get("additionalProperties")
            .filter(|a| a.is_object())
            .map_or_else(
                || "object".into(),
                |a| format!("{{name: {}}}", type_name(a)),
            ),
        other => other.to_owned(),
    };
    match &property["type"] {
        Value::String(t) => base(t),
        Value::Array(ts) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            let nullable = names.contains(&"null");
            let rest: Vec<String> = names
                .iter()
                .filter(|t| **t != "null")
                .map(|t| base(t))
                .collect();
            format!("{}{}", rest.join(" \\| "), if nullable { "?" } else { "" })
        }
        _ => property
            .get("enum")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(" \\| ")
            })
            .unwrap_or_else(|| "any".into()),
    }
}
