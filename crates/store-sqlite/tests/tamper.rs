//! What someone who can write the database file, but does not hold the master key, can do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::sync::Arc;

use bulkhead_core::crypto::MasterKey;
use bulkhead_core::token::{MintRequest, SigningAlg, SigningKeyPair, TokenSettings, Verifier};
use bulkhead_core::{Role, Roles, Subject, TenantName, TierName, Timestamp};
use bulkhead_store::{Store, StoreConfig, StoreError};
use bulkhead_store_sqlite::SqliteStore;
use rusqlite::params;

#[tokio::test]
async fn a_planted_public_key_does_not_verify_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path(), 2).unwrap();
    let store = Store::open(
        Arc::new(sqlite.clone()),
        Arc::new(sqlite.clone()),
        MasterKey::generate(),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let t = store
        .create_tenant(
            TenantName::parse("victim").unwrap(),
            TierName::standard(),
            SigningAlg::EdDSA,
        )
        .await
        .unwrap();
    let genuine = store.active_signing_key(t.id).await.unwrap();
    let kid = genuine.public().kid.clone();
    // The attacker writes their own public key into the victim's key row.
    let attacker = SigningKeyPair::from_pkcs8(
        t.id,
        kid.clone(),
        SigningAlg::EdDSA,
        SigningKeyPair::generate(t.id, SigningAlg::EdDSA)
            .unwrap()
            .pkcs8_der(),
    )
    .unwrap();
    let raw = rusqlite::Connection::open(sqlite.path()).unwrap();
    let n = raw
        .execute(
            "UPDATE signing_keys SET public = ?3 WHERE tenant_id = ?1 AND kid = ?2",
            params![t.id.as_bytes(), kid.as_str(), attacker.public().bytes],
        )
        .unwrap();
    assert_eq!(n, 1);
    // Verification keys come from the wrapped private key, not from the planted column.
    let state = store.tenant_state(t.id).await.unwrap().unwrap();
    assert_eq!(state.key(&kid).unwrap(), genuine.public());
    let v = Verifier::new(TokenSettings {
        issuer: "i".into(),
        audience: "a".into(),
        leeway_secs: 5,
        max_token_bytes: 8192,
        max_ttl_secs: 600,
    });
    let req = MintRequest {
        subject: Subject::parse("m").unwrap(),
        roles: Roles::from_slice(&[Role::Admin]).unwrap(),
        ttl_secs: 60,
    };
    let now = Timestamp::now_utc();
    let (forged, _) = v.mint(&attacker, &req, now).unwrap();
    let claimed = v.inspect(&forged).unwrap();
    assert!(
        v.verify(&forged, claimed, state.key(&kid).unwrap(), now)
            .is_err()
    );
    // Positive twin: the genuine key's tokens verify.
    let (good, _) = v.mint(&genuine, &req, now).unwrap();
    let claimed = v.inspect(&good).unwrap();
    assert!(
        v.verify(&good, claimed, state.key(&kid).unwrap(), now)
            .is_ok()
    );
    // Replacing the wrapped private key too is detected, not silently accepted.
    raw.execute(
        "UPDATE signing_keys SET wrapped_private = x'00' WHERE tenant_id = ?1 AND kid = ?2",
        params![t.id.as_bytes(), kid.as_str()],
    )
    .unwrap();
    let fresh = Store::open(
        Arc::new(sqlite.clone()),
        Arc::new(sqlite),
        MasterKey::generate(),
        StoreConfig::default(),
    )
    .await;
    assert!(fresh.is_err(), "another master key is refused at open");
    match store.active_signing_key(t.id).await {
        Err(StoreError::Integrity(_)) => {}
        other => panic!("expected Integrity, got {other:?}"),
    }
}
