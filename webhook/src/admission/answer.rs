//! The AdmissionReview answer, written straight as JSON: the answer is small and fixed
//! in shape, and building kube's `AdmissionResponse` (a `Status`, a map, owned copies of
//! every message) to serialize it cost more than deciding a small Pod.

use super::API_VERSION;
use crate::engine::Line;

/// A warning's text, as [`AnswerWriter::warnings`] takes it.
pub trait WarningText {
    /// Appends the text to `line`.
    fn write_to(&self, line: &mut String);
}

impl WarningText for Line<'_> {
    fn write_to(&self, line: &mut String) {
        // Straight into the `String`: no `Formatter` between the pieces and the buffer.
        let _ = self.write_into(line);
    }
}

impl WarningText for &String {
    fn write_to(&self, line: &mut String) {
        line.push_str(self);
    }
}

/// An `admission.k8s.io/v1` AdmissionReview answer being written; fields are added in
/// any order after the uid and `allowed`.
pub struct AnswerWriter {
    out: Vec<u8>,
}

impl AnswerWriter {
    /// Starts the answer to `uid`.
    pub fn new(uid: &str, allowed: bool, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(160 + uid.len() + capacity);
        out.extend_from_slice(br#"{"apiVersion":""#);
        out.extend_from_slice(API_VERSION.as_bytes());
        out.extend_from_slice(br#"","kind":"AdmissionReview","response":{"uid":"#);
        push_string(&mut out, uid);
        out.extend_from_slice(if allowed {
            br#","allowed":true"#
        } else {
            br#","allowed":false"#
        });
        AnswerWriter { out }
    }

    /// `status` of an allowed answer.
    pub fn success(&mut self) {
        self.out
            .extend_from_slice(br#","status":{"status":"Success"}"#);
    }

    /// `status` of a refusal: `code` (403, 422), `reason` (`Forbidden`) and the message.
    pub fn failure(&mut self, code: u16, reason: &str, message: &str) {
        self.out
            .extend_from_slice(br#","status":{"status":"Failure","code":"#);
        self.out.extend_from_slice(code.to_string().as_bytes());
        self.out.extend_from_slice(br#","message":"#);
        push_string(&mut self.out, message);
        self.out.extend_from_slice(br#","reason":"#);
        push_string(&mut self.out, reason);
        self.out.push(b'}');
    }

    /// `warnings`, unless there are none (each written into one buffer, then escaped).
    pub fn warnings(&mut self, warnings: impl Iterator<Item = impl WarningText>) {
        // A warning line is about 200 bytes; the buffer grows once for a longer one.
        let mut line = String::with_capacity(256);
        let mut any = false;
        for warning in warnings {
            self.out
                .extend_from_slice(if any { b"," } else { br#","warnings":["# });
            any = true;
            line.clear();
            warning.write_to(&mut line);
            push_string(&mut self.out, &line);
        }
        if any {
            self.out.push(b']');
        }
    }

    /// `auditAnnotations` with one annotation.
    pub fn audit_annotation(&mut self, key: &str, value: &str) {
        self.out.extend_from_slice(br#","auditAnnotations":{"#);
        push_string(&mut self.out, key);
        self.out.push(b':');
        push_string(&mut self.out, value);
        self.out.push(b'}');
    }

    /// A field written by the caller: `name` and then the value it appends to the
    /// returned buffer, which must be valid JSON.
    pub fn field(&mut self, name: &str) -> &mut Vec<u8> {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        &mut self.out
    }

    /// The answer's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"}}");
        self.out
    }
}

/// `text` as a JSON string, byte for byte as serde_json writes it: the run up to each
/// byte to escape is found 16 bytes at a time and copied whole (most of a message has
/// nothing to escape; a warning has the four quotes around two names).
fn push_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut copied = 0;
    while let Some(at) = next_escaped(bytes, copied) {
        out.extend_from_slice(&bytes[copied..at]);
        push_escape(out, bytes[at]);
        copied = at + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

/// The index of the first byte JSON escapes in `bytes` from `from` on: two words of
/// [`escape_flags`] tested together, then the last bytes one by one.
fn next_escaped(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let (blocks, tail) = rest.as_chunks::<16>();
    for (index, block) in blocks.iter().enumerate() {
        let block = u128::from_le_bytes(*block);
        let (low, high) = (
            escape_flags(block as u64),
            escape_flags((block >> 64) as u64),
        );
        if low | high != 0 {
            let offset = if low != 0 {
                low.trailing_zeros() / 8
            } else {
                8 + high.trailing_zeros() / 8
            };
            return Some(from + index * 16 + offset as usize);
        }
    }
    let base = from + blocks.len() * 16;
    tail.iter().position(|&b| escaped(b)).map(|at| base + at)
}

/// Whether JSON escapes `b`: a control character, `"` or `\`.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The high bit of each byte of `word` (little-endian) that may need escaping; the
/// lowest one set is exactly the first byte JSON escapes (a control character, `"` or
/// `\`). A byte below `n` (≤ 128) leaves its high bit set in `(word - n·0x01…) & !word
/// & 0x80…`, and a byte equal to `c` is one below 1 after `^ c·0x01…`; the borrow of a
/// byte below `n` can flag only bytes above it.
fn escape_flags(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    below(word, 0x20)
        | below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// The escape serde_json writes for `b`: `\"`, `\\`, `\n` and the like, else `\u00XX`.
fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
            return;
        }
    };
    out.push(b'\\');
    out.push(short);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The first byte a word's flags mark, if any.
    fn first_flagged(word: [u8; 8]) -> Option<u32> {
        let flags = super::escape_flags(u64::from_le_bytes(word));
        (flags != 0).then(|| flags.trailing_zeros() / 8)
    }

    /// The first escaped byte of a word, if any.
    fn first_escaped(word: [u8; 8]) -> Option<u32> {
        word.iter()
            .position(|&b| super::escaped(b))
            .and_then(|at| u32::try_from(at).ok())
    }

    /// The lowest flag marks the first escaped byte, for every byte at every position,
    /// among neighbours that are escaped, plain, or high (UTF-8) bytes.
    #[test]
    fn the_lowest_flag_marks_the_first_escaped_byte() {
        for filler in [b'a', 0x00, 0x1f, 0x20, b'"', 0x7f, 0x80, 0xff] {
            for b in 0..=u8::MAX {
                for at in 0..8 {
                    let mut word = [filler; 8];
                    word[at] = b;
                    assert_eq!(first_flagged(word), first_escaped(word), "{word:?}");
                }
            }
        }
    }

    proptest! {
        /// Any word, every byte of it chosen: borrows between bytes never move the
        /// lowest flag.
        #[test]
        fn in_any_word_the_lowest_flag_marks_the_first_escaped_byte(word in any::<[u8; 8]>()) {
            prop_assert_eq!(first_flagged(word), first_escaped(word));
        }

        /// Strings are written byte for byte as serde_json writes them: quotes,
        /// backslashes, control characters and non-ASCII text included.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(text in r#"(\PC|["\\\n\t\x00\x7f]){0,80}"#) {
            let mut out = Vec::new();
            super::push_string(&mut out, &text);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&text).unwrap());
        }
    }
}
