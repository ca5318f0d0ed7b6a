//! Stepping over a JSON value: where it ends, found without parsing it.
//!
//! Strings are searched eight bytes at a time for their closing quote. Maps and arrays
//! are read 64 bytes at a time: on x86_64 SSE2 marks the block's quotes, backslashes and
//! brackets as bitmasks; the quotes' running XOR marks what is inside strings, and the
//! brackets outside them are matched in order. A block with a backslash is read byte by
//! byte (an escape can hide a quote), as is the end of the text.

/// Where the value starting at `start` ends (the index after it), if it does and nests
/// at most `depth` levels (at most 128).
pub(super) fn value_end(bytes: &[u8], start: usize, depth: u32) -> Option<usize> {
    match *bytes.get(start)? {
        b'"' => string_end(bytes, start + 1),
        b'{' | b'[' => nested_end(bytes, start, depth.min(128)),
        _ => {
            let len = bytes
                .get(start..)?
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(bytes.len() - start);
            (len > 0).then_some(start + len)
        }
    }
}

/// The index after the closing quote of the string whose text starts at `from`.
pub(super) fn string_end(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + quote_or_backslash(bytes.get(from..)?)?;
        if bytes.get(at) == Some(&b'"') {
            return Some(at + 1);
        }
        // A backslash: the byte after it is escaped (`\uXXXX`'s digits hold neither).
        from = at + 2;
    }
}

/// The index after the bracket that closes the one at `start`; brackets must match and
/// nest at most `depth` levels.
fn nested_end(bytes: &[u8], start: usize, depth: u32) -> Option<usize> {
    let mut nesting = Nesting {
        open: 0,
        depth: 0,
        max: depth,
    };
    let mut at = start;
    // Whether `at` is inside a string (only ever after a block read by its bitmasks).
    let mut in_string = false;
    while let Some(block) = bytes.get(at..at + 64) {
        let block: &[u8; 64] = block.try_into().ok()?;
        let marks = Marks::of(block);
        if marks.backslash != 0 {
            if in_string {
                at = string_end(bytes, at)?;
                in_string = false;
            }
            match nesting.scan(bytes, at, at + 64)? {
                Scanned::Closed(end) => return Some(end),
                Scanned::At(next) => at = next,
            }
            continue;
        }
        // Bit i set: byte i is inside a string (its opening quote included).
        let strings = prefix_xor(marks.quote) ^ if in_string { !0 } else { 0 };
        in_string = strings >> 63 == 1;
        let mut brackets = (marks.open | marks.close) & !strings;
        while brackets != 0 {
            let i = brackets.trailing_zeros() as usize;
            if nesting.bracket(block[i])? {
                return Some(at + i + 1);
            }
            brackets &= brackets - 1;
        }
        at += 64;
    }
    if in_string {
        at = string_end(bytes, at)?;
    }
    match nesting.scan(bytes, at, bytes.len())? {
        Scanned::Closed(end) => Some(end),
        Scanned::At(_) => None,
    }
}

/// Bit i set when an odd number of bits at or below i are set in `bits`.
fn prefix_xor(mut bits: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        bits ^= bits << shift;
    }
    bits
}

/// The brackets open around a position.
struct Nesting {
    /// One bit a level, set for `{`.
    open: u128,
    depth: u32,
    /// Deeper than this (at most 128) is left to serde_json.
    max: u32,
}

enum Scanned {
    /// The outermost bracket closes before this index.
    Closed(usize),
    /// It is still open at this index (outside any string).
    At(usize),
}

impl Nesting {
    /// Takes the bracket `b`: `Some(true)` when it closes the outermost, `None` when it
    /// does not match the one it closes (or nests too deep).
    fn bracket(&mut self, b: u8) -> Option<bool> {
        if b == b'{' || b == b'[' {
            if self.depth == self.max {
                return None;
            }
            self.open = self.open << 1 | u128::from(b == b'{');
            self.depth += 1;
            return Some(false);
        }
        if self.depth == 0 || (self.open & 1 == 1) != (b == b'}') {
            return None;
        }
        self.open >>= 1;
        self.depth -= 1;
        Some(self.depth == 0)
    }

    /// Reads byte by byte from `at` (outside any string) until the outermost bracket
    /// closes or `until` is reached (a string that spans it is read to its end).
    fn scan(&mut self, bytes: &[u8], mut at: usize, until: usize) -> Option<Scanned> {
        while at < until {
            match *bytes.get(at)? {
                b'"' => {
                    at = string_end(bytes, at + 1)?;
                    continue;
                }
                b @ (b'{' | b'[' | b'}' | b']') if self.bracket(b)? => {
                    return Some(Scanned::Closed(at + 1));
                }
                _ => {}
            }
            at += 1;
        }
        Some(Scanned::At(at))
    }
}

/// Where a 64-byte block's quotes, backslashes and brackets are: bit i for byte i.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Marks {
    quote: u64,
    backslash: u64,
    /// `{` and `[`.
    open: u64,
    /// `}` and `]`.
    close: u64,
}

impl Marks {
    /// 16 bytes at a time, SSE2's compare and move-mask: `{` and `[` (also `}` and `]`)
    /// differ only in bit 5, so setting it finds both with one compare.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn of(block: &[u8; 64]) -> Marks {
        use safe_arch::{
            bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i,
            set_splat_i8_m128i,
        };
        let splat = |b: u8| set_splat_i8_m128i(b as i8);
        let (quote, backslash, bit5) = (splat(b'"'), splat(b'\\'), splat(0x20));
        let (open, close) = (splat(b'{'), splat(b'}'));
        let mut marks = Marks::default();
        for (lane, bytes) in block.chunks_exact(16).enumerate() {
            let mut lane_bytes = [0; 16];
            lane_bytes.copy_from_slice(bytes);
            let v = load_unaligned_m128i(&lane_bytes);
            let folded = bitor_m128i(v, bit5);
            let mask = |a, b| {
                (move_mask_i8_m128i(cmp_eq_mask_i8_m128i(a, b)) as u64 & 0xffff) << (16 * lane)
            };
            marks.quote |= mask(v, quote);
            marks.backslash |= mask(v, backslash);
            marks.open |= mask(folded, open);
            marks.close |= mask(folded, close);
        }
        marks
    }

    /// A byte at a time, where SSE2 is not (and as the tests' reference).
    #[cfg(any(test, not(target_arch = "x86_64")))]
    pub(super) fn of_bytes(block: &[u8; 64]) -> Marks {
        let mut marks = Marks::default();
        for (i, &b) in block.iter().enumerate() {
            let bit = 1u64 << i;
            match b {
                b'"' => marks.quote |= bit,
                b'\\' => marks.backslash |= bit,
                b'{' | b'[' => marks.open |= bit,
                b'}' | b']' => marks.close |= bit,
                _ => {}
            }
        }
        marks
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn of(block: &[u8; 64]) -> Marks {
        Marks::of_bytes(block)
    }
}

/// The index of the first `"` or `\` in `bytes`, eight bytes at a time: in a word, a
/// byte equal to either is the lowest whose XOR with it is zero.
pub(super) fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        let (q, b) = (w ^ QUOTES, w ^ BACKSLASHES);
        // Exact for the lowest zero byte of each (a borrow only marks bytes above one).
        let found = (q.wrapping_sub(ONES) & !q | b.wrapping_sub(ONES) & !b) & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\')?;
    Some(at + rest)
}
