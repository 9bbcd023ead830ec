//! Label and field selectors, parsed by the grammar kube-apiserver accepts and refused (400) with its
//! words when they do not parse:
//!
//! ```text
//! selector    := requirement ("," requirement)*
//! requirement := ["!"] KEY [ ("in" | "notin") "(" VALUE ("," VALUE)* ")" | ("=" | "==" | "!=" | ">" | "<") VALUE ]
//! ```
//!
//! Field selectors are `field=value`, `field==value` or `field!=value`, comma-separated, over the fields the
//! kind supports.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    End,
    Error(String),
}

impl Tok {
    /// The literal, as kube-apiserver's messages quote it.
    fn lit(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Error(s) => s.clone(),
            Tok::Not => "!".into(),
            Tok::Eq => "=".into(),
            Tok::DoubleEq => "==".into(),
            Tok::NotEq => "!=".into(),
            Tok::Gt => ">".into(),
            Tok::Lt => "<".into(),
            Tok::In => "in".into(),
            Tok::NotIn => "notin".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::Comma => ",".into(),
            Tok::End => String::new(),
        }
    }
    /// In a list of values, `in` and `notin` are plain words.
    fn as_value(&self) -> Tok {
        match self {
            Tok::In | Tok::NotIn => Tok::Ident(self.lit()),
            t => t.clone(),
        }
    }
}

fn special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn operator(s: &str) -> Option<Tok> {
    Some(match s {
        "=" => Tok::Eq,
        "==" => Tok::DoubleEq,
        "!=" => Tok::NotEq,
        "!" => Tok::Not,
        ">" => Tok::Gt,
        "<" => Tok::Lt,
        "(" => Tok::Open,
        ")" => Tok::Close,
        "," => Tok::Comma,
        _ => return None,
    })
}

fn lex(input: &str) -> Vec<Tok> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r' | '\n') {
            i += 1;
        }
        if i >= chars.len() {
            out.push(Tok::End);
            return out;
        }
        if special(chars[i]) {
            // The longest run of symbols that is still an operator.
            let mut buf = String::new();
            let mut best: Option<(Tok, usize)> = None;
            let mut j = i;
            while j < chars.len() && special(chars[j]) {
                buf.push(chars[j]);
                j += 1;
                match operator(&buf) {
                    Some(t) => best = Some((t, j)),
                    None if best.is_some() => break,
                    None => {}
                }
            }
            match best {
                Some((t, end)) => {
                    out.push(t);
                    i = end;
                }
                None => {
                    out.push(Tok::Error(format!("error expected: keyword found '{buf}'")));
                    i = j;
                }
            }
        } else {
            let start = i;
            while i < chars.len()
                && !special(chars[i])
                && !matches!(chars[i], ' ' | '\t' | '\r' | '\n')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(match word.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident(word),
            });
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Exists,
    DoesNotExist,
    Equals,
    NotEquals,
    In,
    NotIn,
    Gt,
    Lt,
}

#[derive(Clone, Debug)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector.
#[derive(Clone, Debug, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Tok {
        self.toks.get(self.pos).cloned().unwrap_or(Tok::End)
    }
    fn next(&mut self) -> Tok {
        let t = self.peek();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut t = self.next().as_value();
        let mut negated = false;
        if t == Tok::Not {
            negated = true;
            t = self.next().as_value();
        }
        let Tok::Ident(key) = t else {
            return Err(format!("found '{}', expected: identifier", t.lit()));
        };
        check_key(&key)?;
        if matches!(self.peek().as_value(), Tok::End | Tok::Comma) {
            let op = if negated {
                Op::DoesNotExist
            } else {
                Op::Exists
            };
            return Ok(Requirement {
                key,
                op,
                values: vec![],
            });
        }
        if negated {
            // `!key` followed by anything but the end or a comma.
            let t = self.peek();
            return Err(format!(
                "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                t.lit()
            ));
        }
        let op = match self.next() {
            Tok::In => Op::In,
            Tok::NotIn => Op::NotIn,
            Tok::Eq | Tok::DoubleEq => Op::Equals,
            Tok::NotEq => Op::NotEquals,
            Tok::Gt => Op::Gt,
            Tok::Lt => Op::Lt,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.lit()
                ))
            }
        };
        let values = match op {
            Op::In | Op::NotIn => self.values()?,
            _ => match self.peek().as_value() {
                Tok::End | Tok::Comma => vec![String::new()],
                _ => match self.next().as_value() {
                    Tok::Ident(v) => vec![v],
                    t => return Err(format!("found '{}', expected: identifier", t.lit())),
                },
            },
        };
        for v in &values {
            check_value(v)?;
        }
        if matches!(op, Op::Gt | Op::Lt) && values.iter().any(|v| v.parse::<i64>().is_err()) {
            return Err(format!(
                "values[0]: Invalid value: {:?}: for 'Gt', 'Lt' operators, the value must be an integer",
                values[0]
            ));
        }
        Ok(Requirement { key, op, values })
    }

    fn values(&mut self) -> Result<Vec<String>, String> {
        let t = self.next().as_value();
        if t != Tok::Open {
            return Err(format!("found '{}' expected: '('", t.lit()));
        }
        match self.peek().as_value() {
            Tok::Close => {
                self.next();
                return Ok(vec![String::new()]);
            }
            Tok::Ident(_) | Tok::Comma => {}
            t => {
                return Err(format!(
                    "found '{}', expected: ',', ')' or identifier",
                    t.lit()
                ))
            }
        }
        let mut out: Vec<String> = Vec::new();
        loop {
            match self.next().as_value() {
                Tok::Ident(v) => {
                    out.push(v);
                    match self.peek().as_value() {
                        Tok::Comma => continue,
                        Tok::Close => {
                            self.next();
                            break;
                        }
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.lit())),
                    }
                }
                Tok::Comma => {
                    if out.is_empty() {
                        out.push(String::new());
                    }
                    match self.peek().as_value() {
                        Tok::Close => {
                            out.push(String::new());
                            self.next();
                            break;
                        }
                        Tok::Comma => out.push(String::new()),
                        _ => {}
                    }
                }
                t => return Err(format!("found '{}', expected: ',', or identifier", t.lit())),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "key: Invalid value: {key:?}: not a valid label key"
        ))
    }
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn check_value(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "values[0]: Invalid value: {v:?}: not a valid label value"
        ))
    }
}

impl LabelSelector {
    /// Parses a selector; the error is kube-apiserver's message for it.
    pub fn parse(sel: &str) -> Result<LabelSelector, String> {
        let mut p = Parser {
            toks: lex(sel),
            pos: 0,
        };
        let mut requirements = Vec::new();
        loop {
            match p.peek().as_value() {
                Tok::Ident(_) | Tok::Not => {
                    let r = p
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(r);
                    match p.next().as_value() {
                        Tok::End => break,
                        Tok::Comma => {
                            let t = p.peek().as_value();
                            if !matches!(t, Tok::Ident(_) | Tok::Not) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.lit()
                                ));
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.lit()
                            ))
                        }
                    }
                }
                Tok::End => break,
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.lit()
                    ))
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.requirements.iter().all(|r| {
            let got = labels.get(&r.key).and_then(Value::as_str);
            match r.op {
                Op::Exists => got.is_some(),
                Op::DoesNotExist => got.is_none(),
                Op::Equals | Op::In => got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                Op::NotEquals | Op::NotIn => !got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                Op::Gt | Op::Lt => {
                    let (Some(g), Some(v)) = (
                        got.and_then(|g| g.parse::<i64>().ok()),
                        r.values.first().and_then(|v| v.parse::<i64>().ok()),
                    ) else {
                        return false;
                    };
                    if r.op == Op::Gt {
                        g > v
                    } else {
                        g < v
                    }
                }
            }
        })
    }
}

/// One term of a field selector: field, value, and whether it is `!=`.
pub type FieldTerm = (String, String, bool);

/// Parses a field selector (`a=b,c!=d`; `\,` and `\=` escape).
pub fn parse_fields(sel: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in sel.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for part in parts.iter().filter(|p| !p.is_empty()) {
        let unescape = |s: &str| {
            s.replace("\\,", ",")
                .replace("\\=", "=")
                .replace("\\\\", "\\")
        };
        let found = ["!=", "==", "="]
            .iter()
            .find_map(|op| part.find(op).map(|i| (i, *op)));
        let Some((i, op)) = found else {
            return Err(format!(
                "invalid selector: '{sel}'; can't understand '{part}'"
            ));
        };
        terms.push((
            part[..i].to_string(),
            unescape(&part[i + op.len()..]),
            op == "!=",
        ));
    }
    Ok(terms)
}

/// Whether a field selector's terms hold for an object (a field absent reads as "").
pub fn fields_match(obj: &Value, terms: &[FieldTerm]) -> bool {
    terms.iter().all(|(field, value, negated)| {
        let mut cur = Some(obj);
        for part in field.split('.') {
            cur = cur.and_then(|c| c.get(part));
        }
        let actual = match cur {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        (actual == *value) != *negated
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("app", true),
            ("!app", false),
            ("!zone", true),
            ("zone!=x", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<4", false),
            ("", true),
            ("app in (in,notin,web)", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_get_kubernetes_messages() {
        for (sel, msg) in [
            (
                "app in web",
                "unable to parse requirement: found 'web' expected: '('",
            ),
            ("app=web,", "found '', expected: identifier after ','"),
            (
                "app=web tier=x",
                "found 'tier', expected: ',' or 'end of string'",
            ),
            (
                "app in (a b)",
                "unable to parse requirement: found 'b', expected: ',' or ')'",
            ),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap_err(), msg, "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "n"}, "type": "x"});
        let t = parse_fields("metadata.name=a,type!=y").unwrap();
        assert!(fields_match(&o, &t));
        assert!(!fields_match(
            &o,
            &parse_fields("metadata.namespace==m").unwrap()
        ));
        assert!(parse_fields("nonsense").is_err());
    }
}
