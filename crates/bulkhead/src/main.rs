//! `bulkhead`: the server and its operator CLI, as one binary.
//!
//! Thin by design: parse the command line, resolve configuration, start telemetry, then hand
//! over to the server ([`serve`]) or to the API client commands ([`ops`], [`bench`]).

mod audit_cmd;
mod bench;
mod client;
mod config;
mod governance;
mod ops;
mod policy_bench;
mod serve;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

/// mimalloc: the request path allocates many small, short-lived objects across threads, where
/// it costs measurably less CPU than the system allocator (see BENCHMARKS.md). Built with its
/// `no_thp` feature: otherwise it asks for transparent huge pages on its whole arena, and
/// every 2 MiB page it touches again after returning memory is zeroed anew by the kernel —
/// up to 40 % of `audit verify`'s samples; without it the server served 1.06–1.28x the reads
/// per second (BENCHMARKS.md, "Allocator without transparent huge pages").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Strict tenant isolation and per-tenant governance for SaaS backends.
#[derive(Debug, Parser)]
#[command(
    name = "bulkhead",
    version,
    propagate_version = true,
    after_help = "\
Quick start:
  bulkhead serve                                   # embedded storage in ./bulkhead-data
  export BULKHEAD_ADMIN_TOKEN=...                  # printed on first start
  bulkhead tenants create acme
  bulkhead tokens mint --tenant <ID> --subject alice --role member"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage tenants on a running server (operator token required).
    Tenants {
        #[command(subcommand)]
        cmd: ops::TenantsCmd,
        #[command(flatten)]
        remote: ops::Remote,
    },
    /// Mint tenant tokens on a running server (operator token required).
    Tokens {
        #[command(subcommand)]
        cmd: ops::TokensCmd,
        #[command(flatten)]
        remote: ops::Remote,
    },
    /// Load-test a running server: read, write, mixed or healthz scenarios over many tenants.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        remote: ops::Remote,
    },
    /// Verify the tamper-evident audit logs: stored logs offline, or saved proofs.
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// Apply storage migrations and exit (PostgreSQL; the embedded database migrates on open).
    Migrate(MigrateArgs),
    /// Print the OpenAPI document of the API.
    Openapi,
    /// Policy tools that need no server.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Check a governance directory (policies/, tiers/, collections/); non-zero exit on violations.
    #[command(after_help = "\
Checks: every policy validates against Bulkhead's Cedar schema; no policy grants role `reader` a
write action; every tier sets at least one limit; every collection is a valid definition, and a
collection with `restricted` fields sets `retention_days`. See docs/policies.md.")]
    Lint {
        /// The governance directory
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Run policy test cases: DIR/platform/*.cedar, DIR/tenant.cedar and DIR/*.json case files.
    /// Exits non-zero if any case fails (for CI).
    Test {
        /// The test directory
        dir: PathBuf,
    },
    /// Micro-benchmark of the decision point: many tenants with their own policy sets,
    /// decisions per second, latency, memory (in-process; build with --release)
    Bench(policy_bench::PolicyBenchArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Configuration is layered: defaults, then --config FILE (TOML), then BULKHEAD_* environment
variables (nested keys with `__`, e.g. BULKHEAD_TOKENS__LEEWAY_SECONDS=10), then these flags.
Secrets: BULKHEAD_ADMIN_TOKEN (else <data-dir>/admin-token, generated on first start) and
BULKHEAD_MASTER_KEY (else <data-dir>/master.key, generated on the first start of a new embedded
data directory; with PostgreSQL it must be supplied).")]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8700]
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory of the embedded database and generated secrets [default: ./bulkhead-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML)
    #[arg(long, short = 'c', env = "BULKHEAD_CONFIG")]
    config: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Directory of platform policy files (`*.cedar`), hot-reloaded on change
    #[arg(long)]
    policy_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// Configuration file (TOML); `BULKHEAD_DATABASE_URL` or `[storage] url` names the database
    #[arg(long, short = 'c', env = "BULKHEAD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded database (when no PostgreSQL URL is configured)
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

#[allow(
    clippy::print_stderr,
    reason = "the error chain is the CLI's last word"
)]
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

#[allow(clippy::print_stdout, reason = "the OpenAPI document goes to stdout")]
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            let mut cfg = Config::load(a.config.as_deref())?;
            if let Some(l) = a.listen {
                cfg.listen = l;
            }
            if let Some(d) = a.data_dir {
                cfg.data_dir = d;
            }
            if let Some(f) = a.log_format {
                cfg.log_format = f;
            }
            if let Some(d) = a.policy_dir {
                cfg.policy.dir = Some(d);
            }
            let _flush_on_exit = telemetry::init(cfg.log_format, &cfg.log_level);
            serve::run(cfg).await
        }
        Command::Tenants { cmd, remote } => ops::tenants(&remote, cmd).await,
        Command::Tokens { cmd, remote } => ops::tokens(&remote, cmd).await,
        Command::Bench { args, remote } => bench::bench(&remote, args).await,
        Command::Audit { cmd } => audit_cmd::run(cmd).await,
        Command::Migrate(a) => {
            let mut cfg = Config::load(a.config.as_deref())?;
            if let Some(d) = a.data_dir {
                cfg.data_dir = d;
            }
            let _flush_on_exit = telemetry::init(cfg.log_format, &cfg.log_level);
            match cfg.storage.url.as_deref() {
                Some(url) => {
                    serve::migrate_postgres(
                        url,
                        std::time::Duration::from_secs(cfg.storage.connect_timeout_seconds),
                    )
                    .await?;
                    tracing::info!("PostgreSQL migrations applied");
                }
                None => {
                    serve::open_storage(&cfg).await?;
                    tracing::info!(data_dir = %cfg.data_dir.display(), "embedded database migrated");
                }
            }
            Ok(())
        }
        Command::Policy {
            cmd: PolicyCmd::Test { dir },
        } => {
            if governance::policy_test(&dir)? {
                Ok(())
            } else {
                anyhow::bail!("policy tests failed")
            }
        }
        Command::Policy {
            cmd: PolicyCmd::Bench(args),
        } => policy_bench::run(&args),
        Command::Lint { dir } => {
            if governance::lint_dir(&dir)? {
                Ok(())
            } else {
                anyhow::bail!("governance checks failed")
            }
        }
        Command::Openapi => {
            println!("{}", bulkhead_http::openapi().to_pretty_json()?);
            Ok(())
        }
    }
}
