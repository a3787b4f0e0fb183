//! The document against the core's own JSON: the mirrors cannot drift from what the API sends.

use super::*;
use citron_core::access::{AccessRecord, Outcome};
use serde_json::{json, Value};

/// Errors of `v` against the component schema `name`, resolved within the whole document.
fn errors(name: &str, v: &Value) -> Vec<String> {
    let doc: Value = serde_json::from_str(&openapi_json()).unwrap();
    let schema = json!({"$ref": format!("#/components/schemas/{name}"), "components": doc["components"]});
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator.iter_errors(v).map(|e| format!("{e} at {}", e.instance_path)).collect()
}

#[test]
fn every_operation_has_a_unique_operation_id_and_the_common_answers() {
    let doc = openapi();
    let mut ids = Vec::new();
    for (path, item) in &doc.paths.paths {
        for op in [&item.get, &item.put, &item.post, &item.delete, &item.head, &item.patch].into_iter().flatten() {
            let id = op.operation_id.clone().unwrap_or_else(|| panic!("{path}: no operationId"));
            assert!(!ids.contains(&id), "{id} twice");
            ids.push(id);
            for s in ["401", "403", "421", "500"] {
                assert!(op.responses.responses.contains_key(s), "{path}: no {s}");
            }
        }
    }
    assert_eq!(ids.len(), 45, "{ids:?}");
    let v: Value = serde_json::from_str(&openapi_json()).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"), "{v}");
}

#[test]
fn access_records_of_the_core_match_their_schema() {
    for outcome in [Outcome::Served, Outcome::Aborted, Outcome::Refused("gone".into())] {
        let r = AccessRecord { seq: 7, time: 1.5, protocol: "http".into(), path: "/a".into(), bytes: 3, outcome };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(errors("AccessRecord", &v), Vec::<String>::new(), "{v}");
    }
    let bad = json!({"seq": 1, "time": 1.0, "protocol": "http", "path": "/", "bytes": 0, "outcome": {"kind": "served"}, "reason": null});
    assert!(!errors("AccessRecord", &bad).is_empty());
}

#[test]
fn duts_and_jobs_match_their_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::new(citron_core::lab::LabConfig::default_lab(), dir.path()).unwrap();
    let mut d = Dut::new("pi4", ["10.0.0.7".parse().unwrap(), "fe80::1".parse().unwrap()]);
    d.serial = Some("1234abcd".into());
    d.tags = vec!["arm64".into()];
    // What a lab file says is a valid request body, and what the API answers is a `Dut`.
    assert_eq!(errors("NewDut", &serde_json::to_value(&d).unwrap()), Vec::<String>::new());
    let view = serde_json::to_value(DutView::of(&gw, &d)).unwrap();
    assert_eq!(errors("Dut", &view), Vec::<String>::new(), "{view}");
    assert_eq!(view["job"], Value::Null);
    // Every key of the core's DUT is in the view.
    for k in serde_json::to_value(&d).unwrap().as_object().unwrap().keys() {
        assert!(view.get(k).is_some(), "{k} missing from {view}");
    }
    assert!(!errors("NewDut", &json!({"id": "x", "colour": "red"})).is_empty(), "unknown keys are refused, as the core does");
    let rec =
        JobRecord { yaml: Some("a: 1\n".into()), origin: citron_core::job::Origin::named("api:x"), set_at: std::time::SystemTime::now() };
    let job = serde_json::to_value(JobView::from(rec)).unwrap();
    assert_eq!(errors("Job", &job), Vec::<String>::new(), "{job}");
    assert!(job["set_at"].as_f64().unwrap() > 1.7e9, "{job}");
}
