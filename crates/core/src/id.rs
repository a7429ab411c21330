//! Identifiers, parsed once at the edge and trusted afterwards ("parse, don't validate").
//!
//! No raw `Uuid` or `String` standing for a tenant, record or collection crosses a crate
//! boundary: they travel as these newtypes, whose only constructors check the format.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was refused. Messages are written for the caller who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is not a valid {1} id (expected a UUIDv7 string)")]
    NotUuidV7(String, &'static str),
    #[error("{kind} `{value}` is invalid: {rule}")]
    BadName {
        kind: &'static str,
        value: String,
        rule: &'static str,
    },
}

macro_rules! uuid_v7_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the canonical hyphenated form of a UUIDv7 and nothing else.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                // INVARIANT: only the 36-character hyphenated form is accepted, so one id has
                // exactly one spelling (no braces, no URN prefix, no simple form).
                if s.len() != 36 {
                    return Err(IdError::NotUuidV7(truncate(s), $kind));
                }
                match Uuid::try_parse(s) {
                    Ok(u) if u.get_version_num() == 7 => Ok(Self(u)),
                    _ => Err(IdError::NotUuidV7(truncate(s), $kind)),
                }
            }

            /// Rebuilds an id from the 16 bytes a storage adapter wrote.
            pub fn from_bytes(b: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(b))
            }

            /// Rebuilds an id from a slice a storage adapter read; `None` if it is not 16 bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 16]>::try_from(b).ok().map(Self::from_bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

uuid_v7_id!(
    /// A tenant's id: a UUIDv7, never reused.
    TenantId,
    "tenant"
);
uuid_v7_id!(
    /// A record's id: a UUIDv7, so ids sort by creation time and pagination is stable.
    RecordId,
    "record"
);

/// Keeps user input in error messages short.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::BadName { kind: $kind, value: truncate(s), rule: $rule })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_slug(s: &str, max: usize) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= max
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

name_type!(
    /// A collection name: lowercase ASCII letters, digits, `_` and `-`, starting with a letter,
    /// at most 64 characters. Names appear in URLs and in storage keys, so the alphabet is small.
    CollectionName,
    "collection name",
    "use 1-64 characters: a-z first, then a-z, 0-9, `_` or `-`",
    |s| is_slug(s, 64)
);

name_type!(
    /// A top-level field of a record that can be indexed and filtered on.
    FieldName,
    "field name",
    "use 1-64 characters: a letter first, then letters, digits or `_`",
    |s| {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic())
            && s.len() <= 64
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    }
);

name_type!(
    /// A tier name (`free`, `standard`, `enterprise`, or one an operator defines).
    TierName,
    "tier",
    "use 1-32 characters: a-z first, then a-z, 0-9, `_` or `-`",
    |s| is_slug(s, 32)
);

name_type!(
    /// A tenant's display name. Unique among tenants that are not deleted.
    TenantName,
    "tenant name",
    "use 1-128 printable characters with no leading or trailing space",
    |s| !s.is_empty()
        && s.chars().count() <= 128
        && s.trim() == s
        && !s.chars().any(char::is_control)
);

name_type!(
    /// The subject a token is minted for (a user or service id in the tenant's own system).
    Subject,
    "subject",
    "use 1-256 printable characters",
    |s| !s.is_empty() && s.chars().count() <= 256 && !s.chars().any(char::is_control)
);

name_type!(
    /// A signing key's id, as it appears in a token's `kid` header and in JWKS.
    KeyId,
    "key id",
    "use 1-64 characters: a-z first, then a-z, 0-9, `_` or `-`",
    |s| is_slug(s, 64)
);

impl TierName {
    pub fn standard() -> Self {
        Self("standard".to_owned())
    }
}

impl KeyId {
    /// A fresh key id: `k` followed by the key's UUIDv7 in simple form.
    pub fn generate() -> Self {
        Self(format!("k{}", Uuid::now_v7().simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_id_accepts_only_canonical_v7() {
        let id = TenantId::generate();
        assert_eq!(TenantId::parse(&id.to_string()), Ok(id));
        // v4 is refused: ids are time-ordered by contract.
        assert!(TenantId::parse("3f1c1a4e-8a1b-4c8e-9a8e-1d2c3b4a5f6e").is_err());
        // Other spellings of the same UUID are refused so one id has one spelling.
        let simple = id.as_uuid().simple().to_string();
        assert!(TenantId::parse(&simple).is_err());
        assert!(TenantId::parse(&format!("{{{id}}}")).is_err());
        assert!(TenantId::parse(&id.to_string().to_uppercase()).is_ok_and(|p| p == id));
        assert!(TenantId::parse("").is_err());
    }

    #[test]
    fn names_follow_their_alphabet() {
        for ok in ["a", "orders", "order_items-2"] {
            assert!(CollectionName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Orders", "1abc", "a b", "a/b", "../x", &"a".repeat(65)] {
            assert!(CollectionName::parse(bad).is_err(), "{bad}");
        }
        assert!(TenantName::parse("Acme Corp").is_ok());
        assert!(TenantName::parse(" Acme").is_err());
        assert!(TenantName::parse("a\u{0}b").is_err());
        assert!(FieldName::parse("email").is_ok());
        assert!(FieldName::parse("e-mail").is_err());
    }
}
