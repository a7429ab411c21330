//! Fuzzes collection schemas: compiling a schema a tenant admin sends, validating record data a
//! tenant member sends against it, and computing index terms and filter terms. Must never
//! panic (or hang: libFuzzer reports slow inputs with `-timeout`).
//!
//! Input: `schema JSON 0xFF data JSON 0xFF raw filter value`. Index fields are the first three
//! keys of the schema's `properties`; if compiling with them fails, the schema is compiled
//! again without indexes so validation is still reached.
#![no_main]

use bulkhead_core::CollectionName;
use bulkhead_core::crypto::IndexTerm;
use bulkhead_core::schema::{CompiledCollection, IndexKind};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (schema_bytes, tail) = bulkhead_fuzz::split_ff(data);
    let (data_bytes, raw_bytes) = bulkhead_fuzz::split_ff(tail);
    let Ok(schema) = serde_json::from_slice::<Value>(schema_bytes) else {
        return;
    };
    let index_fields: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().take(3).cloned().collect())
        .unwrap_or_default();
    let name = CollectionName::parse("c").unwrap();
    let compiled =
        match CompiledCollection::compile(name.clone(), schema.clone(), &index_fields, 16, 65536) {
            Ok(c) => c,
            Err(_) => match CompiledCollection::compile(name, schema, &[], 16, 65536) {
                Ok(c) => c,
                Err(_) => return,
            },
        };
    let raw = String::from_utf8_lossy(raw_bytes);
    let record = serde_json::from_slice::<Value>(data_bytes)
        .unwrap_or_else(|_| Value::String(raw.to_string()));

    let verdict = compiled.validate(&record, 16);
    if let Err(violations) = &verdict {
        assert!(
            !violations.is_empty() && violations.len() <= 16,
            "{violations:?}"
        );
    }
    let terms = compiled.index_terms(&record);
    assert!(terms.len() <= compiled.indexes.len());

    for spec in &compiled.indexes {
        let _ = compiled.filter_term(spec.field.as_str(), &raw);
        // A stored record is found by filtering on its own value, written the way a client
        // would write it in a query string. Only for values whose text form is exact (floats
        // are left out: their decimal round trip is not guaranteed bit-exact).
        let Some(value) = record.get(spec.field.as_str()) else {
            continue;
        };
        if verdict.is_err() {
            continue;
        }
        let text = match (spec.kind, value) {
            (IndexKind::String, Value::String(s)) => s.clone(),
            (IndexKind::Boolean, Value::Bool(b)) => b.to_string(),
            (IndexKind::Integer | IndexKind::Number, Value::Number(n)) if n.is_i64() => {
                n.to_string()
            }
            _ => continue,
        };
        let (_, filter) = compiled
            .filter_term(spec.field.as_str(), &text)
            .unwrap_or_else(|e| panic!("filter on stored value {value} refused: {e}"));
        assert_eq!(Some(filter), IndexTerm::of(value), "field {}", spec.field);
    }
    let _ = compiled.filter_term(&raw, &raw);
});
