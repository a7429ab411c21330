//! Envelope encryption and blind indexes.
//!
//! Key hierarchy:
//! - the **master key** (32 bytes, from `BULKHEAD_MASTER_KEY` or a key file; never stored in the
//!   database) wraps every tenant's **root key**;
//! - a tenant's root key (32 random bytes, stored only wrapped) derives, with HKDF-SHA256, its
//!   **data key** (encrypts record contents) and its **index key** (keys the blind index);
//! - deleting a tenant's wrapped root key makes every byte it encrypted unreadable to the live
//!   system (crypto-shredding). A backup taken earlier still holds the wrapped root key and
//!   stays readable with the master key: destroying backups, or the master key they were
//!   written under, is what makes them unreadable.
//!
//! The cipher is XChaCha20-Poly1305: 192-bit random nonces never realistically collide, however
//! many versions a tenant writes under one key. Every ciphertext's associated data binds it to
//! its place (tenant, collection, record id, version, or tenant and purpose for wrapped keys), so
//! bytes copied to another row, record or tenant fail to decrypt instead of being misread.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{CollectionName, FieldName, KeyId, RecordId, TenantId};

/// Version byte leading every ciphertext this module writes.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed value takes beyond its plaintext: format version, nonce and tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 32 bytes of unpadded base64url")]
    BadMasterKey,
    /// Wrong key, or bytes that were changed, moved or truncated. Deliberately says nothing more.
    #[error("ciphertext failed authentication")]
    Unauthentic,
    #[error("encryption failed")]
    Seal,
}

/// A 32-byte secret that is wiped from memory when dropped and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Secret32([u8; 32]);

impl Secret32 {
    fn random() -> Self {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        Self(b)
    }
}

/// The key that wraps every tenant's root key.
#[derive(Clone)]
pub struct MasterKey(Secret32);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        Self(Secret32::random())
    }

    /// Parses 32 bytes encoded as unpadded base64url (surrounding whitespace ignored).
    pub fn from_base64url(s: &str) -> Result<Self, CryptoError> {
        use base64::Engine;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s.trim())
                .map_err(|_| CryptoError::BadMasterKey)?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Self(Secret32(arr)))
    }

    pub fn to_base64url(&self) -> Zeroizing<String> {
        use base64::Engine;
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.0))
    }

    /// A value stored beside the data that tells, at start, whether this is the master key the
    /// data was written with — without revealing anything about the key.
    pub fn check_value(&self) -> [u8; 32] {
        hmac32(&self.0.0, &[b"bulkhead/master-key-check/v1"])
    }

    /// The seed of the server's audit signing key (Ed25519). Derived, not stored: every
    /// instance with this master key signs audit checkpoints with the same key, and a copy of
    /// the database alone cannot forge them.
    pub fn audit_signing_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(hmac32(&self.0.0, &[b"bulkhead/audit-signing-key/v1"]))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0.0).into())
    }

    /// Creates a new tenant root key and returns it wrapped for storage.
    pub fn new_tenant_root(
        &self,
        tenant: TenantId,
    ) -> Result<(WrappedKey, TenantKeys), CryptoError> {
        let root = Secret32::random();
        let wrapped = seal(&self.cipher(), &root.0, &wrap_aad(tenant, b"root", None))?;
        Ok((WrappedKey(wrapped), TenantKeys::derive(tenant, &root)?))
    }

    /// Unwraps a tenant's root key and derives its working keys.
    pub fn open_tenant_root(
        &self,
        tenant: TenantId,
        wrapped: &WrappedKey,
    ) -> Result<TenantKeys, CryptoError> {
        let root = Zeroizing::new(open(
            &self.cipher(),
            &wrapped.0,
            &wrap_aad(tenant, b"root", None),
        )?);
        let arr: [u8; 32] = root
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Unauthentic)?;
        let root = Secret32(arr);
        TenantKeys::derive(tenant, &root)
    }

    /// Wraps a tenant's private signing key (PKCS#8 DER) for storage.
    pub fn wrap_signing_key(
        &self,
        tenant: TenantId,
        kid: &KeyId,
        pkcs8: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        seal(
            &self.cipher(),
            pkcs8,
            &wrap_aad(tenant, b"signing", Some(kid)),
        )
        .map(WrappedKey)
    }

    pub fn unwrap_signing_key(
        &self,
        tenant: TenantId,
        kid: &KeyId,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(
            &self.cipher(),
            &wrapped.0,
            &wrap_aad(tenant, b"signing", Some(kid)),
        )
        .map(Zeroizing::new)
    }
}

/// Key material as stored: opaque, authenticated bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    pub fn from_bytes(b: Vec<u8>) -> Self {
        Self(b)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// A tenant's working keys, derived from its root key. Held in memory only.
pub struct TenantKeys {
    tenant: TenantId,
    data: XChaCha20Poly1305,
    index: Secret32,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantKeys({})", self.tenant)
    }
}

impl TenantKeys {
    fn derive(tenant: TenantId, root: &Secret32) -> Result<Self, CryptoError> {
        let hk = Hkdf::<Sha256>::new(Some(tenant.as_bytes()), &root.0);
        let mut data = Zeroizing::new([0u8; 32]);
        let mut index = Secret32([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand does not fail; if it
        // ever did, the error surfaces instead of keys that silently differ.
        hk.expand(b"bulkhead/data-key/v1", data.as_mut_slice())
            .map_err(|_| CryptoError::Seal)?;
        hk.expand(b"bulkhead/index-key/v1", &mut index.0)
            .map_err(|_| CryptoError::Seal)?;
        Ok(Self {
            tenant,
            data: XChaCha20Poly1305::new(data.as_slice().into()),
            index,
        })
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Encrypts a record's serialized `data`, bound to where it is stored.
    pub fn seal_record(
        &self,
        place: &RecordPlace<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        seal(&self.data, plaintext, &place.aad(self.tenant))
    }

    /// Decrypts a record's `data`; fails if the bytes were moved from any other place.
    pub fn open_record(
        &self,
        place: &RecordPlace<'_>,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        open(&self.data, ciphertext, &place.aad(self.tenant))
    }

    /// Encrypts tenant metadata (collection schemas, stored idempotent responses) under `label`.
    pub fn seal_meta(&self, label: &[&[u8]], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.data, plaintext, &meta_aad(self.tenant, label))
    }

    pub fn open_meta(&self, label: &[&[u8]], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.data, ciphertext, &meta_aad(self.tenant, label))
    }

    /// The blind-index token of `value` for `collection.field`: equal values give equal tokens
    /// within this tenant, collection and field, and nothing comparable anywhere else.
    pub fn blind_index(
        &self,
        collection: &CollectionName,
        field: &FieldName,
        term: &IndexTerm,
    ) -> [u8; 16] {
        let full = hmac32(
            &self.index.0,
            &[
                b"bulkhead/blind-index/v1",
                &lp(collection.as_str().as_bytes()),
                &lp(field.as_str().as_bytes()),
                &term.0,
            ],
        );
        let mut out = [0u8; 16];
        out.copy_from_slice(full.get(..16).unwrap_or(&[0u8; 16]));
        out
    }

    /// A keyed digest of an idempotency key, so stored keys do not reveal what a client sent.
    pub fn keyed_digest(&self, label: &[u8], bytes: &[u8]) -> [u8; 32] {
        hmac32(&self.index.0, &[b"bulkhead/digest/v1", &lp(label), bytes])
    }
}

/// Where a record's ciphertext lives; every field goes into the associated data.
#[derive(Debug, Clone, Copy)]
pub struct RecordPlace<'a> {
    pub collection: &'a CollectionName,
    pub record: RecordId,
    pub version: u64,
}

impl RecordPlace<'_> {
    fn aad(&self, tenant: TenantId) -> Vec<u8> {
        let mut a = Vec::with_capacity(96);
        a.extend_from_slice(b"bulkhead/record/v1");
        a.extend_from_slice(tenant.as_bytes());
        a.extend_from_slice(&lp(self.collection.as_str().as_bytes()));
        a.extend_from_slice(self.record.as_bytes());
        a.extend_from_slice(&self.version.to_be_bytes());
        a
    }
}

/// The canonical bytes of a scalar value for the blind index. Equal JSON values give equal
/// terms (`1` and `1.0` included); values of different types never do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTerm(Vec<u8>);

impl IndexTerm {
    /// The term for a JSON scalar; `None` for arrays, objects and null (not indexed).
    pub fn of(value: &serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        let mut b = Vec::new();
        match value {
            Value::String(s) => {
                b.push(b's');
                b.extend_from_slice(s.as_bytes());
            }
            Value::Bool(v) => {
                b.push(b'b');
                b.push(u8::from(*v));
            }
            Value::Number(n) => {
                b.push(b'n');
                if let Some(i) = n.as_i64() {
                    b.extend_from_slice(format!("{i}").as_bytes());
                } else if let Some(u) = n.as_u64() {
                    b.extend_from_slice(format!("{u}").as_bytes());
                } else {
                    let f = n.as_f64()?;
                    // Integral floats index like the integer they equal: every integral f64
                    // in the i64/u64 ranges converts exactly.
                    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
                    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
                    if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
                        #[allow(clippy::cast_possible_truncation, reason = "integral and in range")]
                        let i = f as i64;
                        b.extend_from_slice(format!("{i}").as_bytes());
                    } else if f.fract() == 0.0 && (0.0..TWO_64).contains(&f) {
                        #[allow(
                            clippy::cast_possible_truncation,
                            clippy::cast_sign_loss,
                            reason = "integral, non-negative and in range"
                        )]
                        let u = f as u64;
                        b.extend_from_slice(format!("{u}").as_bytes());
                    } else {
                        b.extend_from_slice(format!("{f:e}").as_bytes());
                    }
                }
            }
            Value::Null | Value::Array(_) | Value::Object(_) => return None,
        }
        Some(Self(b))
    }
}

/// Length-prefixes a field so concatenated fields cannot be confused with one another.
fn lp(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.len() + 4);
    v.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(b);
    v
}

fn wrap_aad(tenant: TenantId, purpose: &[u8], kid: Option<&KeyId>) -> Vec<u8> {
    let mut a = b"bulkhead/wrapped-key/v1".to_vec();
    a.extend_from_slice(tenant.as_bytes());
    a.extend_from_slice(&lp(purpose));
    a.extend_from_slice(&lp(kid.map(|k| k.as_str().as_bytes()).unwrap_or_default()));
    a
}

fn meta_aad(tenant: TenantId, label: &[&[u8]]) -> Vec<u8> {
    let mut a = b"bulkhead/meta/v1".to_vec();
    a.extend_from_slice(tenant.as_bytes());
    for part in label {
        a.extend_from_slice(&lp(part));
    }
    a
}

fn hmac32(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length: new_from_slice cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn seal(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Seal)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &XChaCha20Poly1305, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (Some(&FORMAT_V1), Some(nonce), Some(ct)) = (
        data.first(),
        data.get(1..1 + NONCE_LEN),
        data.get(1 + NONCE_LEN..),
    ) else {
        return Err(CryptoError::Unauthentic);
    };
    if ct.len() < TAG_LEN {
        return Err(CryptoError::Unauthentic);
    }
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Unauthentic)?;
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Unauthentic)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

    fn coll(s: &str) -> CollectionName {
        CollectionName::parse(s).unwrap()
    }

    #[test]
    fn record_roundtrip_and_binding() {
        let mk = MasterKey::generate();
        let a = TenantId::generate();
        let b = TenantId::generate();
        let (_, ka) = mk.new_tenant_root(a).unwrap();
        let (_, kb) = mk.new_tenant_root(b).unwrap();
        let c = coll("orders");
        let r = RecordId::generate();
        let place = RecordPlace {
            collection: &c,
            record: r,
            version: 1,
        };
        let ct = ka.seal_record(&place, b"{\"x\":1}").unwrap();
        // Positive twin: the right tenant at the right place reads it.
        assert_eq!(ka.open_record(&place, &ct).unwrap(), b"{\"x\":1}");
        // Another tenant's keys cannot.
        assert_eq!(kb.open_record(&place, &ct), Err(CryptoError::Unauthentic));
        // Nor can the same tenant at another record, version or collection.
        let other = RecordPlace {
            record: RecordId::generate(),
            ..place
        };
        assert!(ka.open_record(&other, &ct).is_err());
        assert!(
            ka.open_record(
                &RecordPlace {
                    version: 2,
                    ..place
                },
                &ct
            )
            .is_err()
        );
        let c2 = coll("orders2");
        assert!(
            ka.open_record(
                &RecordPlace {
                    collection: &c2,
                    ..place
                },
                &ct
            )
            .is_err()
        );
        // Truncated or flipped bytes fail.
        assert!(ka.open_record(&place, &ct[..ct.len() - 1]).is_err());
        let mut flipped = ct.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(ka.open_record(&place, &flipped).is_err());
        assert!(ka.open_record(&place, &[]).is_err());
    }

    #[test]
    fn root_key_is_bound_to_its_tenant_and_master_key() {
        let mk = MasterKey::generate();
        let a = TenantId::generate();
        let (wrapped, keys) = mk.new_tenant_root(a).unwrap();
        let reopened = mk.open_tenant_root(a, &wrapped).unwrap();
        let c = coll("c");
        let place = RecordPlace {
            collection: &c,
            record: RecordId::generate(),
            version: 1,
        };
        let ct = keys.seal_record(&place, b"v").unwrap();
        assert_eq!(reopened.open_record(&place, &ct).unwrap(), b"v");
        assert!(mk.open_tenant_root(TenantId::generate(), &wrapped).is_err());
        assert!(MasterKey::generate().open_tenant_root(a, &wrapped).is_err());
    }

    #[test]
    fn blind_index_is_per_tenant_and_per_field() {
        let mk = MasterKey::generate();
        let (_, ka) = mk.new_tenant_root(TenantId::generate()).unwrap();
        let (_, kb) = mk.new_tenant_root(TenantId::generate()).unwrap();
        let c = coll("users");
        let email = FieldName::parse("email").unwrap();
        let alt = FieldName::parse("alt").unwrap();
        let t = IndexTerm::of(&json!("a@example.com")).unwrap();
        assert_eq!(
            ka.blind_index(&c, &email, &t),
            ka.blind_index(&c, &email, &t)
        );
        assert_ne!(
            ka.blind_index(&c, &email, &t),
            kb.blind_index(&c, &email, &t)
        );
        assert_ne!(ka.blind_index(&c, &email, &t), ka.blind_index(&c, &alt, &t));
    }

    #[test]
    fn index_terms() {
        assert_eq!(IndexTerm::of(&json!(1)), IndexTerm::of(&json!(1.0)));
        assert_ne!(IndexTerm::of(&json!(1)), IndexTerm::of(&json!("1")));
        assert_ne!(IndexTerm::of(&json!(true)), IndexTerm::of(&json!("true")));
        assert_eq!(IndexTerm::of(&json!(null)), None);
        assert_eq!(IndexTerm::of(&json!([1])), None);
    }

    #[test]
    fn master_key_parsing() {
        let mk = MasterKey::generate();
        let s = mk.to_base64url();
        let back = MasterKey::from_base64url(&s).unwrap();
        assert_eq!(back.check_value(), mk.check_value());
        assert!(MasterKey::from_base64url("c2hvcnQ").is_err());
        assert!(MasterKey::from_base64url(&format!("{}=", s.as_str())).is_err());
        assert_ne!(MasterKey::generate().check_value(), mk.check_value());
    }
}
