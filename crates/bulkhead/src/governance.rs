//! `bulkhead policy test DIR` and `bulkhead lint DIR`: policy checks for CI, without a server.
//!
//! Both exit non-zero when something fails, with one precise line per problem
//! (`file:line:column: message`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_core::TenantId;
use bulkhead_policy::lint::{CollectionSpec, Governance, TierSpec, lint};
use bulkhead_policy::testcase::{CaseFile, run};
use bulkhead_policy::{Engine, EngineConfig, Problem};

/// Files of `dir` with extension `ext`, sorted; none if `dir` does not exist.
fn files(dir: &Path, ext: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("cannot read `{}`", dir.display()))?
    {
        let path = entry?.path();
        if path.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

fn rel(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn engine() -> anyhow::Result<Engine> {
    Engine::new(EngineConfig::default()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Prints each problem as `file:line:column: message`, policy file names under `sub/`.
#[allow(clippy::print_stderr, reason = "CLI output")]
fn print_problems(sub: &str, problems: &[Problem]) {
    for p in problems {
        let mut p = p.clone();
        if !p.source.contains('/') && p.source.ends_with(".cedar") {
            p.source = format!("{sub}/{}", p.source);
        }
        eprintln!("{p}");
    }
}

/// `bulkhead policy test DIR`: `DIR/platform/*.cedar` (platform policies, optional),
/// `DIR/tenant.cedar` (tenant policies, optional), and `DIR/*.json` case files.
#[allow(clippy::print_stdout, clippy::print_stderr, reason = "CLI output")]
pub fn policy_test(dir: &Path) -> anyhow::Result<bool> {
    let engine = engine()?;
    let platform: Vec<(String, String)> = files(&dir.join("platform"), &["cedar"])?
        .iter()
        .map(|p| Ok((rel(&dir.join("platform"), p), read(p)?)))
        .collect::<anyhow::Result<_>>()?;
    if let Err(problems) = engine.set_platform(platform) {
        print_problems("platform", &problems);
        return Ok(false);
    }
    let tenant_file = dir.join("tenant.cedar");
    let tenant_text = if tenant_file.exists() {
        Some(read(&tenant_file)?)
    } else {
        None
    };
    let set = match engine.load(TenantId::generate(), tenant_text.as_deref().map(|t| (1, t))) {
        Ok(s) => s,
        Err(problems) => {
            for mut p in problems {
                p.source = "tenant.cedar".into();
                eprintln!("{p}");
            }
            return Ok(false);
        }
    };
    let case_files = files(dir, &["json"])?;
    if case_files.is_empty() {
        anyhow::bail!("no test case files (`*.json`) in `{}`", dir.display());
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for f in case_files {
        let name = rel(dir, &f);
        let file: CaseFile = serde_json::from_str(&read(&f)?)
            .with_context(|| format!("`{name}` is not a test case file"))?;
        for case in &file.cases {
            let o = run(&engine, &set, case);
            match o.failure {
                None => {
                    passed += 1;
                    println!("ok    {name}: {}", o.name);
                }
                Some(why) => {
                    failed += 1;
                    println!("FAIL  {name}: {}: {why}", o.name);
                }
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// `bulkhead lint DIR`: `DIR/policies/*.cedar`, `DIR/tiers/*.{toml,json}`,
/// `DIR/collections/*.json`.
#[allow(clippy::print_stdout, clippy::print_stderr, reason = "CLI output")]
pub fn lint_dir(dir: &Path) -> anyhow::Result<bool> {
    if !dir.is_dir() {
        anyhow::bail!("`{}` is not a directory", dir.display());
    }
    let engine = engine()?;
    let mut g = Governance::default();
    let pdir = dir.join("policies");
    for p in files(&pdir, &["cedar"])? {
        g.policies.push((rel(&pdir, &p), read(&p)?));
    }
    for p in files(&dir.join("tiers"), &["toml", "json"])? {
        let text = read(&p)?;
        let parsed: Result<TierSpec, String> =
            if p.extension().and_then(|e| e.to_str()) == Some("toml") {
                toml::from_str(&text).map_err(|e| e.to_string())
            } else {
                serde_json::from_str(&text).map_err(|e| e.to_string())
            };
        g.tiers.push((rel(dir, &p), parsed));
    }
    for p in files(&dir.join("collections"), &["json"])? {
        let parsed: Result<CollectionSpec, String> =
            serde_json::from_str(&read(&p)?).map_err(|e| e.to_string());
        g.collections.push((rel(dir, &p), parsed));
    }
    let problems = lint(&engine, &g);
    print_problems("policies", &problems);
    let checked = g.policies.len() + g.tiers.len() + g.collections.len();
    if problems.is_empty() {
        println!("{checked} files checked: no violations");
        Ok(true)
    } else {
        eprintln!("\n{} violation(s) in {checked} files", problems.len());
        Ok(false)
    }
}
