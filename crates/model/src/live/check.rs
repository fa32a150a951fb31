//! The field rules the live-path messages share (ids, UUIDs, dotted names, human-readable text,
//! list sizes, times), collecting every violation with its field path.

use crate::live::limits::{MAX_NAME, MAX_TIMESTAMP_MS};
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode, id_violation, uuid_violation};

/// Collects the violations of one message.
#[derive(Debug, Default)]
pub(crate) struct Check {
    out: Vec<Violation>,
}

/// Whether a human-readable text may hold line breaks and tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lines {
    /// One line: no control characters at all (titles, reasons).
    One,
    /// Line breaks and tabs allowed, no other control characters (bodies, notes).
    Many,
}

impl Check {
    pub(crate) fn new() -> Self {
        Check::default()
    }

    /// All violations found, or `Ok` when there were none.
    pub(crate) fn finish(self) -> Result<(), Vec<Violation>> {
        if self.out.is_empty() {
            Ok(())
        } else {
            Err(self.out)
        }
    }

    pub(crate) fn push(&mut self, path: &str, code: ViolationCode, message: impl Into<String>) {
        self.out.push(Violation::new(path, code, message));
    }

    /// A UUID in canonical hyphenated form.
    pub(crate) fn uuid(&mut self, path: &str, value: &str) {
        self.out.extend(uuid_violation(path, value));
    }

    /// An id: required, at most `max` bytes, `[A-Za-z0-9._~@+-]` (no `:`, the bus key separator).
    pub(crate) fn id(&mut self, path: &str, value: &str, max: usize) {
        self.out.extend(id_violation(path, value, max));
    }

    /// A dotted name: segments of `[a-z0-9_]` joined by single dots, starting with a letter, at
    /// most 64 bytes, with at least `min_segments` segments (`rg.loss_chasing` has two).
    pub(crate) fn dotted_name(&mut self, path: &str, value: &str, min_segments: usize) {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if value.is_empty() {
            self.push(path, ViolationCode::Required, "must not be empty");
        } else if value.len() > MAX_NAME {
            self.push(
                path,
                ViolationCode::TooLong,
                format!("longer than {MAX_NAME} bytes"),
            );
        } else if !value.starts_with(|c: char| c.is_ascii_lowercase())
            || !value.split('.').all(segment_ok)
        {
            self.push(
                path,
                ViolationCode::InvalidCharacters,
                "use dot-separated [a-z0-9_] segments, starting with a letter",
            );
        } else if value.split('.').count() < min_segments {
            self.push(
                path,
                ViolationCode::InvalidValue,
                "needs a namespace, like \"rg.loss_chasing\"",
            );
        }
    }

    /// Human-readable text: not blank when `required`, at most `max_chars` characters, and no
    /// control characters beyond what `lines` allows.
    pub(crate) fn text(
        &mut self,
        path: &str,
        value: &str,
        max_chars: usize,
        lines: Lines,
        required: bool,
    ) {
        if value.trim().is_empty() {
            if required || !value.is_empty() {
                self.push(path, ViolationCode::Required, "must not be blank");
            }
            return;
        }
        if value.chars().count() > max_chars {
            self.push(
                path,
                ViolationCode::TooLong,
                format!("longer than {max_chars} characters"),
            );
        }
        let allowed = |c: char| lines == Lines::Many && matches!(c, '\n' | '\t');
        if let Some(bad) = value.chars().find(|c| c.is_control() && !allowed(*c)) {
            self.push(
                path,
                ViolationCode::InvalidCharacters,
                format!("control character {bad:?} is not allowed"),
            );
        }
    }

    /// Opaque text such as a device id or an IP address: required, at most `max` bytes, no
    /// control characters.
    pub(crate) fn key_text(&mut self, path: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.push(path, ViolationCode::Required, "must not be empty");
        } else if value.len() > max {
            self.push(
                path,
                ViolationCode::TooLong,
                format!("longer than {max} bytes"),
            );
        } else if value.chars().any(char::is_control) {
            self.push(
                path,
                ViolationCode::InvalidCharacters,
                "control characters are not allowed",
            );
        }
    }

    /// A list of at most `max` items; `false` (and a violation) when it is longer.
    pub(crate) fn list_len(&mut self, path: &str, len: usize, max: usize) -> bool {
        if len > max {
            self.push(
                path,
                ViolationCode::TooLong,
                format!("{len} items; at most {max}"),
            );
            return false;
        }
        true
    }

    /// A time between 1970 and the end of year 9999 (what RFC 3339 can write).
    pub(crate) fn time(&mut self, path: &str, t: Timestamp) {
        if !(0..=MAX_TIMESTAMP_MS).contains(&t.as_millis()) {
            self.push(
                path,
                ViolationCode::InvalidTimestamp,
                "must be between 1970 and the end of year 9999",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(f: impl FnOnce(&mut Check)) -> Vec<ViolationCode> {
        let mut c = Check::new();
        f(&mut c);
        c.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.code)
            .collect()
    }

    #[test]
    fn dotted_names() {
        for ok in [
            "rg.loss_chasing",
            "fraud.multi_accounting.shared_device",
            "a1.b_2",
        ] {
            assert_eq!(codes(|c| c.dotted_name("k", ok, 2)), vec![], "{ok}");
        }
        assert_eq!(codes(|c| c.dotted_name("k", "net_loss", 1)), vec![]);
        for bad in ["Rg.x", "1rg.x", "rg..x", "rg.x.", ".rg", "rg.x-y", "rg x"] {
            assert_eq!(
                codes(|c| c.dotted_name("k", bad, 1)),
                vec![ViolationCode::InvalidCharacters],
                "{bad}"
            );
        }
        assert_eq!(
            codes(|c| c.dotted_name("k", "loss_chasing", 2)),
            vec![ViolationCode::InvalidValue]
        );
        assert_eq!(
            codes(|c| c.dotted_name("k", "", 1)),
            vec![ViolationCode::Required]
        );
        let long = format!("a.{}", "b".repeat(MAX_NAME));
        assert_eq!(
            codes(|c| c.dotted_name("k", &long, 1)),
            vec![ViolationCode::TooLong]
        );
    }

    #[test]
    fn text_counts_characters_and_refuses_control_characters() {
        // 100 Cyrillic letters are 200 bytes: still within a 100-character limit.
        let cyrillic = "ж".repeat(100);
        assert_eq!(
            codes(|c| c.text("t", &cyrillic, 100, Lines::One, true)),
            vec![]
        );
        assert_eq!(
            codes(|c| c.text("t", &format!("{cyrillic}ж"), 100, Lines::One, true)),
            vec![ViolationCode::TooLong]
        );
        assert_eq!(
            codes(|c| c.text("t", "a\nb", 100, Lines::One, true)),
            vec![ViolationCode::InvalidCharacters]
        );
        assert_eq!(
            codes(|c| c.text("t", "a\n\tb", 100, Lines::Many, true)),
            vec![]
        );
        assert_eq!(
            codes(|c| c.text("t", "a\u{7}b", 100, Lines::Many, true)),
            vec![ViolationCode::InvalidCharacters]
        );
        assert_eq!(
            codes(|c| c.text("t", "  ", 100, Lines::Many, false)),
            vec![ViolationCode::Required]
        );
        assert_eq!(codes(|c| c.text("t", "", 100, Lines::Many, false)), vec![]);
        assert_eq!(
            codes(|c| c.text("t", "", 100, Lines::Many, true)),
            vec![ViolationCode::Required]
        );
    }

    #[test]
    fn times_lists_and_key_text() {
        assert_eq!(
            codes(|c| c.time("t", Timestamp::from_millis(-1))),
            vec![ViolationCode::InvalidTimestamp]
        );
        assert_eq!(
            codes(|c| c.time("t", Timestamp::from_millis(MAX_TIMESTAMP_MS + 1))),
            vec![ViolationCode::InvalidTimestamp]
        );
        assert_eq!(
            codes(|c| c.time("t", Timestamp::from_millis(MAX_TIMESTAMP_MS))),
            vec![]
        );
        assert_eq!(
            codes(|c| {
                c.list_len("l", 3, 2);
            }),
            vec![ViolationCode::TooLong]
        );
        assert_eq!(codes(|c| c.key_text("k", "2001:db8::1", 256)), vec![]);
        assert_eq!(
            codes(|c| c.key_text("k", "a\u{0}", 256)),
            vec![ViolationCode::InvalidCharacters]
        );
    }
}
