//! Helpers shared by the fuzz targets: turning fuzzer bytes into edits of a known-good input.
//!
//! Several targets start from something real (a minted token, a sealed record) and let the
//! fuzzer change it, because random bytes almost never get past the first check of a parser.
//! The property is then exact: the result must be refused unless the edits left it unchanged.

/// One edit of a byte string, decoded from three fuzzer bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// XOR the byte at `pos` with `mask` (never zero, so the byte changes).
    Flip { pos: usize, mask: u8 },
    /// Remove the byte at `pos`.
    Drop { pos: usize },
    /// Insert `byte` before `pos`.
    Insert { pos: usize, byte: u8 },
    /// Overwrite the byte at `pos` with `byte` (may leave it unchanged).
    Set { pos: usize, byte: u8 },
    /// Cut the input to `len` bytes.
    Truncate { len: usize },
}

/// Decodes `ops` three bytes at a time (`op`, `pos`, `arg`); positions wrap around `len`.
pub fn decode_edits(ops: &[u8], len: usize) -> Vec<Edit> {
    ops.chunks_exact(3)
        .map(|c| {
            let (op, pos, arg) = (
                c[0],
                usize::from(c[1]) | (usize::from(c[0] >> 3) << 8),
                c[2],
            );
            let pos = if len == 0 { 0 } else { pos % (len + 1) };
            match op % 5 {
                0 => Edit::Flip {
                    pos,
                    mask: arg.max(1),
                },
                1 => Edit::Drop { pos },
                2 => Edit::Insert { pos, byte: arg },
                3 => Edit::Set { pos, byte: arg },
                _ => Edit::Truncate { len: pos },
            }
        })
        .collect()
}

/// Applies the edits encoded in `ops` to a copy of `original`.
pub fn apply_edits(original: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = original.to_vec();
    for e in decode_edits(ops, original.len()) {
        match e {
            Edit::Flip { pos, mask } => {
                if let Some(b) = out.get_mut(pos) {
                    *b ^= mask;
                }
            }
            Edit::Drop { pos } => {
                if pos < out.len() {
                    out.remove(pos);
                }
            }
            Edit::Insert { pos, byte } => out.insert(pos.min(out.len()), byte),
            Edit::Set { pos, byte } => {
                if let Some(b) = out.get_mut(pos) {
                    *b = byte;
                }
            }
            Edit::Truncate { len } => out.truncate(len),
        }
    }
    out
}

/// Splits `data` at the first `0xFF` byte (which never occurs in UTF-8 text, so both halves
/// can still be JSON). Without one, the second half is empty.
pub fn split_ff(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
