//! Durations in rule files: `250ms`, `30s`, `5m`, `2h`, `7d`, or sums like `1h30m`.

/// Parses a duration into milliseconds; `Err` says what is wrong.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let bad =
        || format!("{text:?} is not a duration like \"30s\", \"5m\", \"2h\", \"7d\" or \"1h30m\"");
    let mut total: i64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(format!("{text:?} is zero; a duration must be positive"));
    }
    Ok(total)
}

/// Writes milliseconds the way a person reads them: `45s`, `12m`, `3h 05m`, `2d 04h`.
pub fn human_ms(ms: f64) -> String {
    let ms = ms.max(0.0) as i64;
    let (d, h, m, s) = (
        ms / 86_400_000,
        ms / 3_600_000 % 24,
        ms / 60_000 % 60,
        ms / 1000 % 60,
    );
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
    }

    #[test]
    fn refuses_nonsense_zero_and_overflow() {
        for bad in [
            "",
            "5",
            "m",
            "5 weeks",
            "1.5h",
            "0s",
            "99999999999999999d",
            "-1s",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn humanizes() {
        assert_eq!(human_ms(45_000.0), "45s");
        assert_eq!(human_ms(11_100_000.0), "3h 05m");
        assert_eq!(human_ms(187_200_000.0), "2d 04h");
    }
}
