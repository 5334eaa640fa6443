//! schema/guard.schema.json against the examples the README shows. (Every
//! record the integration tests read is checked against it in the
//! harness, `Agent::stop_with`.)

use std::path::Path;

use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_readme_shows_the_examples_and_each_matches_the_schema() {
    let readme = std::fs::read_to_string(repo("README.md")).expect("README");
    let mut checked = 0;
    for entry in std::fs::read_dir(repo("docs/examples")).expect("docs/examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("example");
        let record: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        if let Err(why) = guard_tests::schema::check(&record) {
            panic!("{} does not match the schema: {why}", path.display());
        }
        assert!(
            readme.contains(text.trim()),
            "the README does not show {}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} examples");
}

#[test]
fn the_schema_has_one_entry_per_kind_and_refuses_what_is_not_a_record() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("schema/guard.schema.json")).expect("schema"),
    )
    .expect("JSON");
    let defs = schema["$defs"].as_object().expect("$defs");
    for kind in [
        "fork",
        "exec",
        "exit",
        "oom_kill",
        "hung_task",
        "cgroup_attach",
        "unblocked",
        "rss",
        "reclaim_stall",
        "condemned",
        "start",
        "summary",
        "lost",
        "blocked",
        "alert",
        "action",
        "resolved",
        "refusal",
    ] {
        // One object, or one per form the kind takes (an alert per rule).
        let forms = match defs[kind]["anyOf"].as_array() {
            Some(forms) => forms.clone(),
            None => vec![defs[kind].clone()],
        };
        for form in forms {
            assert_eq!(form["properties"]["kind"]["const"], kind, "{kind}");
            assert_eq!(form["additionalProperties"], false, "{kind}");
        }
    }
    // Drift is caught: an unknown kind, a missing field, a stray field.
    let exit: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docs/examples/exit.json")).expect("example"),
    )
    .expect("JSON");
    let mut stray = exit.clone();
    stray["surprise"] = Value::from(1);
    let mut missing = exit.clone();
    missing.as_object_mut().expect("object").remove("exit_code");
    let mut unknown = exit;
    unknown["kind"] = Value::from("teleport");
    for bad in [stray, missing, unknown] {
        assert!(guard_tests::schema::check(&bad).is_err(), "{bad}");
    }
}
