//! Parsing of human-friendly sizes and durations on the command line.

/// "64M", "1G", "512k", "1048576" → bytes (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64M"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("{s:?} is not a size like 64M"));
    }
    Ok((n * mult as f64) as u64)
}

/// "10s", "500ms", "2m", "3" (seconds) → milliseconds.
pub fn parse_millis(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1000.0)
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 500ms"))?;
    if !(n.is_finite() && n >= 0.0) || n * mult > u32::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok((n * mult) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("-1M").is_err());
        assert_eq!(parse_millis("2s"), Ok(2000));
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("1m"), Ok(60_000));
        assert!(parse_millis("soon").is_err());
    }
}
