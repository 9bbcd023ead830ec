//! The field path (`http[0].route[1].weight`) at a byte offset of a JSON text.
//!
//! Deserialization errors carry the path of the field they are about. Instead of wrapping every visitor
//! (which, for the whole schema, was the largest part of the Wasm module), the value is deserialized from
//! its compact text and, on error, the text is scanned up to the error's offset to name the field there.

/// One open container while scanning.
enum Frame {
    /// An object and the key whose value is being read (none before the first key).
    Object(Option<String>),
    /// An array and the index of the element being read.
    Array(usize),
}

/// The path of the value being read at byte `offset` of `text` (valid JSON, e.g. `serde_json::to_vec`).
/// Empty at the top level.
pub fn path_at(text: &[u8], offset: usize) -> String {
    let end = offset.min(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < end {
        match text[i] {
            b'{' => {
                stack.push(Frame::Object(None));
                expect_key = true;
            }
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(k)) => {
                    *k = None;
                    expect_key = true;
                }
                None => {}
            },
            b'"' => {
                let (s, next) = read_string(text, i + 1);
                if expect_key {
                    if let Some(Frame::Object(k)) = stack.last_mut() {
                        *k = Some(s);
                    }
                    expect_key = false;
                }
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = String::new();
    for f in &stack {
        match f {
            Frame::Object(Some(k)) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Frame::Object(None) => {}
            Frame::Array(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The 0-based byte offset of serde_json's 1-based `line` and `column` in `text` (column names the last
/// character read, so this is the first character not yet read).
pub fn offset_of(text: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].iter().position(|b| *b == b'\n') {
            Some(p) => start += p + 1,
            None => return text.len(),
        }
    }
    (start + column).min(text.len())
}

/// One member of a top-level JSON object.
#[derive(Debug)]
pub struct Member {
    pub key: String,
    /// The whole member, `"key": value`.
    pub span: std::ops::Range<usize>,
    /// The value alone.
    pub value: std::ops::Range<usize>,
}

/// The members of the object `text` holds (valid JSON, checked beforehand); `None` when it is not an
/// object.
pub fn object_members(text: &[u8]) -> Option<Vec<Member>> {
    let ws = |mut i: usize| {
        while matches!(text.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    i = ws(i + 1);
    if text.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let start = i;
        let (key, next) = read_string(text, i + 1);
        i = ws(next);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let vstart = ws(i + 1);
        let vend = skip_value(text, vstart);
        out.push(Member {
            key,
            span: start..vend,
            value: vstart..vend,
        });
        i = ws(vend);
        match text.get(i) {
            Some(b',') => i = ws(i + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// The offset just after the JSON value starting at `i`.
fn skip_value(text: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i = read_string(text, i + 1).1;
                if depth == 0 {
                    return i;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if depth == 0 {
                    return i;
                }
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Reads a JSON string whose opening quote is just before `start`: its (unescaped enough for a field
/// name) content and the offset after the closing quote.
fn read_string(text: &[u8], start: usize) -> (String, usize) {
    let mut out = Vec::new();
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'"' => return (String::from_utf8_lossy(&out).into_owned(), i + 1),
            b'\\' => {
                if let Some(&c) = text.get(i + 1) {
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Unterminated (or ending in a lone backslash): the end of the text, never beyond it.
    (String::from_utf8_lossy(&out).into_owned(), text.len())
}

#[cfg(test)]
mod tests {
    use super::path_at;

    fn at(text: &str, marker: &str) -> String {
        let offset = text.find(marker).unwrap_or(text.len());
        path_at(text.as_bytes(), offset)
    }

    #[test]
    fn names_the_field_at_an_offset() {
        let t =
            r#"{"http":[{"name":"a"},{"route":[{"weight":"X"},{"weight":"Y"}]}],"hosts":["h"]}"#;
        assert_eq!(at(t, "\"X\""), "http[1].route[0].weight");
        assert_eq!(at(t, "\"Y\""), "http[1].route[1].weight");
        assert_eq!(at(t, "\"a\""), "http[0].name");
        assert_eq!(at(t, "[\"h\"]"), "hosts");
        assert_eq!(at(t, "\"h\"]"), "hosts[0]");
        assert_eq!(path_at(t.as_bytes(), 0), "");
        // Just after a closing bracket (where a missing field is noticed): the field holding the container.
        let close = t.find("\"Y\"}").unwrap_or(0) + 3;
        assert_eq!(path_at(t.as_bytes(), close), "http[1].route[1].weight");
        assert_eq!(path_at(t.as_bytes(), close + 1), "http[1].route[1]");
    }

    #[test]
    fn strings_with_escapes_and_brackets_do_not_confuse_it() {
        let t = r#"{"a\"{[":{"k,":"v]}\\","b":[1,2,{"c":0}]}}"#;
        assert_eq!(at(t, "0}"), "a\"{[.b[2].c");
        assert_eq!(at(t, "2,"), "a\"{[.b[1]");
    }

    #[test]
    fn members_of_an_object() {
        let t = br#" { "cluster" : "c1", "http": [{"a": "}"}], "n": -1.5e3 ,"t":true} "#;
        let m = super::object_members(t).unwrap_or_default();
        let shown: Vec<(String, String)> = m
            .iter()
            .map(|m| {
                (
                    m.key.clone(),
                    String::from_utf8_lossy(&t[m.value.clone()]).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("cluster".to_string(), "\"c1\"".to_string()),
                ("http".to_string(), r#"[{"a": "}"}]"#.to_string()),
                ("n".to_string(), "-1.5e3".to_string()),
                ("t".to_string(), "true".to_string()),
            ]
        );
        assert_eq!(&t[m[1].span.clone()], br#""http": [{"a": "}"}]"#);
        assert!(super::object_members(b"[1]").is_none());
        assert_eq!(super::object_members(b"{}").map(|m| m.len()), Some(0));
    }

    #[test]
    fn line_and_column_to_offset() {
        let t = b"{\n  \"a\": 1,\n  \"b\": x\n}";
        assert_eq!(super::offset_of(t, 1, 1), 1);
        assert_eq!(t[super::offset_of(t, 3, 7)], b'x');
        assert_eq!(super::offset_of(t, 9, 1), t.len());
    }

    #[test]
    fn truncated_text_never_reads_past_its_end() {
        for t in [&b"{\"a\": \"x\\"[..], b"{\"a", b"{\"a\": [", b"{", b"\"\\"] {
            let _ = super::object_members(t);
            let _ = super::path_at(t, t.len());
            assert!(super::skip_value(t, 0) <= t.len());
        }
    }

    #[test]
    fn offsets_beyond_the_text_are_safe() {
        assert_eq!(path_at(b"{\"a\":[1", 100), "a[0]");
        assert_eq!(path_at(b"\"unterminated", 100), "");
    }
}
