//! Collection schemas: JSON Schema 2020-12 for record validation, plus the declared indexes
//! that equality filters may use, the classification of fields
//! (`"x-classification": "public" | "internal" | "confidential" | "restricted"` on a top-level
//! property) and the optional owner field that policies see as `resource.owner`.
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
    #[error(
        "`x-classification` of `{0}` must be one of `public`, `internal`, `confidential`, `restricted`"
    )]
    BadClassification(String),
    #[error("`x-classification` is allowed on top-level properties only (found under `{0}`)")]
    NestedClassification(String),
    #[error("owner field `{0}`: the schema must declare `properties.{0}.type` as `string`")]
    BadOwnerField(String),
}

/// How sensitive a field is. Policies decide, per caller, which classes are visible
/// (`field:read` on a `Bulkhead::Field` whose `classification` is [`Classification::as_str`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    /// Never logged, never quoted in an error message.
    Restricted,
}

impl Classification {
    pub const ALL: [Classification; 4] = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Restricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Bit of this class in a [`ClassSet`].
    fn bit(self) -> u8 {
        match self {
            Classification::Public => 1,
            Classification::Internal => 2,
            Classification::Confidential => 4,
            Classification::Restricted => 8,
        }
    }
}

/// A set of classifications (the classes a caller may see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassSet(u8);

impl ClassSet {
    pub const EVERY: ClassSet = ClassSet(15);

    pub fn insert(&mut self, c: Classification) {
        self.0 |= c.bit();
    }

    pub fn contains(self, c: Classification) -> bool {
        self.0 & c.bit() != 0
    }
}

/// The classified fields of a collection, and its owner field: what policies and masking need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPolicy {
    /// Top-level fields with an `x-classification`, in schema order. Unclassified fields are
    /// not masked (they are treated as `public`).
    pub classified: Vec<(FieldName, Classification)>,
    /// The field holding a record's owner (a subject), if the collection names one.
    pub owner_field: Option<FieldName>,
}

impl FieldPolicy {
    /// The classes present in the collection.
    pub fn classes(&self) -> ClassSet {
        let mut set = ClassSet::default();
        for (_, c) in &self.classified {
            set.insert(*c);
        }
        set
    }

    /// Fields the caller may not see, given the classes it may see.
    pub fn hidden(&self, visible: ClassSet) -> Vec<&FieldName> {
        self.classified
            .iter()
            .filter(|(_, c)| !visible.contains(*c))
            .map(|(f, _)| f)
            .collect()
    }

    /// Whether `field` is visible to a caller who may see `visible`.
    pub fn is_visible(&self, field: &str, visible: ClassSet) -> bool {
        self.classified
            .iter()
            .find(|(f, _)| f.as_str() == field)
            .is_none_or(|(_, c)| visible.contains(*c))
    }

    /// The owner a record's data names, if the collection has an owner field.
    pub fn owner_of<'a>(&self, data: &'a Value) -> Option<&'a str> {
        self.owner_field
            .as_ref()
            .and_then(|f| data.get(f.as_str()))
            .and_then(Value::as_str)
    }
}

/// Reads `x-classification` of top-level properties, refusing unknown classes and
/// classifications anywhere else (where they would silently protect nothing).
fn classify(schema: &Value) -> Result<Vec<(FieldName, Classification)>, SchemaError> {
    fn nested(v: &Value, path: &str, top: bool) -> Result<(), SchemaError> {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "x-classification" && !top {
                        return Err(SchemaError::NestedClassification(
                            path.chars().take(128).collect(),
                        ));
                    }
                    let p = format!("{path}/{k}");
                    nested(child, &p, false)?;
                }
                Ok(())
            }
            Value::Array(a) => a.iter().try_for_each(|c| nested(c, path, false)),
            _ => Ok(()),
        }
    }
    let mut out = Vec::new();
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(m) = schema.as_object() {
        for (k, v) in m {
            if k == "x-classification" {
                return Err(SchemaError::NestedClassification(String::new()));
            }
            if k != "properties" {
                nested(v, &format!("/{k}"), false)?;
            }
        }
    }
    for (name, prop) in props.into_iter().flatten() {
        if let Some(obj) = prop.as_object() {
            for (k, v) in obj {
                if k == "x-classification" {
                    let class = v.as_str().and_then(Classification::parse).ok_or_else(|| {
                        SchemaError::BadClassification(name.chars().take(64).collect())
                    })?;
                    let field = FieldName::parse(name).map_err(|_| {
                        SchemaError::BadClassification(name.chars().take(64).collect())
                    })?;
                    out.push((field, class));
                } else {
                    nested(v, &format!("/properties/{name}/{k}"), false)?;
                }
            }
        }
    }
    Ok(out)
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
    /// Classified fields and the owner field.
    pub fields: std::sync::Arc<FieldPolicy>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCollection")
            .field("name", &self.name)
            .field("indexes", &self.indexes)
            .field("fields", &self.fields)
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
        let classified = classify(&schema)?;
        Ok(Self {
            name,
            schema,
            indexes,
            fields: std::sync::Arc::new(FieldPolicy {
                classified,
                owner_field: None,
            }),
            validator,
        })
    }

    /// Names the field that holds a record's owner; it must be declared `"type": "string"`.
    pub fn with_owner_field(mut self, owner: Option<&str>) -> Result<Self, SchemaError> {
        let Some(owner) = owner else {
            return Ok(self);
        };
        let bad = || SchemaError::BadOwnerField(owner.chars().take(64).collect());
        let field = FieldName::parse(owner).map_err(|_| bad())?;
        let declared = self
            .schema
            .get("properties")
            .and_then(|p| p.get(owner))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str);
        if declared != Some("string") {
            return Err(bad());
        }
        let mut fields = (*self.fields).clone();
        fields.owner_field = Some(field);
        self.fields = std::sync::Arc::new(fields);
        Ok(self)
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
    fn classification_and_owner() {
        let n = CollectionName::parse("people").unwrap();
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string", "x-classification": "public"},
            "ssn": {"type": "string", "x-classification": "restricted"},
            "owner": {"type": "string"},
            "note": {"type": "string"}
        }});
        let c = CompiledCollection::compile(n.clone(), schema.clone(), &[], 4, 65536)
            .unwrap()
            .with_owner_field(Some("owner"))
            .unwrap();
        let f = &c.fields;
        assert_eq!(f.classified.len(), 2);
        let mut visible = ClassSet::default();
        visible.insert(Classification::Public);
        assert_eq!(
            f.hidden(visible)
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>(),
            vec!["ssn"]
        );
        assert!(f.is_visible("note", visible));
        assert!(!f.is_visible("ssn", visible));
        assert!(f.hidden(ClassSet::EVERY).is_empty());
        assert_eq!(f.owner_of(&json!({"owner": "u1"})), Some("u1"));
        // The owner field must be a declared string.
        assert_eq!(
            CompiledCollection::compile(n.clone(), schema, &[], 4, 65536)
                .unwrap()
                .with_owner_field(Some("nope"))
                .unwrap_err(),
            SchemaError::BadOwnerField("nope".into())
        );
        let bad = |s: Value| CompiledCollection::compile(n.clone(), s, &[], 4, 65536).unwrap_err();
        assert_eq!(
            bad(json!({"type": "object", "properties": {"a": {"x-classification": "secret"}}})),
            SchemaError::BadClassification("a".into())
        );
        assert!(matches!(
            bad(
                json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"x-classification": "restricted"}}}}})
            ),
            SchemaError::NestedClassification(_)
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
