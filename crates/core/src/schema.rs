//! Collection schemas: JSON Schema 2020-12 for record validation, plus the declared indexes
//! that equality filters may use.
//!
//! Schemas are compiled with no resolver for remote or file references: a `$ref` to anything
//! outside the schema itself is refused when the collection is defined, so validating a record
//! never reaches the network or the disk.

use serde_json::Value;

use crate::crypto::IndexTerm;
use crate::{CollectionName, FieldName};

/// Why a collection definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("schema is not a valid JSON Schema 2020-12 document: {0}")]
    Invalid(String),
    #[error("schema must describe an object (`\"type\": \"object\"`)")]
    NotObject,
    #[error(
        "index on `{0}`: the schema must declare `properties.{0}.type` as one of string, integer, number or boolean"
    )]
    IndexNotScalar(String),
    #[error("index on `{0}` is declared twice")]
    DuplicateIndex(String),
    #[error(
        "`{0}` is not a valid field name to index: use a letter first, then letters, digits or `_`"
    )]
    BadIndexName(String),
    #[error("at most {0} indexes per collection")]
    TooManyIndexes(usize),
    #[error("schema is larger than {0} bytes")]
    TooLarge(usize),
}

/// The type an indexed field is declared with; query values are parsed as this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    String,
    Integer,
    Number,
    Boolean,
}

impl IndexKind {
    fn from_schema(t: &str) -> Option<Self> {
        match t {
            "string" => Some(Self::String),
            "integer" => Some(Self::Integer),
            "number" => Some(Self::Number),
            "boolean" => Some(Self::Boolean),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub field: FieldName,
    pub kind: IndexKind,
}

/// One reason a record does not match its schema. The message never quotes the offending
/// value, so it is safe to return and to log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON Pointer to the failing place in the record's `data`.
    pub path: String,
    pub message: String,
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "`{0}` is not an indexed field of this collection; filters work on indexed fields only"
    )]
    NotIndexed(String),
    #[error("filter value for `{field}` is not a valid {kind}")]
    BadValue { field: String, kind: &'static str },
}

/// A collection definition, checked and compiled.
pub struct CompiledCollection {
    pub name: CollectionName,
    pub schema: Value,
    pub indexes: Vec<IndexSpec>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCollection")
            .field("name", &self.name)
            .field("indexes", &self.indexes)
            .finish_non_exhaustive()
    }
}

impl CompiledCollection {
    /// Checks and compiles a collection definition.
    pub fn compile(
        name: CollectionName,
        schema: Value,
        index_fields: &[String],
        max_indexes: usize,
        max_schema_bytes: usize,
    ) -> Result<Self, SchemaError> {
        let size = serde_json::to_vec(&schema)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > max_schema_bytes {
            return Err(SchemaError::TooLarge(max_schema_bytes));
        }
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(SchemaError::NotObject);
        }
        if index_fields.len() > max_indexes {
            return Err(SchemaError::TooManyIndexes(max_indexes));
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| SchemaError::Invalid(e.masked().to_string()))?;
        let mut indexes: Vec<IndexSpec> = Vec::with_capacity(index_fields.len());
        for f in index_fields {
            let field = FieldName::parse(f).map_err(|_| SchemaError::BadIndexName(f.clone()))?;
            if indexes.iter().any(|i| i.field == field) {
                return Err(SchemaError::DuplicateIndex(f.clone()));
            }
            let kind = schema
                .get("properties")
                .and_then(|p| p.get(f.as_str()))
                .and_then(|p| p.get("type"))
                .and_then(Value::as_str)
                .and_then(IndexKind::from_schema)
                .ok_or_else(|| SchemaError::IndexNotScalar(f.clone()))?;
            indexes.push(IndexSpec { field, kind });
        }
        Ok(Self {
            name,
            schema,
            indexes,
            validator,
        })
    }

    /// Validates a record's `data`, returning up to `max` violations.
    pub fn validate(&self, data: &Value, max: usize) -> Result<(), Vec<Violation>> {
        if !data.is_object() {
            return Err(vec![Violation {
                path: String::new(),
                message: "record data must be a JSON object".into(),
            }]);
        }
        let errors: Vec<Violation> = self
            .validator
            .iter_errors(data)
            .take(max)
            .map(|e| Violation {
                path: e.instance_path().to_string(),
                message: e.masked().to_string(),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The blind-index terms of a record: one per indexed field that holds a scalar.
    pub fn index_terms(&self, data: &Value) -> Vec<(&FieldName, IndexTerm)> {
        self.indexes
            .iter()
            .filter_map(|i| {
                data.get(i.field.as_str())
                    .and_then(IndexTerm::of)
                    .map(|t| (&i.field, t))
            })
            .collect()
    }

    /// Parses a `where.<field>=<raw>` filter into the term to look up.
    pub fn filter_term(
        &self,
        field: &str,
        raw: &str,
    ) -> Result<(&FieldName, IndexTerm), FilterError> {
        let spec = self
            .indexes
            .iter()
            .find(|i| i.field.as_str() == field)
            .ok_or_else(|| FilterError::NotIndexed(field.chars().take(64).collect()))?;
        let bad = |kind| FilterError::BadValue {
            field: field.to_owned(),
            kind,
        };
        let value = match spec.kind {
            IndexKind::String => Value::String(raw.to_owned()),
            IndexKind::Integer => raw
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| raw.parse::<u64>().map(Value::from))
                .map_err(|_| bad("integer"))?,
            IndexKind::Number => {
                let n: serde_json::Number = raw.parse().map_err(|_| bad("number"))?;
                Value::Number(n)
            }
            IndexKind::Boolean => match raw {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(bad("boolean")),
            },
        };
        let term = IndexTerm::of(&value).ok_or_else(|| bad("scalar"))?;
        Ok((&spec.field, term))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

    fn users() -> CompiledCollection {
        CompiledCollection::compile(
            CollectionName::parse("users").unwrap(),
            json!({
                "type": "object",
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "age": {"type": "integer", "minimum": 0},
                    "vip": {"type": "boolean"},
                    "tags": {"type": "array"}
                },
                "required": ["email"]
            }),
            &["email".into(), "age".into(), "vip".into()],
            16,
            65536,
        )
        .unwrap()
    }

    #[test]
    fn validates_with_paths_and_no_values() {
        let c = users();
        assert!(c.validate(&json!({"email": "a@b.example"}), 10).is_ok());
        let errs = c
            .validate(&json!({"email": "secret-value", "age": -4}), 10)
            .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"/age"), "{errs:?}");
        assert!(paths.contains(&"/email"), "{errs:?}");
        assert!(
            errs.iter().all(|e| !e.message.contains("secret-value")),
            "{errs:?}"
        );
        assert!(c.validate(&json!([1]), 10).is_err());
    }

    #[test]
    fn refuses_bad_definitions() {
        let n = CollectionName::parse("x").unwrap();
        let compile = |s: Value, i: &[&str]| {
            let idx: Vec<String> = i.iter().map(|s| s.to_string()).collect();
            CompiledCollection::compile(n.clone(), s, &idx, 4, 1024)
        };
        assert_eq!(
            compile(json!({"type": "array"}), &[]).unwrap_err(),
            SchemaError::NotObject
        );
        assert!(matches!(
            compile(
                json!({"type": "object", "properties": {"a": {"type": 5}}}),
                &[]
            ),
            Err(SchemaError::Invalid(_))
        ));
        assert!(matches!(
            compile(
                json!({"type": "object", "$ref": "http://127.0.0.1:1/x.json"}),
                &[]
            ),
            Err(SchemaError::Invalid(_))
        ));
        assert_eq!(
            compile(
                json!({"type": "object", "properties": {"a": {"type": "object"}}}),
                &["a"]
            )
            .unwrap_err(),
            SchemaError::IndexNotScalar("a".into())
        );
        assert_eq!(
            compile(json!({"type": "object"}), &["nope"]).unwrap_err(),
            SchemaError::IndexNotScalar("nope".into())
        );
        assert!(matches!(
            compile(
                json!({"type": "object", "description": "x".repeat(2000)}),
                &[]
            ),
            Err(SchemaError::TooLarge(_))
        ));
    }

    #[test]
    fn filters_parse_by_declared_type() {
        let c = users();
        assert_eq!(
            c.filter_term("age", "42").unwrap().1,
            IndexTerm::of(&json!(42)).unwrap()
        );
        assert!(c.filter_term("age", "x").is_err());
        assert_eq!(
            c.filter_term("vip", "true").unwrap().1,
            IndexTerm::of(&json!(true)).unwrap()
        );
        assert_eq!(
            c.filter_term("tags", "a").unwrap_err(),
            FilterError::NotIndexed("tags".into())
        );
        let terms = c.index_terms(&json!({"email": "a@b.example", "age": 3, "tags": []}));
        assert_eq!(terms.len(), 2);
    }
}
