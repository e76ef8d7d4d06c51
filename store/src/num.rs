//! Strict decimal numbers as xenstore.txt specifies them ("Integer domid, represented as
//! decimal number 0..65535"; transaction ids "represented as unsigned decimal").
//!
//! C xenstored parses with `atoi()`/`strtoul()`/`strtol(.., 0)` and "Parsing errors and values
//! out of range generally go undetected" (xenstore.txt). We are strict: ASCII digits only, no
//! sign or blanks, no leading zeros (except `0` itself — a leading zero means octal to
//! `strtol(.., 0)`), and no overflow. Strictness also makes decode/encode a bijection.

/// Parse `s` as a strict decimal number no larger than `max`.
pub(crate) fn parse_dec(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || (s.len() > 1 && s.first() == Some(&b'0')) {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (v <= max).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::parse_dec;

    #[test]
    fn table() {
        let cases: &[(&[u8], u64, Option<u64>)] = &[
            (b"0", 10, Some(0)),
            (b"7", 10, Some(7)),
            (b"65535", 65535, Some(65535)),
            (b"65536", 65535, None),
            (b"", 10, None),
            (b"00", 10, None),
            (b"01", 10, None),
            (b"-1", 10, None),
            (b"+1", 10, None),
            (b" 1", 10, None),
            (b"1 ", 10, None),
            (b"0x10", 100, None),
            (b"18446744073709551615", u64::MAX, Some(u64::MAX)),
            (b"18446744073709551616", u64::MAX, None),
            (b"184467440737095516150", u64::MAX, None),
            (
                b"4294967295",
                u64::from(u32::MAX),
                Some(u64::from(u32::MAX)),
            ),
            (b"4294967296", u64::from(u32::MAX), None),
        ];
        for (s, max, want) in cases {
            assert_eq!(parse_dec(s, *max), *want, "{:?}", core::str::from_utf8(s));
        }
    }
}
