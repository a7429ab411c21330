#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]
//! Property tests for the parsers of untrusted input: tokens, JSON nesting depth, blind-index
//! terms and record validation. The same parsers have cargo-fuzz targets in `fuzz/`; these run
//! on every `cargo test`, so CI exercises them on every change.

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_core::crypto::IndexTerm;
use bulkhead_core::limits::json_depth;
use bulkhead_core::schema::CompiledCollection;
use bulkhead_core::token::{
    Claims, MintRequest, PublicKey, SigningAlg, SigningKeyPair, TokenError, TokenSettings, Verifier,
};
use bulkhead_core::{CollectionName, Role, Roles, Subject, TenantContext, TenantId, Timestamp};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Tokens

struct TokenFixture {
    verifier: Verifier,
    /// The tenant whose tokens an attacker wants to forge, with an Ed25519 key.
    victim: SigningKeyPair,
    /// The same tenant's second key, ES256, so both algorithms are covered.
    victim_es: SigningKeyPair,
    /// Another tenant's key: a real key, real signatures, wrong tenant.
    other: SigningKeyPair,
    /// A token minted by `victim` and one by `victim_es`, both valid at `now()`.
    minted: String,
    minted_es: String,
}

static TOKENS: LazyLock<TokenFixture> = LazyLock::new(|| {
    let verifier = Verifier::new(settings());
    let tenant = TenantId::generate();
    let victim = SigningKeyPair::generate(tenant, SigningAlg::EdDSA).unwrap();
    let victim_es = SigningKeyPair::generate(tenant, SigningAlg::ES256).unwrap();
    let other = SigningKeyPair::generate(TenantId::generate(), SigningAlg::EdDSA).unwrap();
    let req = MintRequest {
        subject: Subject::parse("alice").unwrap(),
        roles: Roles::from_slice(&[Role::Member]).unwrap(),
        ttl_secs: 600,
    };
    let minted = verifier.mint(&victim, &req, now()).unwrap().0;
    let minted_es = verifier.mint(&victim_es, &req, now()).unwrap().0;
    TokenFixture {
        verifier,
        victim,
        victim_es,
        other,
        minted,
        minted_es,
    }
});

fn settings() -> TokenSettings {
    TokenSettings {
        issuer: "bulkhead".into(),
        audience: "bulkhead".into(),
        leeway_secs: 30,
        max_token_bytes: 8192,
        max_ttl_secs: 3600,
    }
}

fn now() -> Timestamp {
    Timestamp::from_unix_timestamp(1_800_000_000).unwrap()
}

/// Both verification steps, with `key` as the key a lookup returned.
fn check(token: &str, key: &PublicKey) -> Result<TenantContext, TokenError> {
    let v = &TOKENS.verifier;
    let claimed = v.inspect(token)?;
    v.verify(token, claimed, key, now())
}

/// Both steps with `key` relabelled as whatever tenant and key id the token claims: the most an
/// attacker could hope a lookup would hand over. Only the signature can refuse the token then.
fn check_as_claimed(token: &str, key: &PublicKey) -> Result<TenantContext, TokenError> {
    let v = &TOKENS.verifier;
    let claimed = v.inspect(token)?;
    let key = PublicKey {
        tenant: claimed.tenant,
        kid: claimed.kid.clone(),
        ..key.clone()
    };
    v.verify(token, claimed, &key, now())
}

/// Every key in the fixture, each tried as looked up and as relabelled, refuses `token`.
fn refused_by_every_key(token: &str) -> Result<(), TestCaseError> {
    let fx = &*TOKENS;
    for key in [fx.victim.public(), fx.victim_es.public(), fx.other.public()] {
        let direct = check(token, key);
        prop_assert!(
            direct.is_err(),
            "verified with the {:?} key as looked up: {token:?}",
            key.alg
        );
        let relabelled = check_as_claimed(token, key);
        prop_assert!(
            relabelled.is_err(),
            "verified with the {:?} key relabelled: {token:?}",
            key.alg
        );
    }
    Ok(())
}

/// A segment that looks like base64url, with now and then a character that is not.
fn b64ish_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9_-]{0,48}",
        1 => "[A-Za-z0-9_=+/ -]{0,48}",
        1 => "\\PC{0,6}",
    ]
}

/// `a.b.c`-shaped soup: usually three segments, sometimes fewer or more.
fn dotted_soup() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(b64ish_segment(), 3..=3),
        1 => prop::collection::vec(b64ish_segment(), 0..=6),
    ]
    .prop_map(|parts| parts.join("."))
}

fn roles() -> impl Strategy<Value = Vec<Role>> {
    prop::collection::vec(
        prop_oneof![Just(Role::Admin), Just(Role::Member), Just(Role::Reader)],
        1..=3,
    )
}

/// Claims naming the victim tenant, with arbitrary subject, roles and jti, valid at `now()`.
fn victim_claims() -> impl Strategy<Value = Claims> {
    (
        "[^\\p{C}]{1,24}",
        roles(),
        0i64..600,
        1i64..3600,
        "[A-Za-z0-9_-]{1,22}",
    )
        .prop_map(|(sub, roles, age, ttl, jti)| {
            let tenant = TOKENS.victim.public().tenant;
            let iat = now().unix_timestamp() - age;
            Claims {
                iss: settings().issuer_for(tenant),
                aud: "bulkhead".into(),
                sub,
                tid: tenant.to_string(),
                roles,
                iat,
                nbf: iat,
                exp: iat + age + ttl,
                jti,
            }
        })
}

fn b64_json(v: &impl serde::Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// One change to a token's text.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flips one of the low seven bits of a character.
    Flip(Index, u8),
    Drop(Index),
    Insert(Index, char),
    /// Swaps two of the dot-separated segments (the same one twice: no change).
    SwapSegments(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..7).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        any::<Index>().prop_map(Mutation::Drop),
        (
            any::<Index>(),
            prop_oneof![4 => "[A-Za-z0-9_.=-]", 1 => any::<char>().prop_map(String::from)]
        )
            .prop_map(|(i, c)| Mutation::Insert(i, c.chars().next().unwrap_or('A'))),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
    ]
}

/// Applies `m` to a token, character by character (so the result is still a string).
fn mutate(token: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    match m {
        Mutation::Flip(i, bit) => {
            let at = i.index(chars.len());
            chars[at] = char::from_u32(u32::from(chars[at]) ^ (1 << bit)).unwrap_or('\u{fffd}');
        }
        Mutation::Drop(i) => {
            chars.remove(i.index(chars.len()));
        }
        Mutation::Insert(i, c) => chars.insert(i.index(chars.len() + 1), *c),
        Mutation::SwapSegments(a, b) => {
            let mut parts: Vec<&str> = token.split('.').collect();
            let (a, b) = (a.index(parts.len()), b.index(parts.len()));
            parts.swap(a, b);
            return parts.join(".");
        }
    }
    chars.into_iter().collect()
}

#[test]
fn unchanged_real_tokens_verify() {
    let fx = &*TOKENS;
    for (token, key) in [(&fx.minted, &fx.victim), (&fx.minted_es, &fx.victim_es)] {
        let ctx = check(token, key.public()).unwrap();
        assert_eq!(ctx.tenant(), key.public().tenant);
        assert!(check_as_claimed(token, key.public()).is_ok());
        // Positive twin of the properties below: the right key verifies, any other does not.
        assert!(check(token, fx.other.public()).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn inspect_never_panics_on_arbitrary_strings(s in any::<String>()) {
        let r = TOKENS.verifier.inspect(&s);
        // Arbitrary text is never a well-formed token naming a tenant.
        prop_assert!(r.is_err() || s.split('.').count() == 3);
        refused_by_every_key(&s)?;
    }

    #[test]
    fn dotted_base64ish_soup_never_verifies(s in dotted_soup()) {
        let _ = TOKENS.verifier.inspect(&s);
        refused_by_every_key(&s)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Well-formed tokens (strict header, victim's claims) with signature bytes the attacker
    /// chose: `inspect` accepts their shape, and only the signature check stands in the way.
    #[test]
    fn well_formed_tokens_with_forged_signatures_never_verify(
        alg in prop_oneof![Just("EdDSA"), Just("ES256")],
        use_victim_kid in any::<bool>(),
        typ in prop::option::of(Just("JWT")),
        claims in victim_claims(),
        sig in prop_oneof![
            prop::collection::vec(any::<u8>(), 64..=64),
            prop::collection::vec(any::<u8>(), 1..100),
        ],
    ) {
        let fx = &*TOKENS;
        let kid = if use_victim_kid { fx.victim.public().kid.as_str() } else { "kforged" };
        let mut header = json!({"alg": alg, "kid": kid});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        let token = format!("{}.{}.{}", b64_json(&header), b64_json(&claims), URL_SAFE_NO_PAD.encode(&sig));
        let claimed = fx.verifier.inspect(&token);
        prop_assert!(claimed.is_ok(), "well-formed token refused by inspect: {claimed:?}");
        refused_by_every_key(&token)?;
    }

    /// Real signatures by another tenant's key over claims naming the victim are refused; the
    /// same claims signed by the victim's own key verify (positive twin).
    #[test]
    fn tokens_signed_by_another_tenants_key_never_verify(claims in victim_claims()) {
        let fx = &*TOKENS;
        let forged = fx.other.sign(&claims).unwrap();
        for key in [fx.victim.public(), fx.victim_es.public()] {
            prop_assert!(check(&forged, key).is_err());
            prop_assert!(check_as_claimed(&forged, key).is_err());
        }
        let genuine = fx.victim.sign(&claims).unwrap();
        let ctx = check(&genuine, fx.victim.public());
        prop_assert!(ctx.is_ok(), "{ctx:?}");
        prop_assert_eq!(ctx.unwrap().tenant(), fx.victim.public().tenant);
    }

    /// Any change to a real token's text makes it fail; no change, and it still verifies.
    #[test]
    fn mutated_real_tokens_never_verify(es in any::<bool>(), edits in prop::collection::vec(mutation(), 1..=3)) {
        let fx = &*TOKENS;
        let (original, key) = if es { (&fx.minted_es, &fx.victim_es) } else { (&fx.minted, &fx.victim) };
        let mut token = original.clone();
        for m in &edits {
            token = mutate(&token, m);
        }
        if token == *original {
            prop_assert!(check(&token, key.public()).is_ok());
        } else {
            refused_by_every_key(&token)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON depth and index terms

/// Arbitrary JSON, at most 6 levels deep. Leaves include integral floats, so `1.0`-like values
/// meet the integer rule of `IndexTerm::of`.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        (-1000i32..1000).prop_map(|i| json!(f64::from(i))),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The definition `json_depth` must agree with, written the obvious (recursive) way.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Every node of `v`, the root first.
fn nodes(v: &Value) -> Vec<&Value> {
    let mut out = vec![v];
    let mut i = 0;
    while let Some(n) = out.get(i).copied() {
        match n {
            Value::Array(a) => out.extend(a),
            Value::Object(o) => out.extend(o.values()),
            _ => {}
        }
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_depth_agrees_with_recursive_definition(v in json_value(), wrap in 0usize..200) {
        let d = json_depth(&v);
        prop_assert_eq!(d, depth(&v));
        let mut wrapped = v;
        for _ in 0..wrap {
            wrapped = json!([wrapped]);
        }
        prop_assert_eq!(json_depth(&wrapped), d + wrap);
    }

    #[test]
    fn index_term_equal_for_equal_values(v in json_value()) {
        for n in nodes(&v) {
            let term = IndexTerm::of(n);
            prop_assert_eq!(term.is_some(), !(n.is_null() || n.is_array() || n.is_object()));
            prop_assert_eq!(&term, &IndexTerm::of(&n.clone()));
            // The same value read back from its JSON text (when it reads back equal).
            let back: Value = serde_json::from_str(&n.to_string()).unwrap();
            if back == *n {
                prop_assert_eq!(&term, &IndexTerm::of(&back));
            }
        }
    }

    #[test]
    fn integral_floats_index_like_the_integer(i in -8_999_999_999_999_999i64..9_000_000_000_000_000) {
        #[allow(clippy::cast_precision_loss, reason = "below 2^53, exact")]
        let f = i as f64;
        prop_assert_eq!(IndexTerm::of(&json!(f)), IndexTerm::of(&json!(i)));
    }

    #[test]
    fn index_terms_never_collide_across_types(i in any::<i64>(), f in any::<f64>(), b in any::<bool>(), s in "\\PC{0,12}") {
        let num = IndexTerm::of(&json!(i));
        prop_assert_ne!(&num, &IndexTerm::of(&json!(i.to_string())));
        prop_assert_ne!(&IndexTerm::of(&json!(b)), &IndexTerm::of(&json!(b.to_string())));
        prop_assert_ne!(&IndexTerm::of(&json!(b)), &IndexTerm::of(&json!(u8::from(b))));
        if let Some(n) = serde_json::Number::from_f64(f) {
            let t = IndexTerm::of(&Value::Number(n.clone()));
            prop_assert_ne!(&t, &IndexTerm::of(&json!(n.to_string())));
        }
        if let Ok(parsed) = serde_json::from_str::<Value>(&s)
            && !parsed.is_string()
        {
            prop_assert_ne!(&IndexTerm::of(&json!(s)), &IndexTerm::of(&parsed));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Record validation against a fixed schema

/// Marks every string a record-like value carries, to check messages never quote values.
const MARK: &str = "SECRETVALUE";

static USERS: LazyLock<CompiledCollection> = LazyLock::new(|| {
    CompiledCollection::compile(
        CollectionName::parse("users").unwrap(),
        json!({
            "type": "object",
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": 64},
                "age": {"type": "integer", "minimum": 0, "maximum": 200},
                "vip": {"type": "boolean"},
                "score": {"type": "number", "exclusiveMinimum": 0},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
                "kind": {"enum": ["a", "b", 3]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "uniqueItems": true, "maxItems": 4},
                "meta": {"type": "object", "additionalProperties": {"type": ["string", "number"]}, "propertyNames": {"pattern": "^[a-z]+$"}},
                "when": {"type": "string", "format": "date-time"},
                "ref": {"type": "string", "format": "uuid"}
            },
            "required": ["email"],
            "additionalProperties": false
        }),
        &["email".into(), "age".into(), "vip".into(), "score".into()],
        16,
        65536,
    )
    .unwrap()
});

/// Values whose every string carries `MARK`.
fn marked_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        "\\PC{0,10}".prop_map(|s| Value::from(format!("{MARK}{s}"))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like a `users` record: known fields (and some unknown) with arbitrary values.
fn record_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("email"),
        Just("age"),
        Just("vip"),
        Just("score"),
        Just("code"),
        Just("kind"),
        Just("tags"),
        Just("meta"),
        Just("when"),
        Just("ref"),
        Just("other"),
    ];
    prop::collection::btree_map(field, marked_value(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validate_never_panics_on_arbitrary_data(v in prop_oneof![json_value(), record_like()], max in 1usize..20) {
        match USERS.validate(&v, max) {
            Ok(()) => prop_assert!(v.is_object()),
            Err(violations) => {
                prop_assert!(!violations.is_empty() && violations.len() <= max, "{violations:?}");
                if !v.is_object() {
                    prop_assert_eq!(violations.len(), 1);
                    prop_assert_eq!(violations[0].path.as_str(), "");
                }
            }
        }
        let _ = USERS.index_terms(&v);
    }

    /// Violation messages are returned to clients and logged: they never quote record values.
    #[test]
    fn violations_never_quote_values(v in record_like()) {
        if let Err(violations) = USERS.validate(&v, 16) {
            for violation in &violations {
                prop_assert!(!violation.message.contains(MARK), "{violation:?}");
            }
        }
    }

    /// A stored record is found by filtering on its own value as a client writes it in a query
    /// string (`where.age=42`).
    #[test]
    fn stored_values_are_found_by_their_filter(
        email in "[a-z]{1,8}@[a-z]{1,8}\\.example",
        age in prop::option::of(0i64..=200),
        vip in prop::option::of(any::<bool>()),
        score in prop::option::of(prop_oneof![
            (1i64..1_000_000).prop_map(Value::from),
            (1i32..1000).prop_map(|i| json!(f64::from(i))),
        ]),
    ) {
        let mut record = json!({"email": email});
        if let Some(a) = age { record["age"] = json!(a); }
        if let Some(b) = vip { record["vip"] = json!(b); }
        if let Some(s) = score { record["score"] = s; }
        prop_assert!(USERS.validate(&record, 16).is_ok(), "{record}");
        let terms = USERS.index_terms(&record);
        prop_assert_eq!(terms.len(), 1 + usize::from(age.is_some()) + usize::from(vip.is_some()) + usize::from(record.get("score").is_some()));
        for (field, term) in terms {
            let raw = match &record[field.as_str()] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (f, t) = USERS.filter_term(field.as_str(), &raw).unwrap();
            prop_assert_eq!(f, field);
            prop_assert_eq!(t, term);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Known gaps, found while writing the properties above. Each test asserts today's behaviour so
// it fails (and gets flipped) when the gap is closed.

/// Re-encodes a token's signature with `f` applied to its 64 raw bytes.
fn with_signature(token: &str, f: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    format!("{head}.{}", URL_SAFE_NO_PAD.encode(f(&raw)))
}

/// ES256 signatures are malleable in principle: `(r, s)` and `(r, n - s)` are both valid ECDSA
/// signatures. Bulkhead mints low-S only and refuses high-S, so a token has one spelling.
/// Ed25519 likewise refuses `s + L` (the twin below).
#[test]
fn es256_high_s_twin_of_a_real_token_is_refused() {
    let fx = &*TOKENS;
    let twin = with_signature(&fx.minted_es, |raw| {
        let sig = p256::ecdsa::Signature::from_slice(raw).unwrap();
        let (r, s) = sig.split_scalars();
        p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes())
            .unwrap()
            .to_vec()
    });
    assert_ne!(twin, fx.minted_es);
    // Positive twin: the minted (low-S) token verifies; its high-S spelling does not.
    assert!(check(&fx.minted_es, fx.victim_es.public()).is_ok());
    assert_eq!(
        check(&twin, fx.victim_es.public()).unwrap_err(),
        TokenError::BadSignature
    );

    // Ed25519: adding the group order L to `s` gives an equivalent signature that is refused.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let ed_twin = with_signature(&fx.minted, |raw| {
        let mut out = raw.to_vec();
        let mut carry = 0u16;
        for (b, l) in out[32..].iter_mut().zip(L) {
            let sum = u16::from(*b) + u16::from(l) + carry;
            *b = sum.to_le_bytes()[0];
            carry = sum >> 8;
        }
        out
    });
    assert_ne!(ed_twin, fx.minted);
    assert_eq!(
        check(&ed_twin, fx.victim.public()).unwrap_err(),
        TokenError::BadSignature
    );
}

/// An `integer` field holding a value above `i64::MAX` (valid JSON Schema, and indexed) can be
/// filtered on: `where.n=18446744073709551615` finds the stored term.
#[test]
fn integer_filter_above_i64_max_finds_the_indexed_term() {
    let c = CompiledCollection::compile(
        CollectionName::parse("c").unwrap(),
        json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        &["n".into()],
        16,
        65536,
    )
    .unwrap();
    let record = json!({"n": u64::MAX});
    assert!(c.validate(&record, 16).is_ok());
    let (_, stored) = c.index_terms(&record).pop().unwrap();
    assert_eq!(c.filter_term("n", &u64::MAX.to_string()).unwrap().1, stored);
    assert!(
        c.filter_term("n", "18446744073709551616").is_err(),
        "beyond u64 is refused"
    );
    // Positive twin: at i64::MAX the filter finds the indexed term.
    let record = json!({"n": i64::MAX});
    let (_, stored) = c.index_terms(&record).pop().unwrap();
    assert_eq!(c.filter_term("n", &i64::MAX.to_string()).unwrap().1, stored);
}

/// Integral floats index like the integer they equal across the whole i64/u64 range, so a
/// `number` field holding `9001000000000000.0` (or `1e16`) matches the filter
/// `9001000000000000` (or `10000000000000000`).
#[test]
fn large_integral_floats_index_like_the_integer() {
    for (f, i) in [
        (9_001_000_000_000_000.0, 9_001_000_000_000_000u64),
        (1e16, 10_000_000_000_000_000),
    ] {
        assert_eq!(IndexTerm::of(&json!(f)), IndexTerm::of(&json!(i)), "{f}");
    }
    assert_eq!(
        IndexTerm::of(&json!(8_999_999_999_999_999.0_f64 - 1.0)),
        IndexTerm::of(&json!(8_999_999_999_999_998i64))
    );
}
