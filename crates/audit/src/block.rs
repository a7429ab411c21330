//! Blocks: consecutive entries of one log, with their leaf hashes, in one byte string.
//!
//! The embedded storage keeps a log as a list of blocks, and the offline verifier reads blocks
//! (a storage round trip and a copy per block, not per entry). A block holds only bodies and
//! leaf hashes: its log and the position of its first entry are stored beside it, and an
//! entry's position is the block's first position plus the entry's place in the block.
//!
//! ```text
//! block = entry*      entry = body length (u32 big-endian) || body || leaf hash (32 bytes)
//! ```

use std::ops::ControlFlow;

use crate::merkle::Hash;

/// Most entries a writer puts in one block.
pub const MAX_ENTRIES: usize = 1024;

/// Bytes an entry takes in a block besides its body.
pub const ENTRY_OVERHEAD: usize = 4 + 32;

/// Why a stored block cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("a block entry is cut short")]
    Truncated,
    #[error("a block holds {found} entries, not {expected}")]
    Count { expected: u64, found: u64 },
    #[error("an entry body is too large for a block")]
    TooLarge,
}

/// Appends one entry to a block being built.
pub fn push(block: &mut Vec<u8>, body: &[u8], leaf: &Hash) -> Result<(), BlockError> {
    let len = u32::try_from(body.len()).map_err(|_| BlockError::TooLarge)?;
    block.reserve(ENTRY_OVERHEAD + body.len());
    block.extend_from_slice(&len.to_be_bytes());
    block.extend_from_slice(body);
    block.extend_from_slice(leaf);
    Ok(())
}

/// The entries of a block, in order: each entry's offset of its body in `bytes`, the body and
/// its stored leaf hash.
pub fn entries(bytes: &[u8]) -> Entries<'_> {
    Entries { bytes, at: 0 }
}

/// The entries of a block that must hold exactly `count` of them.
pub fn entries_exact(bytes: &[u8], count: u64) -> Result<Vec<(&[u8], Hash)>, BlockError> {
    let out = entries(bytes)
        .map(|e| e.map(|(_, body, leaf)| (body, leaf)))
        .collect::<Result<Vec<_>, _>>()?;
    if out.len() as u64 != count {
        return Err(BlockError::Count {
            expected: count,
            found: out.len() as u64,
        });
    }
    Ok(out)
}

/// Where a stored block cannot give its entries: the position of the first entry it cannot
/// give (its first position plus the entry's place), and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub at: u64,
    pub error: BlockError,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error {
            BlockError::Count { expected, found } => {
                write!(f, "its block says {expected} entries but holds {found}")
            }
            e => write!(f, "its stored block is damaged: {e}"),
        }
    }
}

/// Hands `f` the entries of the block that starts at position `first` and must hold `count`
/// of them — each one's position, body and stored leaf hash, in order — until `f` breaks
/// (its break is returned). Entries past `count` are parsed (to count them), not handed out.
/// A block that does not parse, or holds another number of entries, is damaged: the entries
/// before the damage are handed out first, and the damage is at the first entry that cannot
/// be given (`first + count` when it holds more).
pub fn each_entry<B>(
    bytes: &[u8],
    first: u64,
    count: u64,
    mut f: impl FnMut(u64, &[u8], Hash) -> ControlFlow<B>,
) -> Result<ControlFlow<B>, Damage> {
    let mut found = 0u64;
    for (i, e) in (0u64..).zip(entries(bytes)) {
        let (_, body, leaf) = e.map_err(|error| Damage {
            at: first + i,
            error,
        })?;
        found = i + 1;
        if i < count
            && let ControlFlow::Break(b) = f(first + i, body, leaf)
        {
            return Ok(ControlFlow::Break(b));
        }
    }
    if found != count {
        return Err(Damage {
            at: first + found.min(count),
            error: BlockError::Count {
                expected: count,
                found,
            },
        });
    }
    Ok(ControlFlow::Continue(()))
}

/// Iterator over a block's entries (see [`entries`]); stops after the first error.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(usize, &'a [u8], Hash), BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.at..)?;
        if rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or(BlockError::Truncated)?;
            let len = u32::from_be_bytes(*len) as usize;
            let body = tail.get(..len).ok_or(BlockError::Truncated)?;
            let leaf: Hash = tail
                .get(len..len + 32)
                .and_then(|l| l.try_into().ok())
                .ok_or(BlockError::Truncated)?;
            Ok((self.at + 4, body, leaf, ENTRY_OVERHEAD + len))
        })();
        match parsed {
            Ok((start, body, leaf, size)) => {
                self.at += size;
                Some(Ok((start, body, leaf)))
            }
            Err(e) => {
                self.at = self.bytes.len();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_damage_is_refused() {
        let mut b = Vec::new();
        push(&mut b, b"first", &[1; 32]).unwrap();
        push(&mut b, b"", &[2; 32]).unwrap();
        push(&mut b, b"third entry", &[3; 32]).unwrap();
        let all = entries_exact(&b, 3).unwrap();
        assert_eq!(all[0], (&b"first"[..], [1; 32]));
        assert_eq!(all[1], (&b""[..], [2; 32]));
        assert_eq!(all[2], (&b"third entry"[..], [3; 32]));
        // Offsets point at the bodies.
        let offsets: Vec<usize> = entries(&b).map(|e| e.unwrap().0).collect();
        assert_eq!(&b[offsets[2]..offsets[2] + 11], b"third entry");
        assert_eq!(
            entries_exact(&b, 2),
            Err(BlockError::Count {
                expected: 2,
                found: 3
            })
        );
        for cut in [1, 5, b.len() - 1] {
            assert!(entries_exact(&b[..cut], 3).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(entries_exact(&long, 3), Err(BlockError::Truncated));
        assert!(entries_exact(&[], 0).unwrap().is_empty());
    }

    #[test]
    fn each_entry_hands_out_positions_and_names_the_damage() {
        let mut b = Vec::new();
        for (i, body) in [&b"a"[..], b"bb", b"ccc"].iter().enumerate() {
            push(&mut b, body, &[i as u8; 32]).unwrap();
        }
        let all = |bytes: &[u8], count| {
            let mut seen = Vec::new();
            let r = each_entry::<()>(bytes, 10, count, |seq, body, leaf| {
                seen.push((seq, body.to_vec(), leaf[0]));
                ControlFlow::Continue(())
            });
            (seen, r)
        };
        let (seen, r) = all(&b, 3);
        assert_eq!(r, Ok(ControlFlow::Continue(())));
        assert_eq!(
            seen,
            vec![
                (10, b"a".to_vec(), 0),
                (11, b"bb".to_vec(), 1),
                (12, b"ccc".to_vec(), 2)
            ]
        );
        // Fewer than the row says: all handed out, the damage where the next should be.
        let (seen, r) = all(&b, 4);
        assert_eq!(seen.len(), 3);
        let d = r.unwrap_err();
        assert_eq!(d.at, 13);
        assert_eq!(d.to_string(), "its block says 4 entries but holds 3");
        // More than the row says: only `count` handed out.
        let (seen, r) = all(&b, 2);
        assert_eq!(seen.len(), 2);
        assert_eq!(r.unwrap_err().at, 12);
        // Cut inside the third entry: the two before it first.
        let (seen, r) = all(&b[..b.len() - 1], 3);
        assert_eq!(seen.len(), 2);
        let d = r.unwrap_err();
        assert_eq!((d.at, d.error), (12, BlockError::Truncated));
        assert!(d.to_string().starts_with("its stored block is damaged"));
        // A break stops it and is returned.
        let r = each_entry(&b, 0, 3, |seq, _, _| {
            if seq == 1 {
                ControlFlow::Break(seq)
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(r, Ok(ControlFlow::Break(1)));
    }
}
