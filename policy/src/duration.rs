//! Parses durations as Kubernetes and Istio write them: Go style (`1m30s`, `250ms`, `1.5s`, `100us`).

/// The largest duration Go (and so Istio) can hold: about 292 years.
const MAX_NANOS: u64 = i64::MAX as u64;

/// Parses a duration into nanoseconds, exactly (no floating point), or says what is wrong with it.
/// Accepts what Go's `time.ParseDuration` accepts except a negative sign (no ksit duration may be negative).
pub fn parse_duration_nanos(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. \"5s\" or \"250ms\"".into());
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    if t == "0" {
        return Ok(0);
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    let number = |b: u8| b.is_ascii_digit() || b == b'.';
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && number(bytes[i]) {
            i += 1;
        }
        let num = &t[start..i];
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if num.is_empty() || (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(format!(
                "invalid duration {s:?}: expected a number at offset {start}"
            ));
        }
        let ustart = i;
        while i < bytes.len() && !number(bytes[i]) {
            i += 1;
        }
        let unit: u64 = match &t[ustart..i] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
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
        let too_long = || format!("invalid duration {s:?}: too long");
        let mut value: u64 = 0;
        for d in int.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
                .filter(|v| *v <= MAX_NANOS)
                .ok_or_else(too_long)?;
        }
        let mut part = value.checked_mul(unit).ok_or_else(too_long)?;
        // The fraction, digit by digit: what falls below a nanosecond is dropped, as Go does.
        let mut scale = unit;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part = part
                .checked_add(u64::from(d - b'0') * scale)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > MAX_NANOS {
            return Err(too_long());
        }
    }
    Ok(total)
}

/// A duration Istio accepts in a VirtualService (`timeout`, `perTryTimeout`, `backoff`, `fixedDelay`,
/// `corsPolicy.maxAge`): at least 1ms and a whole number of milliseconds. Returns the nanoseconds.
pub fn parse_istio_duration(s: &str) -> Result<u64, String> {
    let n = parse_duration_nanos(s)?;
    if n < 1_000_000 {
        return Err(format!(
            "{s:?} is too short: Istio needs at least 1ms (a timeout cannot be disabled with 0s)"
        ));
    }
    if n % 1_000_000 != 0 {
        return Err(format!(
            "{s:?}: Istio takes whole milliseconds only (e.g. \"{}ms\")",
            n / 1_000_000
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_nanos as p;
    use super::parse_istio_duration as istio;

    #[test]
    fn go_durations() {
        assert_eq!(p("5s"), Ok(5_000_000_000));
        assert_eq!(p("250ms"), Ok(250_000_000));
        assert_eq!(p("1m30s"), Ok(90_000_000_000));
        assert_eq!(p("1.5s"), Ok(1_500_000_000));
        assert_eq!(p(".5s"), Ok(500_000_000));
        assert_eq!(p("5.s"), Ok(5_000_000_000));
        assert_eq!(p("100us"), Ok(100_000));
        assert_eq!(p("100µs"), Ok(100_000));
        assert_eq!(p("0.0000000019s"), Ok(1));
        assert_eq!(p("+2h"), Ok(7_200_000_000_000));
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("2562047h"), Ok(2_562_047 * 3_600_000_000_000));
        assert!(p("2562048h").unwrap_err().contains("too long"));
        assert!(p("5").unwrap_err().contains("missing unit"));
        assert!(p("5sec").unwrap_err().contains("unknown unit"));
        assert!(p("1d").unwrap_err().contains("unknown unit"));
        assert!(p("-1s").unwrap_err().contains("negative"));
        assert!(p("1..5s").is_err());
        assert!(p(".s").is_err());
        assert!(p("").is_err());
        assert!(p("s").is_err());
    }

    /// What `istioctl validate` says of a VirtualService `timeout` (checked with the pinned istioctl).
    #[test]
    fn istio_durations() {
        for (d, ok) in [
            ("1ms", true),
            ("0.5s", true),
            ("1s500ms", true),
            ("2h", true),
            ("300000000s", true),
            ("0s", false),
            ("0", false),
            ("999us", false),
            ("1.5ms", false),
            ("1.0001s", false),
            ("1500us", false),
        ] {
            assert_eq!(istio(d).is_ok(), ok, "{d}: {:?}", istio(d));
        }
        assert!(istio("0s").unwrap_err().contains("at least 1ms"));
        assert!(istio("1500us")
            .unwrap_err()
            .contains("whole milliseconds only"));
    }
}
