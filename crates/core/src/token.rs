//! Tenant-scoped tokens: minting with a tenant's own key, and verification that can only
//! succeed with a key belonging to the tenant the token names.
//!
//! Verification is in two steps so that key lookup (which may need storage) stays outside
//! this I/O-free crate:
//! 1. [`Verifier::inspect`] checks the token's shape without trusting it: size, strict unpadded
//!    base64url (RFC 7515), a header with exactly the members Bulkhead writes (no `crit`, `jku`,
//!    `x5u`, `jwk`, `x5c`…), an allowed `alg`, and claims of the right form. It returns which
//!    tenant and key the token *claims*.
//! 2. The caller looks up that tenant's key by id — never from anywhere the token points to —
//!    and [`Verifier::verify`] checks that the key is that tenant's, the signature, issuer,
//!    audience and time window, and only then creates the [`TenantContext`].

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{KeyId, Role, Roles, Subject, TenantContext, TenantId, Timestamp};

/// The signature algorithms a tenant key can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlg {
    /// Ed25519 (the default).
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::EdDSA => "EdDSA",
            SigningAlg::ES256 => "ES256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(SigningAlg::EdDSA),
            "ES256" => Some(SigningAlg::ES256),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            SigningAlg::EdDSA => Algorithm::EdDSA,
            SigningAlg::ES256 => Algorithm::ES256,
        }
    }
}

/// Why a token was refused. The variant is a reason *class*, safe to log and to tell the
/// caller; nothing here carries the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than allowed")]
    Oversized,
    #[error("token is malformed")]
    Malformed,
    #[error("token header carries a member Bulkhead does not accept")]
    ForbiddenHeader,
    #[error("token algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("token signing key is unknown")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer is wrong")]
    WrongIssuer,
    #[error("token audience is wrong")]
    WrongAudience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token claims are invalid")]
    BadClaims,
}

impl TokenError {
    /// A stable, machine-readable name for logs, metrics and audit.
    pub fn class(self) -> &'static str {
        match self {
            TokenError::Oversized => "oversized",
            TokenError::Malformed => "malformed",
            TokenError::ForbiddenHeader => "forbidden_header",
            TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::BadClaims => "bad_claims",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("signing key material is invalid")]
    Invalid,
    #[error("signing failed")]
    Sign,
}

/// The claims of a Bulkhead token. Unknown claims are refused when verifying: Bulkhead is the
/// only issuer, so anything else in a token was not put there by Bulkhead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tid: String,
    pub roles: Vec<Role>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// The header members Bulkhead writes, and the only ones it accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictHeader {
    alg: String,
    kid: String,
    #[serde(default)]
    typ: Option<String>,
}

/// A tenant's public key, always tagged with the tenant that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub tenant: TenantId,
    pub kid: KeyId,
    pub alg: SigningAlg,
    /// Ed25519: the 32-byte key; ES256: the uncompressed SEC1 point (65 bytes).
    pub bytes: Vec<u8>,
}

impl PublicKey {
    /// The key as an RFC 7517 JWK.
    pub fn to_jwk(&self) -> serde_json::Value {
        match self.alg {
            SigningAlg::EdDSA => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                "kid": self.kid.as_str(), "x": URL_SAFE_NO_PAD.encode(&self.bytes),
            }),
            SigningAlg::ES256 => {
                let x = self.bytes.get(1..33).unwrap_or_default();
                let y = self.bytes.get(33..65).unwrap_or_default();
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
                    "kid": self.kid.as_str(),
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }

    fn decoding_key(&self) -> Result<DecodingKey, TokenError> {
        match self.alg {
            SigningAlg::EdDSA if self.bytes.len() == 32 => {
                Ok(DecodingKey::from_ed_der(&self.bytes))
            }
            SigningAlg::ES256 if self.bytes.len() == 65 => {
                Ok(DecodingKey::from_ec_der(&self.bytes))
            }
            _ => Err(TokenError::UnknownKey),
        }
    }
}

/// A tenant's signing key pair. The private half lives in memory only while minting; at rest it
/// is wrapped by the master key.
pub struct SigningKeyPair {
    public: PublicKey,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SigningKeyPair {
    pub fn generate(tenant: TenantId, alg: SigningAlg) -> Result<Self, KeyError> {
        let kid = KeyId::generate();
        match alg {
            SigningAlg::EdDSA => {
                let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
                let der = sk.to_pkcs8_der().map_err(|_| KeyError::Invalid)?;
                Self::from_pkcs8(tenant, kid, alg, der.as_bytes())
            }
            SigningAlg::ES256 => {
                use p256::pkcs8::EncodePrivateKey as _;
                let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
                let der = sk.to_pkcs8_der().map_err(|_| KeyError::Invalid)?;
                Self::from_pkcs8(tenant, kid, alg, der.as_bytes())
            }
        }
    }

    /// Rebuilds a key pair from its PKCS#8 DER private key (as unwrapped from storage).
    pub fn from_pkcs8(
        tenant: TenantId,
        kid: KeyId,
        alg: SigningAlg,
        der: &[u8],
    ) -> Result<Self, KeyError> {
        let bytes = match alg {
            SigningAlg::EdDSA => {
                let sk = ed25519_dalek::SigningKey::from_pkcs8_der(der)
                    .map_err(|_| KeyError::Invalid)?;
                sk.verifying_key().to_bytes().to_vec()
            }
            SigningAlg::ES256 => {
                use p256::pkcs8::DecodePrivateKey as _;
                let sk =
                    p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|_| KeyError::Invalid)?;
                sk.verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec()
            }
        };
        Ok(Self {
            public: PublicKey {
                tenant,
                kid,
                alg,
                bytes,
            },
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The private key as PKCS#8 DER, for wrapping before it is stored.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Signs `claims` as a compact JWS with this key's `kid`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(self.public.alg.jwt());
        header.kid = Some(self.public.kid.as_str().to_owned());
        let key = match self.public.alg {
            SigningAlg::EdDSA => EncodingKey::from_ed_der(&self.pkcs8),
            SigningAlg::ES256 => EncodingKey::from_ec_der(&self.pkcs8),
        };
        jsonwebtoken::encode(&header, claims, &key).map_err(|_| KeyError::Sign)
    }
}

/// Token settings shared by minting and verification.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Prefix of every tenant's issuer: a tenant's `iss` is `{issuer}/tenants/{tenant_id}`.
    pub issuer: String,
    /// The `aud` every token carries and every verification requires.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (at most 60).
    pub leeway_secs: u64,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Longest lifetime a minted token may have, in seconds.
    pub max_ttl_secs: u64,
}

impl TokenSettings {
    /// The most clock skew Bulkhead will tolerate, whatever is configured.
    pub const MAX_LEEWAY_SECS: u64 = 60;

    pub fn issuer_for(&self, tenant: TenantId) -> String {
        format!("{}/tenants/{}", self.issuer, tenant)
    }
}

/// What a token claims before anything in it is trusted: which tenant and key to look up.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub tenant: TenantId,
    pub kid: KeyId,
    pub alg: SigningAlg,
    claims: Claims,
}

/// A request to mint a token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub subject: Subject,
    pub roles: Roles,
    pub ttl_secs: u64,
}

#[derive(Debug, Clone)]
pub struct Verifier {
    settings: TokenSettings,
}

impl Verifier {
    pub fn new(mut settings: TokenSettings) -> Self {
        settings.leeway_secs = settings.leeway_secs.min(TokenSettings::MAX_LEEWAY_SECS);
        Self { settings }
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Mints a token for `key`'s tenant. Returns the token and its expiry.
    pub fn mint(
        &self,
        key: &SigningKeyPair,
        req: &MintRequest,
        now: Timestamp,
    ) -> Result<(String, Timestamp), KeyError> {
        let ttl = req.ttl_secs.clamp(1, self.settings.max_ttl_secs);
        let iat = now.unix_timestamp();
        let exp = iat.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
        let mut jti = [0u8; 16];
        OsRng.fill_bytes(&mut jti);
        let tenant = key.public().tenant;
        let claims = Claims {
            iss: self.settings.issuer_for(tenant),
            aud: self.settings.audience.clone(),
            sub: req.subject.as_str().to_owned(),
            tid: tenant.to_string(),
            roles: req.roles.to_vec(),
            iat,
            nbf: iat,
            exp,
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let token = low_s(key.public.alg, key.sign(&claims)?)?;
        let expires = Timestamp::from_unix_timestamp(exp).map_err(|_| KeyError::Sign)?;
        Ok((token, expires))
    }

    /// Step 1: checks the token's form and reads what it claims, trusting none of it.
    pub fn inspect(&self, token: &str) -> Result<Unverified, TokenError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(TokenError::Oversized);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if s.is_empty() {
            return Err(TokenError::Malformed);
        }
        let header_bytes = strict_b64(h)?;
        let payload_bytes = strict_b64(p)?;
        strict_b64(s)?;

        // Any member beyond alg/kid/typ (crit, jku, x5u, jwk, x5c, cty…) is refused outright.
        let members: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
        if members
            .keys()
            .any(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
        {
            return Err(TokenError::ForbiddenHeader);
        }
        let header: StrictHeader =
            serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
        let alg = SigningAlg::parse(&header.alg).ok_or(TokenError::UnsupportedAlgorithm)?;
        if header.typ.as_deref().is_some_and(|t| t != "JWT") {
            return Err(TokenError::Malformed);
        }
        let kid = KeyId::parse(&header.kid).map_err(|_| TokenError::UnknownKey)?;
        let claims: Claims =
            serde_json::from_slice(&payload_bytes).map_err(|_| TokenError::BadClaims)?;
        let tenant = TenantId::parse(&claims.tid).map_err(|_| TokenError::BadClaims)?;
        Ok(Unverified {
            tenant,
            kid,
            alg,
            claims,
        })
    }

    /// Step 2: verifies the token with `key`, which the caller looked up by the claimed tenant
    /// and key id. Creates the tenant context only if every check passes.
    pub fn verify(
        &self,
        token: &str,
        claimed: Unverified,
        key: &PublicKey,
        now: Timestamp,
    ) -> Result<TenantContext, TokenError> {
        // INVARIANT: the key must belong to the tenant the token names. A token that says
        // tenant A but was signed with B's key fails here even if the signature is valid.
        if key.tenant != claimed.tenant || key.kid != claimed.kid {
            return Err(TokenError::UnknownKey);
        }
        if key.alg != claimed.alg {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let issuer = self.settings.issuer_for(claimed.tenant);
        let mut validation = Validation::new(key.alg.jwt());
        // Time is checked below against the injected clock; the library checks the signature,
        // the algorithm allow-list, issuer and audience.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        validation.set_audience(&[&self.settings.audience]);
        validation.set_issuer(&[&issuer]);
        if key.alg == SigningAlg::ES256 && !is_low_s(token)? {
            // `(r, n - s)` is as valid as `(r, s)`: accepting both would give every token a
            // second spelling anyone can compute. Bulkhead mints low-S only and accepts only that.
            return Err(TokenError::BadSignature);
        }
        let decoding = key.decoding_key()?;
        let data = jsonwebtoken::decode::<Claims>(token, &decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAlgorithm => TokenError::UnsupportedAlgorithm,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::BadSignature,
            }
        })?;
        let c = data.claims;
        // The signed claims are the ones inspected: same bytes, but check rather than assume.
        if c != claimed.claims {
            return Err(TokenError::BadClaims);
        }
        if c.iss != issuer {
            return Err(TokenError::WrongIssuer);
        }
        if c.aud != self.settings.audience {
            return Err(TokenError::WrongAudience);
        }
        let now_s = now.unix_timestamp();
        let leeway = i64::try_from(self.settings.leeway_secs).unwrap_or(0);
        if c.exp <= c.nbf || c.iat > c.exp {
            return Err(TokenError::BadClaims);
        }
        if now_s >= c.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if now_s.saturating_add(leeway) < c.nbf || now_s.saturating_add(leeway) < c.iat {
            return Err(TokenError::NotYetValid);
        }
        let subject = Subject::parse(&c.sub).map_err(|_| TokenError::BadClaims)?;
        let roles = Roles::from_slice(&c.roles).ok_or(TokenError::BadClaims)?;
        if c.jti.is_empty() || c.jti.len() > 64 {
            return Err(TokenError::BadClaims);
        }
        let expires_at =
            Timestamp::from_unix_timestamp(c.exp).map_err(|_| TokenError::BadClaims)?;
        Ok(TenantContext::new(
            claimed.tenant,
            subject,
            roles,
            claimed.kid,
            c.jti,
            expires_at,
        ))
    }
}

/// Rewrites an ES256 token's signature to its low-S form (a no-op for other algorithms).
fn low_s(alg: SigningAlg, token: String) -> Result<String, KeyError> {
    if alg != SigningAlg::ES256 {
        return Ok(token);
    }
    let (head, sig) = token.rsplit_once('.').ok_or(KeyError::Sign)?;
    let raw = URL_SAFE_NO_PAD.decode(sig).map_err(|_| KeyError::Sign)?;
    let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| KeyError::Sign)?;
    match sig.normalize_s() {
        Some(low) => Ok(format!("{head}.{}", URL_SAFE_NO_PAD.encode(low.to_bytes()))),
        None => Ok(token),
    }
}

/// Whether an ES256 token's signature is in low-S form. A signature that is not 64 bytes of
/// `r || s` is refused here too.
fn is_low_s(token: &str) -> Result<bool, TokenError> {
    let sig = token
        .rsplit_once('.')
        .map(|(_, s)| s)
        .ok_or(TokenError::Malformed)?;
    let raw = strict_b64(sig)?;
    let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| TokenError::BadSignature)?;
    Ok(sig.normalize_s().is_none())
}

/// Decodes unpadded base64url and nothing else: no padding, no standard-alphabet characters,
/// no whitespace, no non-canonical trailing bits (RFC 7515 §2).
fn strict_b64(s: &str) -> Result<Vec<u8>, TokenError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(TokenError::Malformed);
    }
    URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use time::Duration;

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "https://bulkhead.test".into(),
            audience: "bulkhead".into(),
            leeway_secs: 30,
            max_token_bytes: 8192,
            max_ttl_secs: 86_400,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn req() -> MintRequest {
        MintRequest {
            subject: Subject::parse("alice").unwrap(),
            roles: Roles::from_slice(&[Role::Member]).unwrap(),
            ttl_secs: 600,
        }
    }

    /// Runs both verification steps with `key` as the looked-up key.
    fn check(
        v: &Verifier,
        token: &str,
        key: &PublicKey,
        at: Timestamp,
    ) -> Result<TenantContext, TokenError> {
        let claimed = v.inspect(token)?;
        v.verify(token, claimed, key, at)
    }

    #[test]
    fn own_key_verifies_for_both_algorithms() {
        let v = Verifier::new(settings());
        for alg in [SigningAlg::EdDSA, SigningAlg::ES256] {
            let t = TenantId::generate();
            let kp = SigningKeyPair::generate(t, alg).unwrap();
            let (tok, exp) = v.mint(&kp, &req(), now()).unwrap();
            let ctx = check(&v, &tok, kp.public(), now()).unwrap();
            assert_eq!(ctx.tenant(), t);
            assert_eq!(ctx.subject().as_str(), "alice");
            assert_eq!(exp, now() + Duration::seconds(600));
            // The restored key pair verifies the same way.
            let back = SigningKeyPair::from_pkcs8(t, kp.public().kid.clone(), alg, kp.pkcs8_der())
                .unwrap();
            assert_eq!(back.public(), kp.public());
        }
    }

    #[test]
    fn token_signed_by_another_tenants_key_is_refused() {
        let v = Verifier::new(settings());
        let a = TenantId::generate();
        let b = TenantId::generate();
        let ka = SigningKeyPair::generate(a, SigningAlg::EdDSA).unwrap();
        let kb = SigningKeyPair::generate(b, SigningAlg::EdDSA).unwrap();
        // B's key signs claims that say tenant A, with A's issuer.
        let claims = Claims {
            iss: settings().issuer_for(a),
            aud: "bulkhead".into(),
            sub: "mallory".into(),
            tid: a.to_string(),
            roles: vec![Role::Admin],
            iat: now().unix_timestamp(),
            nbf: now().unix_timestamp(),
            exp: now().unix_timestamp() + 60,
            jti: "x".into(),
        };
        let forged = kb.sign(&claims).unwrap();
        // Looked up as A's key (what a server does): kid mismatch, refused.
        assert_eq!(
            check(&v, &forged, ka.public(), now()).unwrap_err(),
            TokenError::UnknownKey
        );
        // Even if a lookup bug handed over B's key, the key's owner is B, not A: refused.
        assert_eq!(
            check(&v, &forged, kb.public(), now()).unwrap_err(),
            TokenError::UnknownKey
        );
        // A key claiming A's kid but carrying B's bytes fails on the signature.
        let lying = PublicKey {
            tenant: a,
            kid: kb.public().kid.clone(),
            ..kb.public().clone()
        };
        let mut other = lying.clone();
        other.bytes = ka.public().bytes.clone();
        assert_eq!(
            check(&v, &forged, &other, now()).unwrap_err(),
            TokenError::BadSignature
        );
        // Positive twin: A's own key signing A's claims verifies.
        let good = ka.sign(&Claims { ..claims }).unwrap();
        assert!(check(&v, &good, ka.public(), now()).is_ok());
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn hostile_headers_are_refused() {
        let v = Verifier::new(settings());
        let t = TenantId::generate();
        let kp = SigningKeyPair::generate(t, SigningAlg::EdDSA).unwrap();
        let (tok, _) = v.mint(&kp, &req(), now()).unwrap();
        let mut parts = tok.split('.');
        let (_, payload, sig) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let kid = kp.public().kid.as_str();
        let cases = [
            (
                serde_json::json!({"alg": "none", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (
                serde_json::json!({"alg": "HS256", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (
                serde_json::json!({"alg": "RS256", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
                TokenError::ForbiddenHeader,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid, "jku": "http://127.0.0.1/k"}),
                TokenError::ForbiddenHeader,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid, "x5u": "http://127.0.0.1/c"}),
                TokenError::ForbiddenHeader,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid, "jwk": kp.public().to_jwk()}),
                TokenError::ForbiddenHeader,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid, "x5c": ["AA"]}),
                TokenError::ForbiddenHeader,
            ),
            (serde_json::json!({"alg": "EdDSA"}), TokenError::Malformed),
            (
                serde_json::json!({"alg": "EdDSA", "kid": "../../etc"}),
                TokenError::UnknownKey,
            ),
        ];
        for (h, want) in cases {
            let t2 = format!("{}.{payload}.{sig}", b64(&h));
            assert_eq!(check(&v, &t2, kp.public(), now()).unwrap_err(), want, "{h}");
        }
        // HS256 "signed" with the public key bytes as an HMAC secret.
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some(kid.into()),
                ..Header::new(Algorithm::HS256)
            },
            &v.inspect(&tok).unwrap().claims,
            &EncodingKey::from_secret(&kp.public().bytes),
        )
        .unwrap();
        assert_eq!(
            check(&v, &hs, kp.public(), now()).unwrap_err(),
            TokenError::UnsupportedAlgorithm
        );
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let v = Verifier::new(settings());
        let t = TenantId::generate();
        let kp = SigningKeyPair::generate(t, SigningAlg::EdDSA).unwrap();
        let (tok, _) = v.mint(&kp, &req(), now()).unwrap();
        assert!(check(&v, &tok, kp.public(), now()).is_ok());
        let (hp, sig) = tok.rsplit_once('.').unwrap();
        for bad in [
            format!("{tok}="),
            format!("{hp}.{sig}=="),
            format!("{tok}."),
            format!("{hp}."),
            tok.replace('-', "+").replace('_', "/"),
            format!(" {tok}"),
            format!("{hp}.{sig}\n"),
            hp.to_string(),
            String::new(),
            "...".into(),
            format!("{tok}.{sig}"),
        ] {
            if bad == tok {
                continue;
            }
            let err = check(&v, &bad, kp.public(), now()).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed | TokenError::BadSignature),
                "{bad}: {err:?}"
            );
        }
        let big = format!("{hp}.{}", "A".repeat(9000));
        assert_eq!(
            check(&v, &big, kp.public(), now()).unwrap_err(),
            TokenError::Oversized
        );
        // A flipped signature bit.
        let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig_bytes[0] ^= 1;
        let flipped = format!("{hp}.{}", URL_SAFE_NO_PAD.encode(sig_bytes));
        assert_eq!(
            check(&v, &flipped, kp.public(), now()).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn time_window_with_leeway() {
        let v = Verifier::new(settings());
        let t = TenantId::generate();
        let kp = SigningKeyPair::generate(t, SigningAlg::EdDSA).unwrap();
        let (tok, exp) = v.mint(&kp, &req(), now()).unwrap();
        assert!(check(&v, &tok, kp.public(), exp + Duration::seconds(29)).is_ok());
        assert_eq!(
            check(&v, &tok, kp.public(), exp + Duration::seconds(30)).unwrap_err(),
            TokenError::Expired
        );
        assert!(check(&v, &tok, kp.public(), now() - Duration::seconds(30)).is_ok());
        assert_eq!(
            check(&v, &tok, kp.public(), now() - Duration::seconds(31)).unwrap_err(),
            TokenError::NotYetValid
        );
        // Configured leeway above 60 s is capped.
        let lax = Verifier::new(TokenSettings {
            leeway_secs: 3600,
            ..settings()
        });
        assert_eq!(lax.settings().leeway_secs, 60);
    }

    #[test]
    fn wrong_audience_or_issuer() {
        let t = TenantId::generate();
        let kp = SigningKeyPair::generate(t, SigningAlg::EdDSA).unwrap();
        let minted_elsewhere = Verifier::new(TokenSettings {
            audience: "other".into(),
            ..settings()
        });
        let (tok, _) = minted_elsewhere.mint(&kp, &req(), now()).unwrap();
        let v = Verifier::new(settings());
        assert_eq!(
            check(&v, &tok, kp.public(), now()).unwrap_err(),
            TokenError::WrongAudience
        );
        let other_iss = Verifier::new(TokenSettings {
            issuer: "https://evil".into(),
            ..settings()
        });
        let (tok, _) = other_iss.mint(&kp, &req(), now()).unwrap();
        assert_eq!(
            check(&v, &tok, kp.public(), now()).unwrap_err(),
            TokenError::WrongIssuer
        );
    }

    #[test]
    fn extra_claims_are_refused() {
        let v = Verifier::new(settings());
        let t = TenantId::generate();
        let kp = SigningKeyPair::generate(t, SigningAlg::EdDSA).unwrap();
        let (tok, _) = v.mint(&kp, &req(), now()).unwrap();
        let mut parts = tok.split('.');
        let h = parts.next().unwrap();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap())
                .unwrap();
        claims["admin"] = serde_json::json!(true);
        let forged = format!("{h}.{}.{}", b64(&claims), parts.next().unwrap());
        assert_eq!(
            check(&v, &forged, kp.public(), now()).unwrap_err(),
            TokenError::BadClaims
        );
    }
}
