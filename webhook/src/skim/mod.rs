//! Reading JSON by skimming: a serde `Deserializer` that hands every value a type reads
//! to serde_json and steps over every value it ignores without parsing it.
//!
//! Most of an AdmissionReview is what no rule reads (`managedFields`, env, probes,
//! mounts), and serde_json parses all of it to skip it. Here a skipped value is stepped
//! over by finding its end ([`step`]): strings eight bytes at a time, maps and arrays
//! 64 bytes at a time, their brackets matched outside strings. What is read — every string, number, literal, key with an
//! escape, and raw value — is still parsed by serde_json, from the exact text of that
//! value, so what a type gets is what serde_json would give it.
//!
//! Skimming checks less than serde_json of what it skips: that its strings end and its
//! brackets match, not the syntax of the numbers and literals inside. Anything else it
//! does not take (a malformed document, a type it does not serve, any error a type
//! raises) ends it with [`Refused`], and the caller reads the text with serde_json, which
//! then gives the result or the error it always gave.

use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::de::StrRead;

mod step;

use step::value_end;

/// Why skimming stopped: read the text with serde_json instead.
#[derive(Debug)]
pub(crate) struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not read by skimming")
    }
}

impl std::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Refused
    }
}

/// Nesting deeper than this, read or skipped, is left to serde_json (which refuses 128
/// levels).
const MAX_DEPTH: usize = 127;

/// Deserializes the JSON document `text` with `seed`, skimming what it ignores.
pub(crate) fn from_str<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, Refused> {
    let mut skim = Skim {
        text,
        pos: 0,
        depth: 0,
    };
    let value = seed.deserialize(&mut skim)?;
    skim.whitespace();
    if skim.pos != text.len() {
        return Err(Refused);
    }
    Ok(value)
}

struct Skim<'de> {
    text: &'de str,
    pos: usize,
    depth: usize,
}

type Json<'de> = serde_json::Deserializer<StrRead<'de>>;

impl<'de> Skim<'de> {
    fn whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace.
    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Moves past `byte`, which must come next (after whitespace).
    fn expect(&mut self, byte: u8) -> Result<(), Refused> {
        if self.peek() != Some(byte) {
            return Err(Refused);
        }
        self.pos += 1;
        Ok(())
    }

    /// The text of the next value, moving past it.
    fn value_text(&mut self) -> Result<&'de str, Refused> {
        self.whitespace();
        let start = self.pos;
        let depth_left = MAX_DEPTH.saturating_sub(self.depth) as u32;
        let end = value_end(self.text.as_bytes(), start, depth_left).ok_or(Refused)?;
        self.pos = end;
        self.text.get(start..end).ok_or(Refused)
    }

    /// The next value, read by serde_json from its own text.
    fn with_json<T>(
        &mut self,
        read: impl FnOnce(&mut Json<'de>) -> Result<T, serde_json::Error>,
    ) -> Result<T, Refused> {
        let mut json = serde_json::Deserializer::from_str(self.value_text()?);
        let value = read(&mut json).map_err(|_| Refused)?;
        json.end().map_err(|_| Refused)?;
        Ok(value)
    }

    fn map<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Refused> {
        self.nested(b'{', b'}', |entries| visitor.visit_map(entries))
    }

    fn seq<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Refused> {
        self.nested(b'[', b']', |entries| visitor.visit_seq(entries))
    }

    /// Reads a map or array from `open` to `close`, one level deeper.
    fn nested<T>(
        &mut self,
        open: u8,
        close: u8,
        visit: impl FnOnce(&mut Entries<'_, 'de>) -> Result<T, Refused>,
    ) -> Result<T, Refused> {
        self.expect(open)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Refused);
        }
        let mut entries = Entries {
            skim: self,
            close,
            first: true,
            done: false,
        };
        let value = visit(&mut entries)?;
        // As serde_json: a map or array whose visitor stopped before its end is refused.
        if !entries.done {
            return Err(Refused);
        }
        self.depth -= 1;
        Ok(value)
    }
}

/// A key's text between its quotes, and the key as written (quotes included).
fn key_text<'de>(skim: &mut Skim<'de>) -> Result<(&'de str, &'de str), Refused> {
    if skim.peek() != Some(b'"') {
        return Err(Refused);
    }
    let written = skim.value_text()?;
    let inner = written
        .get(1..written.len().saturating_sub(1))
        .ok_or(Refused)?;
    Ok((inner, written))
}

/// The entries of a map, or the elements of an array, being read.
struct Entries<'a, 'de> {
    skim: &'a mut Skim<'de>,
    /// `}` or `]`.
    close: u8,
    first: bool,
    /// The closing bracket is passed.
    done: bool,
}

impl Entries<'_, '_> {
    /// Moves to the next entry: past its `,` (`true`), or past the closing bracket.
    fn next(&mut self) -> Result<bool, Refused> {
        if self.done {
            return Ok(false);
        }
        match self.skim.peek() {
            Some(b) if b == self.close => {
                self.skim.pos += 1;
                self.done = true;
                Ok(false)
            }
            Some(b',') if !self.first => {
                self.skim.pos += 1;
                Ok(true)
            }
            Some(_) if self.first => {
                self.first = false;
                Ok(true)
            }
            _ => Err(Refused),
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Refused;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Refused> {
        if !self.next()? {
            return Ok(None);
        }
        let (inner, written) = key_text(self.skim)?;
        let key = if inner.bytes().all(|b| b != b'\\' && b >= 0x20) {
            seed.deserialize(BorrowedStrDeserializer::<Refused>::new(inner))?
        } else {
            // Escapes (and what serde_json refuses in a key) are serde_json's to read.
            let mut json = serde_json::Deserializer::from_str(written);
            seed.deserialize(&mut json).map_err(|_| Refused)?
        };
        self.skim.expect(b':')?;
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refused> {
        seed.deserialize(&mut *self.skim)
    }
}

impl<'de> SeqAccess<'de> for Entries<'_, 'de> {
    type Error = Refused;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Refused> {
        if !self.next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.skim).map(Some)
    }
}

/// Scalars, and the rest of what serde_json reads itself: from the value's own text.
macro_rules! read_by_serde_json {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
            self.with_json(|json| json.$method(visitor))
        }
    )*};
}

impl<'de> Deserializer<'de> for &mut Skim<'de> {
    type Error = Refused;

    read_by_serde_json!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
        deserialize_identifier
    );

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.peek() {
            Some(b'{') => self.map(visitor),
            Some(b'[') => self.seq(visitor),
            _ => self.with_json(|json| json.deserialize_any(visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.peek() {
            Some(b'n') => self.with_json(|json| json.deserialize_option(visitor)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.with_json(|json| json.deserialize_unit_struct(name, visitor))
    }

    /// serde_json's own, whole: it is how `RawValue` takes a value's text.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.with_json(|json| json.deserialize_newtype_struct(name, visitor))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.seq(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        match self.peek() {
            Some(b'[') => self.seq(visitor),
            _ => self.map(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.with_json(|json| json.deserialize_enum(name, variants, visitor))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.value_text()?;
        visitor.visit_unit()
    }
}

#[cfg(test)]
pub(crate) mod tests;
