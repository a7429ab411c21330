//! Fuzzes decryption of stored bytes: `TenantKeys::open_record` and `open_meta` on ciphertext
//! read back from storage, which an attacker with database access may have written. Must never
//! panic, and must never authenticate bytes the key did not seal.
//!
//! The first input byte picks the mode:
//! - even: the rest is the ciphertext itself (the next 8 bytes also pick the record version);
//! - odd: edits (see `bulkhead_fuzz::apply_edits`) of a real sealed record and of a real sealed
//!   metadata blob, which must open if and only if the edits left them unchanged.
#![no_main]

use std::sync::OnceLock;

use bulkhead_core::crypto::{MasterKey, RecordPlace, TenantKeys};
use bulkhead_core::{CollectionName, RecordId, TenantId};
use libfuzzer_sys::fuzz_target;

const META_LABEL: &[&[u8]] = &[b"schema", b"c"];
const PLAINTEXT: &[u8] = br#"{"email":"a@b.example","age":3}"#;

struct Fixture {
    keys: TenantKeys,
    collection: CollectionName,
    record: RecordId,
    sealed_record: Vec<u8>,
    sealed_meta: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let (_, keys) = MasterKey::generate()
            .new_tenant_root(TenantId::generate())
            .unwrap();
        let collection = CollectionName::parse("c").unwrap();
        let record = RecordId::generate();
        let place = RecordPlace {
            collection: &collection,
            record,
            version: 1,
        };
        let sealed_record = keys.seal_record(&place, PLAINTEXT).unwrap();
        let sealed_meta = keys.seal_meta(META_LABEL, PLAINTEXT).unwrap();
        // Positive twin: the unmodified bytes open, so a refusal below means something.
        assert_eq!(keys.open_record(&place, &sealed_record).unwrap(), PLAINTEXT);
        assert_eq!(keys.open_meta(META_LABEL, &sealed_meta).unwrap(), PLAINTEXT);
        Fixture {
            keys,
            collection,
            record,
            sealed_record,
            sealed_meta,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let version = rest
            .get(..8)
            .map_or(1, |b| u64::from_be_bytes(b.try_into().unwrap()));
        for version in [1, version] {
            let place = RecordPlace {
                collection: &fx.collection,
                record: fx.record,
                version,
            };
            assert!(
                fx.keys.open_record(&place, rest).is_err(),
                "random bytes opened as a record"
            );
        }
        assert!(
            fx.keys.open_meta(META_LABEL, rest).is_err(),
            "random bytes opened as metadata"
        );
        return;
    }
    let place = RecordPlace {
        collection: &fx.collection,
        record: fx.record,
        version: 1,
    };
    let edited = bulkhead_fuzz::apply_edits(&fx.sealed_record, rest);
    match fx.keys.open_record(&place, &edited) {
        Ok(p) => assert!(
            edited == fx.sealed_record && p == PLAINTEXT,
            "edited record opened"
        ),
        Err(_) => assert_ne!(edited, fx.sealed_record, "unchanged record refused"),
    }
    let edited = bulkhead_fuzz::apply_edits(&fx.sealed_meta, rest);
    match fx.keys.open_meta(META_LABEL, &edited) {
        Ok(p) => assert!(
            edited == fx.sealed_meta && p == PLAINTEXT,
            "edited metadata opened"
        ),
        Err(_) => assert_ne!(edited, fx.sealed_meta, "unchanged metadata refused"),
    }
});
