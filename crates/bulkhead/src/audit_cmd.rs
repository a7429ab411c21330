//! `bulkhead audit …`: offline verification of the audit logs against the storage itself, and
//! of saved API responses (proofs and checkpoints) against the server's public key.
#![allow(clippy::print_stdout, reason = "this module is CLI output")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bulkhead_audit::checkpoint::{
    CheckpointJson, ConsistencyProofJson, InclusionProofJson, KeyJson, verify_consistency_json,
    verify_inclusion_json,
};
use bulkhead_audit::{AuditKey, AuditPublicKey, LogId, SignedCheckpoint};
use bulkhead_core::TenantId;
use bulkhead_core::crypto::MasterKey;
use bulkhead_store::audit::{VerifyFailure, VerifyReport, verify_all, verify_log};
use bulkhead_store::{RecordBackend, Registry};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
// The same SHA-256 implementation as the verifier's.
use bulkhead_audit::sha::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Recompute every audit tree from the stored entries and check every stored checkpoint
    /// and signature. Runs against the storage (server stopped or running); exits non-zero
    /// naming the first bad entry.
    Verify(VerifyArgs),
    /// Check saved API responses offline: an inclusion or consistency proof (or a checkpoint)
    /// with the server's public key (`GET /v1/audit/keys`).
    VerifyProof(VerifyProofArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The public key is derived from the master key when it is available (BULKHEAD_MASTER_KEY, or the
master key file of the data directory); otherwise pass --public-key (from GET /v1/audit/keys).

Examples:
  bulkhead audit verify --all --data-dir ./bulkhead-data
  bulkhead audit verify --tenant <ID> --database-url postgres://... --public-key <BASE64>")]
pub struct VerifyArgs {
    /// Verify this tenant's log
    #[arg(long, conflicts_with = "all")]
    tenant: Option<String>,
    /// Verify every tenant's log and the operator log (the default without --tenant)
    #[arg(long)]
    all: bool,
    /// Directory of the embedded database
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (else `[storage] url` or BULKHEAD_DATABASE_URL; else the embedded database)
    #[arg(long)]
    database_url: Option<String>,
    /// Configuration file (TOML)
    #[arg(long, short = 'c', env = "BULKHEAD_CONFIG")]
    config: Option<PathBuf>,
    /// The server's audit public key (standard base64, as in GET /v1/audit/keys)
    #[arg(long)]
    public_key: Option<String>,
    /// Also measure raw SHA-256 over the same number of bytes, and print both throughputs
    #[arg(long)]
    bench: bool,
    /// Print a JSON report
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  curl -s $URL/v1/audit/keys > keys.json
  curl -s -H \"authorization: Bearer $TOKEN\" \"$URL/v1/audit/proof/inclusion?seq=3&size=10\" > proof.json
  bulkhead audit verify-proof --keys keys.json proof.json")]
pub struct VerifyProofArgs {
    /// The response of GET /v1/audit/keys
    #[arg(long)]
    keys: PathBuf,
    /// The log the proof must be for (a tenant id, or `operator`); default: the one it names
    #[arg(long)]
    log: Option<String>,
    /// Saved responses: inclusion proofs, consistency proofs or checkpoints
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub async fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify(a) => verify(a).await,
        AuditCmd::VerifyProof(a) => verify_proof(&a),
    }
}

fn public_key(cfg: &Config, given: Option<&str>) -> anyhow::Result<AuditPublicKey> {
    if let Some(b64) = given {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("--public-key is not base64")?;
        let arr = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| anyhow::anyhow!("--public-key is not 32 bytes"))?;
        return AuditPublicKey::from_bytes(&arr).context("--public-key is not an Ed25519 key");
    }
    let text = match std::env::var("BULKHEAD_MASTER_KEY")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(k) => Zeroizing::new(k),
        None => {
            let path = cfg
                .storage
                .master_key_file
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("master.key"));
            Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no public key: pass --public-key, set BULKHEAD_MASTER_KEY, or keep the master key at `{}`",
                    path.display()
                )
            })?)
        }
    };
    let master = MasterKey::from_base64url(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(AuditKey::from_seed(&master.audit_signing_seed())
        .public()
        .clone())
}

async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(u) = &a.database_url {
        cfg.storage.url = Some(u.clone());
    }
    // Verification only reads: no migrations, and on the embedded storage no journal recovery
    // or placement either (a server may be running on the same files).
    cfg.storage.migrate_on_start = false;
    if cfg.storage.url.is_none() && !bulkhead_store_sqlite::database_path(&cfg.data_dir).exists() {
        bail!("no database in `{}`", cfg.data_dir.display());
    }
    let key = public_key(&cfg, a.public_key.as_deref())?;
    let (registry, backend): (Arc<dyn Registry>, Arc<dyn RecordBackend>) =
        if cfg.storage.url.is_none() {
            let s = bulkhead_store_sqlite::SqliteStore::open_read_only(
                &cfg.data_dir,
                cfg.storage.sqlite_readers,
            )
            .with_context(|| format!("cannot read the database in `{}`", cfg.data_dir.display()))?;
            (Arc::new(s.clone()), Arc::new(s))
        } else {
            crate::serve::open_storage(&cfg).await?
        };
    let started = Instant::now();
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg} {pos} entries ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let fail = |f: VerifyFailure| {
        bar.abandon();
        if a.json {
            println!(
                "{}",
                json!({"ok": false, "log": f.log, "at": f.at, "error": f.what})
            );
        }
        anyhow::anyhow!("audit verification failed: {f}")
    };
    let mut total = VerifyReport::default();
    let mut per_log = Vec::new();
    // Every log in one pass over the storage, when the adapter can scan them all.
    let mut whole = None;
    if a.tenant.is_none() {
        bar.set_message("all logs");
        let b = bar.clone();
        whole = verify_all(backend.clone(), &key, Arc::new(move |n| b.set_position(n)))
            .await
            .map_err(fail)?;
    }
    let logs_count = if let Some((logs, report)) = whole {
        total = report;
        usize::try_from(logs).unwrap_or(usize::MAX)
    } else {
        let logs = match &a.tenant {
            Some(t) => vec![LogId::Tenant(
                TenantId::parse(t).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?,
            )],
            None => {
                let mut logs = vec![LogId::Operator];
                let mut after = None;
                loop {
                    let page = registry
                        .list_tenants(after, 1000)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot list tenants: {e}"))?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id);
                    logs.extend(page.iter().map(|t| LogId::Tenant(t.id)));
                }
                logs
            }
        };
        for (i, log) in logs.iter().enumerate() {
            bar.set_message(format!("log {}/{} ({log})", i + 1, logs.len()));
            let base = total.entries;
            let r = verify_log(backend.as_ref(), *log, &key, &|n| {
                bar.set_position(base + n);
            })
            .await
            .map_err(fail)?;
            total.entries += r.entries;
            total.checkpoints += r.checkpoints;
            total.bytes += r.bytes;
            total.pruned += r.pruned;
            per_log.push((log.to_string(), r));
        }
        logs.len()
    };
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let sha = if a.bench {
        Some(raw_sha256(total.bytes.max(1)))
    } else {
        None
    };
    // The same work without storage: SHA-256 of each entry (average size) as a leaf, in memory.
    let sha_entries = if a.bench && total.entries > 0 {
        Some(raw_sha256_messages(
            total.entries,
            total.bytes / total.entries,
        ))
    } else {
        None
    };
    let verify_mbs = mb_per_s(total.bytes, elapsed);
    if a.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "logs": logs_count,
                "entries": total.entries,
                "checkpoints": total.checkpoints,
                "pruned": total.pruned,
                "bytes": total.bytes,
                "seconds": elapsed.as_secs_f64(),
                "verify_mb_per_s": verify_mbs,
                "raw_sha256_mb_per_s": sha,
                "ratio": sha.map(|s| verify_mbs / s),
                "raw_sha256_per_entry_mb_per_s": sha_entries,
                "ratio_per_entry": sha_entries.map(|s| verify_mbs / s),
            })
        );
    } else {
        println!(
            "ok: {} logs, {} entries, {} checkpoints verified ({} pruned by retention) in {:.2} s",
            logs_count,
            total.entries,
            total.checkpoints,
            total.pruned,
            elapsed.as_secs_f64()
        );
        if let Some(s) = sha {
            println!(
                "throughput: verify {verify_mbs:.1} MB/s over {} bytes; raw SHA-256 {s:.1} MB/s over the same bytes as one stream; ratio {:.2}",
                total.bytes,
                verify_mbs / s
            );
        }
        if let Some(s) = sha_entries {
            println!(
                "            raw SHA-256 {s:.1} MB/s over the same bytes as one message per entry; ratio {:.2}",
                verify_mbs / s
            );
        }
        if per_log.len() <= 20 {
            for (log, r) in &per_log {
                println!(
                    "  {log}: {} entries, {} checkpoints",
                    r.entries, r.checkpoints
                );
            }
        }
    }
    Ok(())
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// SHA-256 throughput of this machine over `bytes` bytes (hashed as one stream from memory).
fn raw_sha256(bytes: u64) -> f64 {
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut h = Sha256::new();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        h.update(chunk.get(..n).unwrap_or(&chunk));
        left -= n as u64;
    }
    std::hint::black_box(h.finalize());
    mb_per_s(bytes, started.elapsed())
}

/// SHA-256 throughput over `count` messages of `size` bytes each, from memory.
fn raw_sha256_messages(count: u64, size: u64) -> f64 {
    let msg = vec![0xa5u8; usize::try_from(size).unwrap_or(0)];
    let started = Instant::now();
    let mut acc = 0u8;
    for _ in 0..count {
        let d = Sha256::digest(&msg);
        acc ^= d.first().copied().unwrap_or(0);
    }
    std::hint::black_box(acc);
    mb_per_s(count.saturating_mul(size), started.elapsed())
}

fn verify_proof(a: &VerifyProofArgs) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Keys {
        keys: Vec<KeyJson>,
    }
    let keys: Keys = serde_json::from_slice(
        &std::fs::read(&a.keys).with_context(|| format!("cannot read `{}`", a.keys.display()))?,
    )
    .context("the keys file is not a GET /v1/audit/keys response")?;
    let keys: Vec<AuditPublicKey> = keys
        .keys
        .iter()
        .map(AuditPublicKey::from_json)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("keys file: {e}"))?;
    let log = a
        .log
        .as_deref()
        .map(|l| LogId::parse(l).context("--log is a tenant id or `operator`"))
        .transpose()?;
    for f in &a.files {
        let raw = std::fs::read(f).with_context(|| format!("cannot read `{}`", f.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&raw)
            .with_context(|| format!("`{}` is not JSON", f.display()))?;
        let what = if v.get("from_checkpoint").is_some() {
            let p: ConsistencyProofJson = serde_json::from_value(v)?;
            any_key(&keys, |k| verify_consistency_json(&p, k, log)).map(|()| {
                format!(
                    "consistency of {} -> {} entries of log {}",
                    p.from, p.to, p.log
                )
            })
        } else if v.get("checkpoint").is_some() {
            let p: InclusionProofJson = serde_json::from_value(v)?;
            any_key(&keys, |k| verify_inclusion_json(&p, k, log).map(drop))
                .map(|()| format!("entry {} in {} entries of log {}", p.seq, p.size, p.log))
        } else {
            let c: CheckpointJson = serde_json::from_value(v)?;
            let s = SignedCheckpoint::from_json(&c).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(l) = log
                && l != s.checkpoint.log
            {
                bail!(
                    "`{}`: the checkpoint is for log {}, not {l}",
                    f.display(),
                    c.log
                );
            }
            any_key(&keys, |k| k.verify(&s))
                .map(|()| format!("checkpoint of {} entries of log {}", c.size, c.log))
        };
        match what {
            Ok(w) => println!("ok: {}: {w}", f.display()),
            Err(e) => bail!("`{}` does not verify: {e}", f.display()),
        }
    }
    Ok(())
}

fn any_key(
    keys: &[AuditPublicKey],
    check: impl Fn(&AuditPublicKey) -> Result<(), bulkhead_audit::checkpoint::VerifyError>,
) -> Result<(), bulkhead_audit::checkpoint::VerifyError> {
    let mut last = bulkhead_audit::checkpoint::VerifyError::UnknownKey(String::new());
    for k in keys {
        match check(k) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}
