//! Limits on untrusted input. Every one is configurable; the defaults are safe for the
//! embedded default deployment.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputLimits {
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a JSON body (422 above it).
    pub max_json_depth: usize,
    /// Largest record `data`, serialized, in bytes (413 above it).
    pub max_record_bytes: usize,
    /// Most records one list request returns.
    pub max_page_size: usize,
    /// Largest accepted token, in bytes (401 above it).
    pub max_token_bytes: usize,
    /// Most indexed fields per collection.
    pub max_indexes: usize,
    /// Largest collection schema, serialized, in bytes.
    pub max_schema_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_record_bytes: 256 * 1024,
            max_page_size: 1000,
            max_token_bytes: 8 * 1024,
            max_indexes: 16,
            max_schema_bytes: 64 * 1024,
        }
    }
}

/// Depth of the deepest array/object in `v` (a scalar has depth 0, `{}` has depth 1).
/// Iterative, so a hostile document cannot exhaust the stack here.
pub fn json_depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            serde_json::Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            serde_json::Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
    }
}
