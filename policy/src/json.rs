//! A small JSON reader for the filter's pluginConfig, so the Wasm module needs no serde_json deserializer.
//!
//! It reads exactly what `serde_json::from_slice` reads into the schema's serde-derived types and rejects
//! what it rejects, in two passes as `PluginConfig::from_json` always did:
//! - [`check`]: the whole text is valid JSON (iterative, so nesting depth costs memory, never stack), with
//!   serde_json's messages and `line L column C` positions;
//! - [`ReadJson`]: reading a value of one type from checked text, recursing only as deep as the schema.
//!   An error carries the byte offset serde_json reports it at (or one naming the same field), so
//!   [`crate::json_path::path_at`] names the same field.
//!
//! The messages are serde's and serde_json's (e.g. ``unknown field `x`, expected one of ...``,
//! `invalid type: string "ten", expected i32`); a misplaced floating-point number is shown as written in
//! the text rather than re-formatted.

use crate::field_map::FieldMap;

/// The first problem met, at a byte offset of the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub at: usize,
    pub message: String,
}

fn err<T>(at: usize, message: impl Into<String>) -> Result<T, JsonError> {
    Err(JsonError {
        at,
        message: message.into(),
    })
}

// serde_json's syntax error messages.
const EOF_LIST: &str = "EOF while parsing a list";
const EOF_OBJECT: &str = "EOF while parsing an object";
const EOF_STRING: &str = "EOF while parsing a string";
const EOF_VALUE: &str = "EOF while parsing a value";
const EXPECTED_COLON: &str = "expected `:`";
const EXPECTED_LIST_COMMA: &str = "expected `,` or `]`";
const EXPECTED_OBJECT_COMMA: &str = "expected `,` or `}`";
const EXPECTED_IDENT: &str = "expected ident";
const EXPECTED_VALUE: &str = "expected value";
const INVALID_ESCAPE: &str = "invalid escape";
const INVALID_NUMBER: &str = "invalid number";
const OUT_OF_RANGE: &str = "number out of range";
const INVALID_CODE_POINT: &str = "invalid unicode code point";
const CONTROL_CHARACTER: &str = "control character (\\u0000-\\u001F) found while parsing a string";
const KEY_NOT_STRING: &str = "key must be a string";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";
const TRAILING_COMMA: &str = "trailing comma";
const TRAILING_CHARACTERS: &str = "trailing characters";
const HEX_ESCAPE_END: &str = "unexpected end of hex escape";

/// serde_json's 1-based line and 0-based column of byte `i`.
fn line_column(text: &[u8], i: usize) -> (usize, usize) {
    let before = text.get(..i).unwrap_or(text);
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let lines = before.iter().filter(|b| **b == b'\n').count();
    (lines + 1, i.saturating_sub(line_start))
}

/// Checks that `text` is one JSON value (surrounded by whitespace only), as
/// `serde_json::from_slice::<serde::de::IgnoredAny>` does: the same verdict, and serde_json's message with
/// its `at line L column C` on failure. Strings are not checked for UTF-8 or paired surrogates here (nor
/// numbers for range): reading a value does that.
pub fn check(text: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(text);
    let done = r.skip_value().and_then(|()| match r.ws() {
        Some(_) => Err(r.peek_error(TRAILING_CHARACTERS)),
        None => Ok(()),
    });
    done.map_err(|e| {
        let (line, column) = line_column(text, e.at);
        format!("{} at line {line} column {column}", e.message)
    })
}

/// A number as serde_json parses it (without its `float_roundtrip` and `arbitrary_precision` features).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// 10^i, correctly rounded as the literal `1e{i}` is (serde_json's table), for i <= 308.
/// `significand` with the ASCII digit `c` appended, if it still fits a u64.
fn append_digit(significand: u64, c: u8) -> Option<u64> {
    significand
        .checked_mul(10)
        .and_then(|s| s.checked_add(u64::from(c - b'0')))
}

fn pow10(i: usize) -> Option<f64> {
    if i > 308 {
        return None;
    }
    format!("1e{i}").parse().ok()
}

/// A position in JSON text, reading it as serde_json's `Deserializer` over a slice does.
pub struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a [u8]) -> Self {
        Reader { text, pos: 0 }
    }

    /// The offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn peek_or_null(&self) -> u8 {
        self.peek().unwrap_or(0)
    }

    fn eat(&mut self) {
        self.pos += 1;
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Skips whitespace; the next byte.
    pub fn ws(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
        self.peek()
    }

    /// An error about the byte just read (serde_json's `error`).
    fn error(&self, message: &str) -> JsonError {
        JsonError {
            at: self.pos,
            message: message.into(),
        }
    }

    /// An error about the byte just peeked (serde_json's `peek_error`).
    fn peek_error(&self, message: &str) -> JsonError {
        JsonError {
            at: (self.pos + 1).min(self.text.len()),
            message: message.into(),
        }
    }

    fn ident(&mut self, rest: &[u8]) -> Result<(), JsonError> {
        for expected in rest {
            match self.next() {
                None => return Err(self.error(EOF_VALUE)),
                Some(c) if c != *expected => return Err(self.error(EXPECTED_IDENT)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    // ---- the syntax check (serde_json's `ignore_value`) ----

    /// Skips an object (any content), or fails as a struct reader does on another type.
    pub fn skip_object(&mut self, expected: &str) -> Result<(), JsonError> {
        match self.ws() {
            Some(b'{') => self.skip_value(),
            None => Err(self.peek_error(EOF_VALUE)),
            Some(_) => Err(self.invalid_type(expected)),
        }
    }

    fn skip_value(&mut self) -> Result<(), JsonError> {
        // The open containers below the current one, and the current one.
        let mut outer: Vec<u8> = Vec::new();
        let mut enclosing: Option<u8> = None;
        loop {
            let Some(peek) = self.ws() else {
                return Err(self.peek_error(EOF_VALUE));
            };
            let opened = match peek {
                b'n' => {
                    self.eat();
                    self.ident(b"ull")?;
                    None
                }
                b't' => {
                    self.eat();
                    self.ident(b"rue")?;
                    None
                }
                b'f' => {
                    self.eat();
                    self.ident(b"alse")?;
                    None
                }
                b'-' => {
                    self.eat();
                    self.skip_integer()?;
                    None
                }
                b'0'..=b'9' => {
                    self.skip_integer()?;
                    None
                }
                b'"' => {
                    self.eat();
                    self.skip_str()?;
                    None
                }
                b'[' | b'{' => {
                    outer.extend(enclosing.take());
                    self.eat();
                    Some(peek)
                }
                _ => return Err(self.peek_error(EXPECTED_VALUE)),
            };
            let (mut accept_comma, mut frame) = match opened {
                Some(f) => (false, f),
                None => match enclosing.take().or_else(|| outer.pop()) {
                    Some(f) => (true, f),
                    None => return Ok(()),
                },
            };
            loop {
                match self.ws() {
                    Some(b',') if accept_comma => {
                        self.eat();
                        break;
                    }
                    Some(b']') if frame == b'[' => {}
                    Some(b'}') if frame == b'{' => {}
                    Some(_) if accept_comma => {
                        return Err(self.peek_error(if frame == b'[' {
                            EXPECTED_LIST_COMMA
                        } else {
                            EXPECTED_OBJECT_COMMA
                        }))
                    }
                    Some(_) => break,
                    None => {
                        return Err(self.peek_error(if frame == b'[' {
                            EOF_LIST
                        } else {
                            EOF_OBJECT
                        }))
                    }
                }
                self.eat();
                frame = match outer.pop() {
                    Some(f) => f,
                    None => return Ok(()),
                };
                accept_comma = true;
            }
            if frame == b'{' {
                match self.ws() {
                    Some(b'"') => self.eat(),
                    Some(_) => return Err(self.peek_error(KEY_NOT_STRING)),
                    None => return Err(self.peek_error(EOF_OBJECT)),
                }
                self.skip_str()?;
                match self.ws() {
                    Some(b':') => self.eat(),
                    Some(_) => return Err(self.peek_error(EXPECTED_COLON)),
                    None => return Err(self.peek_error(EOF_OBJECT)),
                }
            }
            enclosing = Some(frame);
        }
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.eat();
        }
    }

    fn skip_integer(&mut self) -> Result<(), JsonError> {
        match self.next().unwrap_or(0) {
            b'0' => {
                if let b'0'..=b'9' = self.peek_or_null() {
                    return Err(self.peek_error(INVALID_NUMBER));
                }
            }
            b'1'..=b'9' => self.skip_digits(),
            _ => return Err(self.error(INVALID_NUMBER)),
        }
        if self.peek() == Some(b'.') {
            self.eat();
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.peek_error(INVALID_NUMBER));
            }
            self.skip_digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.eat();
            if let Some(b'+' | b'-') = self.peek() {
                self.eat();
            }
            match self.next().unwrap_or(0) {
                b'0'..=b'9' => self.skip_digits(),
                _ => return Err(self.error(INVALID_NUMBER)),
            }
        }
        Ok(())
    }

    /// After an opening quote: to just after the closing one, checking escapes but not UTF-8.
    fn skip_str(&mut self) -> Result<(), JsonError> {
        loop {
            match self.peek() {
                None => return Err(self.error(EOF_STRING)),
                Some(b'"') => {
                    self.eat();
                    return Ok(());
                }
                Some(b'\\') => {
                    self.eat();
                    match self.next() {
                        None => return Err(self.error(EOF_STRING)),
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            self.hex4()?;
                        }
                        Some(_) => return Err(self.error(INVALID_ESCAPE)),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.error(CONTROL_CHARACTER)),
                Some(_) => self.eat(),
            }
        }
    }

    /// The four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u16, JsonError> {
        let Some(digits) = self.text.get(self.pos..self.pos + 4) else {
            self.pos = self.text.len();
            return Err(self.error(EOF_STRING));
        };
        self.pos += 4;
        let mut n: u16 = 0;
        for d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.error(INVALID_ESCAPE)),
            };
            n = (n << 4) | u16::from(v);
        }
        Ok(n)
    }

    // ---- reading values (serde_json's `Deserializer`, on checked text) ----

    /// After an opening quote: the string (escapes resolved, UTF-8 and surrogate pairs checked).
    fn string_body(&mut self) -> Result<String, JsonError> {
        let start = self.pos;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error(EOF_STRING)),
                Some(b'"') => {
                    self.eat();
                    return String::from_utf8(out).or_else(|_| err(start, INVALID_CODE_POINT));
                }
                Some(b'\\') => {
                    self.eat();
                    let c = match self.next() {
                        None => return Err(self.error(EOF_STRING)),
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'b') => 8,
                        Some(b'f') => 12,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'u') => {
                            let c = self.unicode_escape()?;
                            let mut buf = [0; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        Some(_) => return Err(self.error(INVALID_ESCAPE)),
                    };
                    out.push(c);
                }
                Some(c) if c < 0x20 => {
                    self.eat();
                    return Err(self.error(CONTROL_CHARACTER));
                }
                Some(c) => {
                    out.push(c);
                    self.eat();
                }
            }
        }
    }

    /// After `\u`: the character, with serde_json's errors for unpaired surrogates.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let n = self.hex4()?;
        if (0xDC00..=0xDFFF).contains(&n) {
            return Err(self.error(LONE_SURROGATE));
        }
        if !(0xD800..=0xDBFF).contains(&n) {
            return char::from_u32(u32::from(n)).ok_or_else(|| self.error(INVALID_CODE_POINT));
        }
        for expected in [b'\\', b'u'] {
            match self.peek() {
                None => return Err(self.error(EOF_STRING)),
                Some(c) if c == expected => self.eat(),
                Some(_) => {
                    self.eat();
                    return Err(self.error(HEX_ESCAPE_END));
                }
            }
        }
        let n2 = self.hex4()?;
        if !(0xDC00..=0xDFFF).contains(&n2) {
            return Err(self.error(LONE_SURROGATE));
        }
        let c = ((u32::from(n) - 0xD800) << 10 | (u32::from(n2) - 0xDC00)) + 0x1_0000;
        char::from_u32(c).ok_or_else(|| self.error(INVALID_CODE_POINT))
    }

    /// At `-` or a digit: the number, as serde_json's `parse_integer` and what follows it compute it.
    fn number(&mut self) -> Result<Num, JsonError> {
        let positive = self.peek() != Some(b'-');
        if !positive {
            self.eat();
        }
        let mut significand: u64 = match self.next() {
            None => return Err(self.error(EOF_VALUE)),
            Some(b'0') => {
                if let b'0'..=b'9' = self.peek_or_null() {
                    return Err(self.peek_error(INVALID_NUMBER));
                }
                0
            }
            Some(c @ b'1'..=b'9') => u64::from(c - b'0'),
            Some(_) => return Err(self.error(INVALID_NUMBER)),
        };
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            match append_digit(significand, c) {
                Some(s) => {
                    self.eat();
                    significand = s;
                }
                None => return Ok(Num::F(self.long_integer(positive, significand)?)),
            }
        }
        Ok(match self.peek_or_null() {
            b'.' => Num::F(self.decimal(positive, significand, 0)?),
            b'e' | b'E' => Num::F(self.exponent(positive, significand, 0)?),
            _ if positive => Num::U(significand),
            _ => {
                let neg = (significand as i64).wrapping_neg();
                // A float on underflow, or for `-0`.
                if neg >= 0 {
                    Num::F(-(significand as f64))
                } else {
                    Num::I(neg)
                }
            }
        })
    }

    /// Digits beyond what a u64 holds: counted into the exponent, their values dropped.
    fn long_integer(&mut self, positive: bool, significand: u64) -> Result<f64, JsonError> {
        let mut exponent: i32 = 0;
        loop {
            match self.peek_or_null() {
                b'0'..=b'9' => {
                    self.eat();
                    exponent = exponent.saturating_add(1);
                }
                b'.' => return self.decimal(positive, significand, exponent),
                b'e' | b'E' => return self.exponent(positive, significand, exponent),
                _ => return self.float_from_parts(positive, significand, exponent),
            }
        }
    }

    fn decimal(
        &mut self,
        positive: bool,
        mut significand: u64,
        before: i32,
    ) -> Result<f64, JsonError> {
        self.eat();
        let mut after: i32 = 0;
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            match append_digit(significand, c) {
                Some(s) => {
                    self.eat();
                    significand = s;
                    after -= 1;
                }
                None => {
                    // Further digits are dropped.
                    self.skip_digits();
                    return match self.peek_or_null() {
                        b'e' | b'E' => self.exponent(positive, significand, before + after),
                        _ => self.float_from_parts(positive, significand, before + after),
                    };
                }
            }
        }
        if after == 0 {
            return Err(match self.peek() {
                Some(_) => self.peek_error(INVALID_NUMBER),
                None => self.peek_error(EOF_VALUE),
            });
        }
        match self.peek_or_null() {
            b'e' | b'E' => self.exponent(positive, significand, before + after),
            _ => self.float_from_parts(positive, significand, before + after),
        }
    }

    fn exponent(&mut self, positive: bool, significand: u64, start: i32) -> Result<f64, JsonError> {
        self.eat();
        let positive_exp = match self.peek_or_null() {
            b'+' => {
                self.eat();
                true
            }
            b'-' => {
                self.eat();
                false
            }
            _ => true,
        };
        let mut exp: i32 = match self.next() {
            None => return Err(self.error(EOF_VALUE)),
            Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
            Some(_) => return Err(self.error(INVALID_NUMBER)),
        };
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            self.eat();
            match exp
                .checked_mul(10)
                .and_then(|e| e.checked_add(i32::from(c - b'0')))
            {
                Some(e) => exp = e,
                None => {
                    if significand != 0 && positive_exp {
                        return Err(self.error(OUT_OF_RANGE));
                    }
                    self.skip_digits();
                    return Ok(if positive { 0.0 } else { -0.0 });
                }
            }
        }
        let exponent = if positive_exp {
            start.saturating_add(exp)
        } else {
            start.saturating_sub(exp)
        };
        self.float_from_parts(positive, significand, exponent)
    }

    /// serde_json's `f64_from_parts`: the significand times a power of ten from its table (not always
    /// the correctly rounded value, but the one serde_json computes).
    fn float_from_parts(
        &self,
        positive: bool,
        significand: u64,
        mut exponent: i32,
    ) -> Result<f64, JsonError> {
        let mut f = significand as f64;
        loop {
            match pow10(exponent.unsigned_abs() as usize) {
                Some(pow) => {
                    if exponent >= 0 {
                        f *= pow;
                        if f.is_infinite() {
                            return Err(self.error(OUT_OF_RANGE));
                        }
                    } else {
                        f /= pow;
                    }
                    break;
                }
                None => {
                    if f == 0.0 {
                        break;
                    }
                    if exponent >= 0 {
                        return Err(self.error(OUT_OF_RANGE));
                    }
                    f /= 1e308;
                    exponent += 308;
                }
            }
        }
        Ok(if positive { f } else { -f })
    }

    /// serde's "invalid type" error for the value here (read to describe it, as serde_json does).
    pub fn invalid_type(&mut self, expected: &str) -> JsonError {
        let at = self.pos;
        let found = match self.peek() {
            Some(b'n') => {
                self.eat();
                self.ident(b"ull").map(|()| "null".to_string())
            }
            Some(b't') => {
                self.eat();
                self.ident(b"rue").map(|()| "boolean `true`".to_string())
            }
            Some(b'f') => {
                self.eat();
                self.ident(b"alse").map(|()| "boolean `false`".to_string())
            }
            Some(b'-' | b'0'..=b'9') => self.number().map(|n| self.describe(n, at)),
            Some(b'"') => {
                self.eat();
                self.string_body().map(|s| format!("string {s:?}"))
            }
            Some(b'[') => Ok("sequence".to_string()),
            Some(b'{') => Ok("map".to_string()),
            _ => Err(self.peek_error(EXPECTED_VALUE)),
        };
        match found {
            Ok(found) => JsonError {
                at,
                message: format!("invalid type: {found}, expected {expected}"),
            },
            Err(e) => e,
        }
    }

    /// A number in a message, as serde writes it (floats as written in the text).
    fn describe(&self, n: Num, start: usize) -> String {
        match n {
            Num::U(u) => format!("integer `{u}`"),
            Num::I(i) => format!("integer `{i}`"),
            Num::F(_) => {
                let text = self.text.get(start..self.pos).unwrap_or_default();
                format!("floating point `{}`", String::from_utf8_lossy(text))
            }
        }
    }

    /// At a value that must be a number: the number, or serde's "invalid type".
    fn expect_number(&mut self, expected: &str) -> Result<(Num, usize), JsonError> {
        match self.ws() {
            Some(b'-' | b'0'..=b'9') => {
                let at = self.pos;
                Ok((self.number()?, at))
            }
            None => Err(self.peek_error(EOF_VALUE)),
            Some(_) => Err(self.invalid_type(expected)),
        }
    }

    /// serde_json's `has_next_element`: whether a sequence has another element.
    fn next_element(&mut self, first: &mut bool) -> Result<bool, JsonError> {
        match self.ws() {
            None => Err(self.peek_error(EOF_LIST)),
            Some(b']') => Ok(false),
            Some(_) if *first => {
                *first = false;
                Ok(true)
            }
            Some(b',') => {
                self.eat();
                match self.ws() {
                    Some(b']') => Err(self.peek_error(TRAILING_COMMA)),
                    Some(_) => Ok(true),
                    None => Err(self.peek_error(EOF_VALUE)),
                }
            }
            Some(_) => Err(self.peek_error(EXPECTED_LIST_COMMA)),
        }
    }

    /// serde_json's `end_seq`, once a sequence's reader wants no more elements.
    fn end_seq(&mut self) -> Result<(), JsonError> {
        match self.ws() {
            Some(b']') => {
                self.eat();
                Ok(())
            }
            Some(b',') => {
                self.eat();
                match self.ws() {
                    Some(b']') => Err(self.peek_error(TRAILING_COMMA)),
                    _ => Err(self.peek_error(TRAILING_CHARACTERS)),
                }
            }
            Some(_) => Err(self.peek_error(TRAILING_CHARACTERS)),
            None => Err(self.peek_error(EOF_LIST)),
        }
    }

    /// serde_json's `has_next_key` and the key: the key and the offset just after it, or `None` at the
    /// closing brace (not consumed).
    fn next_key(&mut self, first: &mut bool) -> Result<Option<(String, usize)>, JsonError> {
        match self.ws() {
            None => return Err(self.peek_error(EOF_OBJECT)),
            Some(b'}') => return Ok(None),
            Some(c) if *first => {
                *first = false;
                if c != b'"' {
                    return Err(self.peek_error(KEY_NOT_STRING));
                }
            }
            Some(b',') => {
                self.eat();
                match self.ws() {
                    Some(b'"') => {}
                    Some(b'}') => return Err(self.peek_error(TRAILING_COMMA)),
                    Some(_) => return Err(self.peek_error(KEY_NOT_STRING)),
                    None => return Err(self.peek_error(EOF_VALUE)),
                }
            }
            Some(_) => return Err(self.peek_error(EXPECTED_OBJECT_COMMA)),
        }
        self.eat();
        let key = self.string_body()?;
        Ok(Some((key, self.pos)))
    }

    /// The `:` between a key and its value.
    fn colon(&mut self) -> Result<(), JsonError> {
        match self.ws() {
            Some(b':') => {
                self.eat();
                Ok(())
            }
            Some(_) => Err(self.peek_error(EXPECTED_COLON)),
            None => Err(self.peek_error(EOF_OBJECT)),
        }
    }

    /// serde_json's `end_map`, after `next_key` found the closing brace.
    fn end_map(&mut self) -> Result<(), JsonError> {
        match self.ws() {
            Some(b'}') => {
                self.eat();
                Ok(())
            }
            Some(b',') => Err(self.peek_error(TRAILING_COMMA)),
            Some(_) => Err(self.peek_error(TRAILING_CHARACTERS)),
            None => Err(self.peek_error(EOF_OBJECT)),
        }
    }
}

/// A type read from JSON text exactly as its serde `Deserialize` impl reads it with serde_json.
pub trait ReadJson: Sized {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError>;
}

/// Reads one `T` from the whole of `text` (valid JSON, see [`check`]), as `serde_json::from_slice` does.
pub fn read_value<T: ReadJson>(text: &[u8]) -> Result<T, JsonError> {
    let mut r = Reader::new(text);
    let v = T::read(&mut r)?;
    match r.ws() {
        Some(_) => Err(r.peek_error(TRAILING_CHARACTERS)),
        None => Ok(v),
    }
}

impl ReadJson for String {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        match r.ws() {
            Some(b'"') => {
                r.eat();
                r.string_body()
            }
            None => Err(r.peek_error(EOF_VALUE)),
            Some(_) => Err(r.invalid_type("a string")),
        }
    }
}

impl ReadJson for bool {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        match r.ws() {
            Some(b't') => {
                r.eat();
                r.ident(b"rue").map(|()| true)
            }
            Some(b'f') => {
                r.eat();
                r.ident(b"alse").map(|()| false)
            }
            None => Err(r.peek_error(EOF_VALUE)),
            Some(_) => Err(r.invalid_type("a boolean")),
        }
    }
}

/// serde's integer visitors: in range, or "invalid value" naming the integer; never from a float.
fn integer<T: TryFrom<u64> + TryFrom<i64>>(r: &mut Reader<'_>, name: &str) -> Result<T, JsonError> {
    let (n, at) = r.expect_number(name)?;
    let v = match n {
        Num::U(u) => T::try_from(u).ok(),
        Num::I(i) => T::try_from(i).ok(),
        Num::F(_) => {
            return err(
                at,
                format!("invalid type: {}, expected {name}", r.describe(n, at)),
            )
        }
    };
    v.ok_or_else(|| JsonError {
        at,
        message: format!("invalid value: {}, expected {name}", r.describe(n, at)),
    })
}

impl ReadJson for i32 {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        integer(r, "i32")
    }
}

impl ReadJson for u32 {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        integer(r, "u32")
    }
}

impl ReadJson for f64 {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        Ok(match r.expect_number("f64")?.0 {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        })
    }
}

impl<T: ReadJson> ReadJson for Option<T> {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        if r.ws() == Some(b'n') {
            r.eat();
            r.ident(b"ull")?;
            return Ok(None);
        }
        T::read(r).map(Some)
    }
}

impl<T: ReadJson> ReadJson for Vec<T> {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        match r.ws() {
            Some(b'[') => {
                r.eat();
                let mut out = Vec::new();
                let mut first = true;
                while r.next_element(&mut first)? {
                    out.push(T::read(r)?);
                }
                r.end_seq()?;
                Ok(out)
            }
            None => Err(r.peek_error(EOF_VALUE)),
            Some(_) => Err(r.invalid_type("a sequence")),
        }
    }
}

impl<V: ReadJson> ReadJson for FieldMap<V> {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        match r.ws() {
            Some(b'{') => {
                r.eat();
                let mut out = FieldMap::new();
                let mut first = true;
                while let Some((key, _)) = r.next_key(&mut first)? {
                    r.colon()?;
                    // A later duplicate key wins, as in a BTreeMap.
                    out.insert(key, V::read(r)?);
                }
                r.end_map()?;
                Ok(out)
            }
            None => Err(r.peek_error(EOF_VALUE)),
            Some(_) => Err(r.invalid_type("a map")),
        }
    }
}

/// What a serde-derived struct reader knows about its struct.
pub struct StructInfo {
    /// As in serde's messages: `struct NAME`.
    pub name: &'static str,
    /// Field names as written in JSON, in declaration order.
    pub fields: &'static [&'static str],
    /// Bit i: field i has no default (missing is an error).
    pub required: u32,
}

fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [a] => format!("`{a}`"),
        [a, b] => format!("`{a}` or `{b}`"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

/// Reads a struct as serde's derived `Deserialize` with `deny_unknown_fields` does from serde_json: an
/// object (unknown, duplicate and missing fields rejected) or an array of the fields in order. `set` reads
/// field `i`'s value into the caller's struct; fields never set keep their default.
pub fn read_struct(
    r: &mut Reader<'_>,
    info: &StructInfo,
    set: &mut dyn FnMut(&mut Reader<'_>, usize) -> Result<(), JsonError>,
) -> Result<(), JsonError> {
    let required = |i: usize| info.required >> i & 1 == 1;
    match r.ws() {
        Some(b'{') => {
            r.eat();
            let mut seen: u32 = 0;
            let mut first = true;
            while let Some((key, after)) = r.next_key(&mut first)? {
                let Some(i) = info.fields.iter().position(|f| *f == key) else {
                    let expected = if info.fields.is_empty() {
                        "there are no fields".to_string()
                    } else {
                        format!("expected {}", one_of(info.fields))
                    };
                    return err(after, format!("unknown field `{key}`, {expected}"));
                };
                if seen >> i & 1 == 1 {
                    return err(after, format!("duplicate field `{key}`"));
                }
                seen |= 1 << i;
                r.colon()?;
                set(r, i)?;
            }
            r.end_map()?;
            if let Some(missing) =
                (0..info.fields.len()).find(|i| required(*i) && seen >> i & 1 == 0)
            {
                let name = info.fields.get(missing).copied().unwrap_or_default();
                return err(r.pos, format!("missing field `{name}`"));
            }
            Ok(())
        }
        Some(b'[') => {
            r.eat();
            let mut first = true;
            for i in 0..info.fields.len() {
                if r.next_element(&mut first)? {
                    set(r, i)?;
                } else if required(i) {
                    r.end_seq()?;
                    let n = info.fields.len();
                    let elements = if n == 1 { "element" } else { "elements" };
                    return err(
                        r.pos,
                        format!(
                            "invalid length {i}, expected struct {} with {n} {elements}",
                            info.name
                        ),
                    );
                }
            }
            r.end_seq()
        }
        None => Err(r.peek_error(EOF_VALUE)),
        Some(_) => Err(r.invalid_type(&format!("struct {}", info.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_check(text: &[u8]) {
        let ours = check(text);
        let theirs =
            serde_json::from_slice::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string());
        assert_eq!(
            ours.map(|_| ()),
            theirs.map(|_| ()),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn syntax_errors_are_serde_jsons() {
        let cases: &[&[u8]] = &[
            b"",
            b" ",
            b"{",
            b"}",
            b"[",
            b"]",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"[1 2]",
            b"{\"a\":1 \"b\":2}",
            b"nul",
            b"nulx",
            b"tru",
            b"fals",
            b"-",
            b"-a",
            b"01",
            b"1.",
            b"1.e5",
            b"1e",
            b"1e+",
            b"1ex",
            b".5",
            b"+1",
            b"\"abc",
            b"\"a\\",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\u12g4\"",
            b"\"\x01\"",
            b"\"\xff\"",
            b"1 2",
            b"{} x",
            b"[]]",
            b"{\"a\":[1,{\"b\":[]}]}",
            b"\n\n  [\n 1,\n x]",
            b"\"\\ud800\"",
            b"1e400",
            b"-0",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            b"\xef\xbb\xbf{}",
            b"{\"a\":1}\x00",
        ];
        for c in cases {
            same_check(c);
        }
        let deep = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
        same_check(&deep);
        same_check(&deep[..150_000]);
    }

    fn same_number(text: &str) {
        let ours = read_value::<f64>(text.as_bytes()).map_err(|e| e.message);
        let theirs = serde_json::from_str::<f64>(text).map_err(|e| {
            let s = e.to_string();
            s.split(" at line ").next().unwrap_or_default().to_string()
        });
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{text}"),
            _ => assert_eq!(ours, theirs, "{text}"),
        }
    }

    #[test]
    fn numbers_are_serde_jsons() {
        for t in [
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "0.1",
            "0.30000000000000004",
            "1e308",
            "1e309",
            "-1e309",
            "1e-400",
            "2.2250738585072014e-308",
            "4.9e-324",
            "123456789012345678901234567890",
            "1.7976931348623157e308",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "0.000000000000000000000000000000000000001e39",
            "1e2147483648",
            "0e2147483648",
            "1e-2147483649",
            "12345678901234567890.12345678901234567890e-5",
            "99.99999999999999999999",
            "1E+2",
            "1e-2",
            "1.0000000000000002",
            "5e-324",
            "3e-324",
            "100000000000000000000000e-30",
        ] {
            same_number(t);
        }
        // Every power of ten serde_json tabulates.
        for i in 0..=310 {
            same_number(&format!("1e{i}"));
            same_number(&format!("3e-{i}"));
        }
    }
}
