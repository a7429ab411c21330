//! Fuzzes the helpers applied to every JSON body before it is trusted: `json_depth` (which
//! bounds nesting) and `IndexTerm::of` (the canonical bytes of an indexed value).
//!
//! Input: a JSON document, or `0xFF n_hi n_lo JSON` to wrap the document in `n` extra arrays
//! (up to 4096), deeper than serde_json's own parser would ever produce.
#![no_main]

use bulkhead_core::crypto::IndexTerm;
use bulkhead_core::limits::json_depth;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The definition `json_depth` must agree with, written the obvious (recursive) way.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_terms(v: &Value) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        let term = IndexTerm::of(v);
        assert_eq!(term, IndexTerm::of(&v.clone()));
        match v {
            Value::Array(a) => {
                assert!(term.is_none());
                stack.extend(a);
            }
            Value::Object(o) => {
                assert!(term.is_none());
                stack.extend(o.values());
            }
            Value::Null => assert!(term.is_none()),
            Value::String(s) => {
                assert!(term.is_some());
                // A string never collides with the number or boolean it spells.
                if let Ok(n) = serde_json::from_str::<Value>(s) {
                    if !n.is_string() {
                        assert_ne!(term, IndexTerm::of(&n), "{s:?}");
                    }
                }
            }
            Value::Bool(_) => assert!(term.is_some()),
            Value::Number(n) => {
                assert!(term.is_some());
                // Integral floats index like the integer they equal (`1.0` like `1`).
                if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        #[allow(clippy::cast_possible_truncation)]
                        let i = f as i64;
                        assert_eq!(term, IndexTerm::of(&Value::from(i)), "{f}");
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (wrap, json) = match data {
        [0xFF, hi, lo, rest @ ..] => ((usize::from(*hi) << 8 | usize::from(*lo)) % 4097, rest),
        _ => (0, data),
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let inner = json_depth(&v);
    assert_eq!(inner, depth(&v));
    check_terms(&v);
    for _ in 0..wrap {
        v = Value::Array(vec![v]);
    }
    assert_eq!(json_depth(&v), inner + wrap);
});
