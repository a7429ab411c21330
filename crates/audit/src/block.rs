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
}
