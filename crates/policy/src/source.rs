//! Turning policy text into validated Cedar policies, with problems located by line and column.

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, ValidationMode, Validator};
use miette::Diagnostic;
use serde::Serialize;

/// Which layer a policy text is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The operator's layer: may permit and forbid.
    Platform,
    /// A tenant's layer: may only forbid (narrow what the platform allows).
    Tenant,
}

/// One reason a policy text was refused, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The text the problem is in (a file name, or `request` for a submitted body).
    pub source: String,
    /// 1-based line and column of the problem's start (0 when it has no location).
    pub line: usize,
    pub column: usize,
    /// The policy's id, when the problem belongs to one policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        if let Some(p) = &self.policy {
            write!(f, "policy `{p}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// 1-based line and column of a byte offset in `text`.
fn locate(text: &str, offset: usize) -> (usize, usize) {
    let upto = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = upto.matches('\n').count() + 1;
    let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn problem(
    source: &str,
    text: &str,
    diag: &dyn Diagnostic,
    policy: Option<String>,
    display: String,
) -> Problem {
    let offset = diag.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    let (line, column) = offset.map_or((0, 0), |o| locate(text, o));
    let mut message = display;
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    Problem {
        source: source.to_owned(),
        line,
        column,
        policy,
        message,
    }
}

/// The id a policy gets: `<prefix><@id annotation, or its position>`.
fn id_of(prefix: &str, p: &Policy) -> String {
    match p.annotation("id") {
        Some(a) => format!("{prefix}{a}"),
        None => format!("{prefix}{}", p.id()),
    }
}

/// Parses `text` (named `source` in problems), checks it suits `layer`, gives each policy the
/// id `<prefix><@id or policyN>`, and validates the whole text against the schema.
pub(crate) fn compile(
    validator: &Validator,
    layer: Layer,
    source: &str,
    text: &str,
    prefix: &str,
) -> Result<Vec<Policy>, Vec<Problem>> {
    let parsed = PolicySet::from_str(text).map_err(|errs| {
        errs.iter()
            .map(|e| problem(source, text, e, None, e.to_string()))
            .collect::<Vec<_>>()
    })?;
    let mut problems = Vec::new();
    for t in parsed.templates() {
        let (line, column) = text
            .find(&t.to_string())
            .map_or((0, 0), |o| locate(text, o));
        problems.push(Problem {
            source: source.to_owned(),
            line,
            column,
            policy: Some(t.id().to_string()),
            message: "policy templates (`?principal`, `?resource`) are not supported".into(),
        });
    }
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    let mut renamed = PolicySet::new();
    // The parser names policies `policy0`, `policy1`, … in text order: walk them in that order
    // to find where each starts.
    let mut in_order: Vec<&Policy> = parsed.policies().collect();
    in_order.sort_by_key(|p| {
        p.id()
            .to_string()
            .strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    let mut cursor = 0;
    for p in in_order {
        let id = id_of(prefix, p);
        let own = p.to_string();
        let start = text
            .get(cursor..)
            .and_then(|rest| rest.find(own.as_str()))
            .map(|o| o + cursor);
        if let Some(s) = start {
            cursor = s + own.len();
        }
        let (line, column) = start.map_or((0, 0), |o| locate(text, o));
        let at = |message: String| Problem {
            source: source.to_owned(),
            line,
            column,
            policy: Some(id.clone()),
            message,
        };
        if layer == Layer::Tenant && p.effect() == Effect::Permit {
            problems.push(at(
                "tenant policies can only narrow what the platform allows: use `forbid`, not `permit`"
                    .into(),
            ));
            continue;
        }
        if !ids.insert(id.clone()) {
            problems.push(at(format!("the id `{id}` is used by another policy")));
            continue;
        }
        let q = p.new_id(PolicyId::new(&id));
        if let Err(e) = renamed.add(q.clone()) {
            problems.push(at(e.to_string()));
            continue;
        }
        out.push(q);
    }
    let result = validator.validate(&renamed, ValidationMode::Strict);
    for e in result.validation_errors() {
        problems.push(problem(
            source,
            text,
            e,
            Some(e.policy_id().to_string()),
            e.to_string(),
        ));
    }
    problems.sort_by_key(|p| (p.line, p.column));
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets() {
        assert_eq!(locate("ab\ncd", 0), (1, 1));
        assert_eq!(locate("ab\ncd", 4), (2, 2));
        assert_eq!(locate("ab", 99), (1, 3));
    }
}
