//! Fuzzes token parsing and verification: `Verifier::inspect` on anything, then `verify` with a
//! real key. Must never panic, and must never accept a token that key did not sign.
//!
//! The first input byte picks how the rest becomes a token:
//! - `0`: the bytes themselves (if UTF-8);
//! - `1`: three byte strings split on `0xFF` (header JSON, claims JSON, signature), each
//!   base64url-encoded, so the JSON parsers behind `inspect` are reached;
//! - `2`: a real token's header and signature around fuzzed claims JSON;
//! - otherwise: edits (see `bulkhead_fuzz::apply_edits`) of a real minted token, which must
//!   verify if and only if the edits left it unchanged.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_core::token::{MintRequest, SigningAlg, SigningKeyPair, TokenSettings, Verifier};
use bulkhead_core::{Role, Roles, Subject, TenantId, Timestamp};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    verifier: Verifier,
    /// The keys a lookup returns: one per algorithm, each for its own fresh tenant.
    keys: [SigningKeyPair; 2],
    /// A token minted by each key, valid at `now()`.
    minted: [String; 2],
}

fn now() -> Timestamp {
    Timestamp::from_unix_timestamp(1_800_000_000).unwrap()
}

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let verifier = Verifier::new(TokenSettings {
            issuer: "bulkhead".into(),
            audience: "bulkhead".into(),
            leeway_secs: 30,
            max_token_bytes: 8192,
            max_ttl_secs: 3600,
        });
        let keys = [
            SigningKeyPair::generate(TenantId::generate(), SigningAlg::EdDSA).unwrap(),
            SigningKeyPair::generate(TenantId::generate(), SigningAlg::ES256).unwrap(),
        ];
        let req = MintRequest {
            subject: Subject::parse("fuzz").unwrap(),
            roles: Roles::from_slice(&[Role::Member]).unwrap(),
            ttl_secs: 600,
        };
        let minted = [0, 1].map(|i| verifier.mint(&keys[i], &req, now()).unwrap().0);
        // Positive twin: the unmodified tokens verify, so a refusal below means something.
        for (k, t) in keys.iter().zip(&minted) {
            let claimed = verifier.inspect(t).unwrap();
            verifier.verify(t, claimed, k.public(), now()).unwrap();
        }
        Fixture {
            verifier,
            keys,
            minted,
        }
    })
}

/// Inspects `token` and, if that succeeds, verifies it against every fixture key, both as
/// looked up (its own tenant and kid) and relabelled with whatever tenant and kid the token
/// claims, so a forged token always reaches the signature check.
fn check(fx: &Fixture, token: &str) {
    let Ok(claimed) = fx.verifier.inspect(token) else {
        return;
    };
    for (key, minted) in fx.keys.iter().zip(&fx.minted) {
        let mut relabelled = key.public().clone();
        relabelled.tenant = claimed.tenant;
        relabelled.kid = claimed.kid.clone();
        for public in [key.public(), &relabelled] {
            let result = fx.verifier.verify(token, claimed.clone(), public, now());
            assert!(
                result.is_err() || token == minted.as_str(),
                "a token not signed by the {:?} key verified: {token:?}",
                key.public().alg
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                check(fx, s);
            }
        }
        1 => {
            let (header, tail) = bulkhead_fuzz::split_ff(rest);
            let (claims, sig) = bulkhead_fuzz::split_ff(tail);
            let token = [header, claims, sig]
                .map(|p| URL_SAFE_NO_PAD.encode(p))
                .join(".");
            check(fx, &token);
        }
        2 => {
            let (claims, _) = bulkhead_fuzz::split_ff(rest);
            for minted in &fx.minted {
                let mut parts = minted.split('.');
                let (Some(h), Some(_), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
                    unreachable!("a minted token has three segments");
                };
                check(fx, &format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(claims)));
            }
        }
        m => {
            let minted = &fx.minted[usize::from(m & 1)];
            let edited = bulkhead_fuzz::apply_edits(minted.as_bytes(), rest);
            if let Ok(s) = std::str::from_utf8(&edited) {
                check(fx, s);
            }
        }
    }
});
