//! Turns the committed OpenAPI document (`openapi.yaml`, the form people edit and
//! review) into the JSON served at `GET /v1/openapi.json`: a broken document fails
//! the build instead of answering 500, and no YAML parser ships in the server.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=openapi.yaml");
    let yaml = std::fs::read_to_string("openapi.yaml").unwrap_or_else(|e| panic!("cannot read openapi.yaml: {e}"));
    let doc: serde_json::Value =
        serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("openapi.yaml is not a valid YAML document: {e}"));
    if doc.get("openapi").and_then(serde_json::Value::as_str).is_none() {
        panic!("openapi.yaml has no `openapi` version field: is it an OpenAPI document?");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("openapi.json");
    let json = serde_json::to_vec(&doc).expect("a JSON value serializes");
    std::fs::write(&out, json).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
