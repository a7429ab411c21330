//! Governance checks (`bulkhead lint`): platform policies, tier definitions and collection
//! definitions kept as files, checked before they reach a server. Pure: the caller reads the
//! files and hands over their contents.

use bulkhead_core::CollectionName;
use bulkhead_core::schema::{Classification, CompiledCollection};
use serde::Deserialize;
use serde_json::Value;

use crate::{Engine, Problem};

/// A tier definition (the limits a tier gives its tenants). "Without limits" is a tier that
/// sets none of them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub rate_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub max_records: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_collections: Option<u64>,
    pub max_body_bytes: Option<u64>,
    /// The tier's share of a saturated server (fair-queue weight). Not a limit.
    pub weight: Option<u32>,
}

impl TierSpec {
    fn has_limits(&self) -> bool {
        self.rate_per_second.is_some()
            || self.burst.is_some()
            || self.max_concurrency.is_some()
            || self.max_records.is_some()
            || self.max_bytes.is_some()
            || self.max_collections.is_some()
            || self.max_body_bytes.is_some()
    }
}

/// A collection definition as a file: what `PUT /v1/collections/{name}` takes, plus its name
/// and the retention the governance rules require for sensitive data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    pub name: String,
    pub schema: Value,
    #[serde(default)]
    pub indexes: Vec<String>,
    #[serde(default)]
    pub owner_field: Option<String>,
    /// Days records are kept. Required when the schema has `restricted` fields.
    #[serde(default)]
    pub retention_days: Option<u64>,
}

/// A governance directory's contents: `(file name, parsed content or parse error)`.
#[derive(Debug, Default)]
pub struct Governance {
    /// Platform policy files: `(name, Cedar text)`.
    pub policies: Vec<(String, String)>,
    pub tiers: Vec<(String, Result<TierSpec, String>)>,
    pub collections: Vec<(String, Result<CollectionSpec, String>)>,
}

fn at(source: &str, message: String) -> Problem {
    Problem {
        source: source.to_owned(),
        line: 0,
        column: 0,
        policy: None,
        message,
    }
}

/// Every governance violation in `g`, in file order. Empty means it passes.
pub fn lint(engine: &Engine, g: &Governance) -> Vec<Problem> {
    let mut problems = Vec::new();
    // Policies: schema validation (with locations), then no write action for `reader`.
    match engine.check_platform(&g.policies) {
        Err(mut p) => problems.append(&mut p),
        Ok(all) => {
            let own: Vec<_> = all
                .into_iter()
                .filter(|p| p.id().to_string().starts_with("platform/"))
                .collect();
            for (id, action) in engine.reader_writes(&own) {
                let source = g
                    .policies
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .find(|n| id.starts_with(&format!("platform/{n}/")))
                    .unwrap_or("policies");
                problems.push(Problem {
                    source: source.to_owned(),
                    line: 0,
                    column: 0,
                    policy: Some(id.clone()),
                    message: format!(
                        "grants role `reader` the write action `{}`",
                        action.as_str()
                    ),
                });
            }
        }
    }
    for (name, tier) in &g.tiers {
        match tier {
            Err(e) => problems.push(at(name, format!("not a tier definition: {e}"))),
            Ok(t) if !t.has_limits() => problems.push(at(
                name,
                "tier sets no limits: set at least one of rate_per_second, burst, max_concurrency, max_records, max_bytes, max_collections, max_body_bytes".into(),
            )),
            Ok(TierSpec {
                weight: Some(w), ..
            }) if !(1..=bulkhead_core::tier::MAX_WEIGHT).contains(w) => problems.push(at(
                name,
                format!(
                    "weight {w} is out of range: a tier's weight is 1 to {}",
                    bulkhead_core::tier::MAX_WEIGHT
                ),
            )),
            Ok(_) => {}
        }
    }
    for (file, spec) in &g.collections {
        let spec = match spec {
            Err(e) => {
                problems.push(at(file, format!("not a collection definition: {e}")));
                continue;
            }
            Ok(s) => s,
        };
        let name = match CollectionName::parse(&spec.name) {
            Ok(n) => n,
            Err(e) => {
                problems.push(at(file, format!("collection `{}`: {e}", spec.name)));
                continue;
            }
        };
        let compiled = CompiledCollection::compile(
            name.clone(),
            spec.schema.clone(),
            &spec.indexes,
            usize::MAX,
            usize::MAX,
        )
        .and_then(|c| c.with_owner_field(spec.owner_field.as_deref()));
        match compiled {
            Err(e) => problems.push(at(file, format!("collection `{name}`: {e}"))),
            Ok(c) => {
                let restricted: Vec<&str> = c
                    .fields
                    .classified
                    .iter()
                    .filter(|(_, k)| *k == Classification::Restricted)
                    .map(|(f, _)| f.as_str())
                    .collect();
                if !restricted.is_empty() && spec.retention_days.is_none() {
                    problems.push(at(
                        file,
                        format!(
                            "collection `{name}` has restricted fields ({}) but no retention: set `retention_days`",
                            restricted
                                .iter()
                                .map(|f| format!("`{f}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
    }
    problems
}
