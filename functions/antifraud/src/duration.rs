//! Durations in rule files: `250ms`, `30s`, `5m`, `2h`, `7d`, or sums like `1h30m`.

/// Parses a duration into milliseconds; `Err` says what is wrong.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let bad =
        || format!("{text:?} is not a duration like \"30s\", \"5m\", \"2h\", \"7d\" or \"1h30m\"");
    let mut total: i64 = 0;
    let mut last_unit = i64::MAX;
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
        if unit >= last_unit {
            return Err(format!(
                "{text:?}: units go from the largest down, each once (\"1h30m\", not \"30m1h\" or \"5m5m\")"
            ));
        }
        last_unit = unit;
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

/// Writes milliseconds the way a person reads them, with the precision the size calls for:
/// `250ms`, `2.5s`, `45s`, `4m 30s`, `12m`, `3h 05m`, `2d 04h` (a bot betting every 2.5 s read
/// "every 2s").
pub fn human_ms(ms: f64) -> String {
    let ms = ms.max(0.0).round() as i64;
    // Past 10 s, to the nearest second (below, to the nearest tenth or millisecond).
    let ms = if ms >= 10_000 {
        (ms + 500) / 1000 * 1000
    } else {
        ms
    };
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
    } else if m > 0 && s > 0 {
        format!("{m}m {s:02}s")
    } else if m > 0 {
        format!("{m}m")
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 10_000 {
        let tenths = (ms + 50) / 100;
        if tenths % 10 == 0 {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_durations_with_the_precision_their_size_calls_for() {
        for (ms, text) in [
            (0.0, "0ms"),
            (250.4, "250ms"),
            (2500.0, "2.5s"),
            (2000.0, "2s"),
            (9_960.0, "10s"),
            (45_000.0, "45s"),
            (270_000.0, "4m 30s"),
            (270_900.0, "4m 31s"),
            (59_900.0, "1m"),
            (720_000.0, "12m"),
            (11_100_000.0, "3h 05m"),
            (187_200_000.0, "2d 04h"),
        ] {
            assert_eq!(human_ms(ms), text, "{ms}");
        }
    }

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
            "30m1h",
            "5m5m",
            "1s1s",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert!(
            parse_duration_ms("30m1h").is_err_and(|e| e.contains("units go from the largest down"))
        );
        assert_eq!(parse_duration_ms("1d2h3m4s5ms"), Ok(93_784_005));
    }

    #[test]
    fn humanizes() {
        assert_eq!(human_ms(45_000.0), "45s");
        assert_eq!(human_ms(11_100_000.0), "3h 05m");
        assert_eq!(human_ms(187_200_000.0), "2d 04h");
    }
}
