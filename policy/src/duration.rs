//! Parses durations as Kubernetes and Istio write them: Go style (`1m30s`, `250ms`, `1.5s`, `100us`).

/// Parses a duration into nanoseconds, or says what is wrong with it.
pub fn parse_duration_nanos(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. \"5s\" or \"250ms\"".into());
    }
    if t == "0" {
        return Ok(0);
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "invalid duration {s:?}: expected a number at offset {start}"
            ));
        }
        let num: f64 = t[start..i]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {:?}", &t[start..i]))?;
        let ustart = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let factor = match &t[ustart..i] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)"
                ))
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (use ns, us, ms, s, m, h)"
                ))
            }
        };
        total += num * factor;
    }
    if !total.is_finite() || total > 1e18 {
        return Err(format!("invalid duration {s:?}: too long"));
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_nanos as p;

    #[test]
    fn go_durations() {
        assert_eq!(p("5s"), Ok(5_000_000_000));
        assert_eq!(p("250ms"), Ok(250_000_000));
        assert_eq!(p("1m30s"), Ok(90_000_000_000));
        assert_eq!(p("1.5s"), Ok(1_500_000_000));
        assert_eq!(p("100us"), Ok(100_000));
        assert_eq!(p("0"), Ok(0));
        assert!(p("5").unwrap_err().contains("missing unit"));
        assert!(p("5sec").unwrap_err().contains("unknown unit"));
        assert!(p("").is_err());
        assert!(p("s").is_err());
    }
}
