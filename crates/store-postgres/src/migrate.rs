//! Schema migrations, run as the URL's user (who then owns the tables), one instance at a time.
//!
//! Each migration is a file in `migrations/`, embedded at build time, applied in its own
//! transaction together with its row in `schema_migrations`. Instances starting together
//! serialize on a session-level advisory lock; the lock goes with the session, so a migrating
//! instance that dies releases it.

use bulkhead_store::BackendError;
use tokio_postgres::NoTls;

use crate::conn::map;

/// Every migration: version, name, SQL. Versions only grow; applied files are never edited.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "single_statement",
        include_str!("../migrations/0002_single_statement.sql"),
    ),
    (
        3,
        "policies",
        include_str!("../migrations/0003_policies.sql"),
    ),
    (4, "audit", include_str!("../migrations/0004_audit.sql")),
    (5, "limits", include_str!("../migrations/0005_limits.sql")),
    (
        6,
        "registry_feed",
        include_str!("../migrations/0006_registry_feed.sql"),
    ),
    (
        7,
        "tenant_reads",
        include_str!("../migrations/0007_tenant_reads.sql"),
    ),
    (
        8,
        "checkpoint_batches",
        include_str!("../migrations/0008_checkpoint_batches.sql"),
    ),
];

/// The advisory lock key migrations hold (an arbitrary constant: "bulkhead" in ASCII).
const LOCK_KEY: i64 = 0x6275_6c6b_6865_6164;

/// Applies the migrations not yet applied.
pub(crate) async fn migrate(url: &str) -> Result<(), BackendError> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| map(&e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres: migration connection failed");
        }
    });
    let result = run(&mut client).await;
    drop(client);
    // The driver ends once the client is gone; waiting for it closes the session cleanly.
    let _ = driver.await;
    result
}

async fn run(client: &mut tokio_postgres::Client) -> Result<(), BackendError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| map(&e))?;
    let applied = apply(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| map(&e));
    applied?;
    unlocked.map(drop)
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<(), BackendError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| map(&e))?;
    let done: Vec<i64> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(|e| map(&e))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| map(&e))?;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = client.transaction().await.map_err(|e| map(&e))?;
        tx.batch_execute(sql).await.map_err(|e| {
            BackendError::Other(format!(
                "migration {version} (`{name}`) failed: {}",
                describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(|e| map(&e))?;
        tx.commit().await.map_err(|e| map(&e))?;
        tracing::info!(version, name, "postgres: migration applied");
    }
    Ok(())
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => crate::conn::with_causes(e),
    }
}
