//! A borrowed view of one request's headers: what a decision reads. Nothing here allocates.

/// Request headers as the proxy hands them over: pseudo-headers (`:path`, `:authority`, `:method`,
/// `:scheme`) and regular headers, names in lower case, values as raw bytes (they need not be UTF-8).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    headers: &'a [(&'a [u8], &'a [u8])],
}

impl<'a> Request<'a> {
    pub fn new(headers: &'a [(&'a [u8], &'a [u8])]) -> Self {
        Request { headers }
    }

    /// First value of header `name` (lower case).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Whether header `name` (lower case) appears more than once.
    pub fn repeats(&self, name: &[u8]) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .nth(1)
            .is_some()
    }

    pub fn path(&self) -> &'a [u8] {
        self.header(b":path").unwrap_or(b"/")
    }

    /// The path without query string or fragment.
    pub fn path_only(&self) -> &'a [u8] {
        let p = self.path();
        let end = p
            .iter()
            .position(|b| *b == b'?' || *b == b'#')
            .unwrap_or(p.len());
        &p[..end]
    }

    pub fn authority(&self) -> &'a [u8] {
        self.header(b":authority")
            .or_else(|| self.header(b"host"))
            .unwrap_or(b"")
    }

    /// The authority without `:port` (IPv6 literals in brackets kept whole).
    pub fn host(&self) -> &'a [u8] {
        let a = self.authority();
        if a.first() == Some(&b'[') {
            return match a.iter().position(|b| *b == b']') {
                Some(i) => &a[..=i],
                None => a,
            };
        }
        match a.iter().rposition(|b| *b == b':') {
            Some(i) => &a[..i],
            None => a,
        }
    }

    pub fn method(&self) -> &'a [u8] {
        self.header(b":method").unwrap_or(b"GET")
    }

    pub fn scheme(&self) -> &'a [u8] {
        self.header(b":scheme").unwrap_or(b"http")
    }

    /// Value of query parameter `name` (raw); `Some(b"")` when present without a value.
    pub fn query_param(&self, name: &[u8]) -> Option<&'a [u8]> {
        let p = self.path();
        let q = p.iter().position(|b| *b == b'?')?;
        let q = &p[q + 1..];
        let q = &q[..q.iter().position(|b| *b == b'#').unwrap_or(q.len())];
        q.split(|b| *b == b'&').find_map(|pair| {
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            (k == name).then_some(v)
        })
    }

    /// Value of cookie `name` from the `cookie` headers.
    pub fn cookie(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| *n == b"cookie")
            .find_map(|(_, v)| {
                v.split(|b| *b == b';').find_map(|part| {
                    let part = trim(part);
                    let i = part.iter().position(|b| *b == b'=')?;
                    (trim(&part[..i]) == name).then(|| {
                        let v = trim(&part[i + 1..]);
                        // RFC 6265 allows a quoted cookie value.
                        if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                            &v[1..v.len() - 1]
                        } else {
                            v
                        }
                    })
                })
            })
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let h: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/api/x?a=1&b&c=3#frag"),
            (b":authority", b"Example.com:8080"),
            (b"cookie", b"foo=1; user=\"u42\" ;x"),
            (b"cookie", b"other=2"),
        ];
        let r = Request::new(&h);
        assert_eq!(r.path_only(), b"/api/x");
        assert_eq!(r.host(), b"Example.com");
        assert_eq!(r.query_param(b"a"), Some(&b"1"[..]));
        assert_eq!(r.query_param(b"b"), Some(&b""[..]));
        assert_eq!(r.query_param(b"c"), Some(&b"3"[..]));
        assert_eq!(r.query_param(b"d"), None);
        assert_eq!(r.cookie(b"user"), Some(&b"u42"[..]));
        assert_eq!(r.cookie(b"other"), Some(&b"2"[..]));
        assert_eq!(r.cookie(b"x"), None);
        assert_eq!(r.method(), b"GET");
        let v6: Vec<(&[u8], &[u8])> = vec![(b":authority", b"[::1]:80")];
        assert_eq!(Request::new(&v6).host(), b"[::1]");
    }
}
