//! The OpenAPI document served at `GET /openapi.json` (generated from the code
//! with utoipa) matches the route table: every route documented with its
//! protection, nothing documented that is not served, and every `$ref` pointing
//! at a schema that exists.

use std::collections::BTreeSet;

use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(orchestrator::api::openapi_json()).expect("the document is valid JSON")
}

fn paths(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["paths"].as_object().expect("`paths` is an object")
}

#[test]
fn document_header() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "AceStream Orchestrator API");
    assert_eq!(doc["info"]["version"], "0.1.0");
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
}

#[test]
fn every_route_is_documented_with_its_protection() {
    let doc = document();
    let paths = paths(&doc);
    for route in orchestrator::api::route_table() {
        let method = route.method.as_str().to_ascii_lowercase();
        let what = format!("{} {}", route.method, route.path);
        let operation = paths
            .get(route.path)
            .and_then(|item| item.get(&method))
            .unwrap_or_else(|| panic!("{what} is not in openapi.json"));
        assert!(
            operation["operationId"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{what} has no operationId"
        );
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{what} documents no responses"
        );
        let security = operation["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{what} has no `security` list"));
        assert_eq!(
            !security.is_empty(),
            route.protected,
            "{what}: `security` must be non-empty exactly when the route is protected"
        );
        let responses = operation["responses"].as_object().unwrap();
        for status in ["401", "403"] {
            assert_eq!(
                responses.contains_key(status),
                route.protected,
                "{what}: {status} must be documented exactly when the route is protected"
            );
        }
        if route.protected {
            assert!(
                security.iter().all(|s| s.get("bearer").is_some()),
                "{what}: protected routes use the `bearer` scheme"
            );
        }
        for param in route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            let documented = operation["parameters"].as_array().is_some_and(|params| {
                params
                    .iter()
                    .any(|p| p["in"] == "path" && p["name"] == param && p["required"] == true)
            });
            assert!(
                documented,
                "{what}: path parameter {{{param}}} is not documented"
            );
        }
    }
}

#[test]
fn nothing_documented_that_is_not_served() {
    let doc = document();
    let served: BTreeSet<(String, String)> = orchestrator::api::route_table()
        .into_iter()
        .map(|r| (r.path.to_owned(), r.method.as_str().to_ascii_lowercase()))
        .collect();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths(&doc) {
        let item = item.as_object().expect("a path item is an object");
        for (key, operation) in item {
            if !METHODS.contains(&key.as_str()) {
                continue;
            }
            assert!(
                served.contains(&(path.clone(), key.clone())),
                "openapi.json documents {} {path}, which the route table does not serve",
                key.to_ascii_uppercase()
            );
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                operation_ids.insert(id.to_owned()),
                "operationId {id} is used twice"
            );
        }
    }
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    out.push(v.as_str().expect("a $ref is a string"));
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_to_a_schema() {
    let doc = document();
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas is an object");
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("$ref {reference} does not point into components.schemas"));
        assert!(
            schemas.contains_key(name),
            "$ref {reference} does not resolve"
        );
    }
    for name in [
        "Engine",
        "EngineDetail",
        "Stream",
        "StatSnapshot",
        "HealthHistory",
        "HealthCheck",
        "HealthTransition",
        "SweepReport",
        "Selection",
        "StreamEnded",
        "Error",
    ] {
        assert!(schemas.contains_key(name), "schema {name} is missing");
    }
}

#[test]
fn errors_are_documented_as_json_detail() {
    let doc = document();
    let detail = &doc["components"]["schemas"]["Error"];
    assert_eq!(detail["properties"]["detail"]["type"], "string");
    assert_eq!(detail["required"], serde_json::json!(["detail"]));
    for (path, item) in paths(&doc) {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                let Some(json) = response["content"].get("application/json") else {
                    continue; // a documented non-JSON error (see its description)
                };
                assert_eq!(
                    json["schema"]["$ref"], "#/components/schemas/Error",
                    "{method} {path} {status} must use the Error schema"
                );
            }
        }
    }
}

/// `OPENAPI_DUMP=path cargo test --test openapi dump` writes the document out,
/// for reading or diffing.
#[test]
fn dump() {
    if let Some(path) = std::env::var_os("OPENAPI_DUMP") {
        std::fs::write(path, orchestrator::api::openapi_json()).unwrap();
    }
}
