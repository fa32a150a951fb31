//! `[money]`: the currency a rule set's money values are written in, and what the other
//! currencies its tenants take are worth in it (docs/rules.md, "Money in several currencies").
//!
//! Money stays in the event's currency everywhere it is kept and shown — windows add it up
//! within the trigger's currency, alerts and pushes give it with that currency — and only a
//! value a rule writes (a condition's `value` on a money measure, a filter's number for a money
//! field) is converted: into minor units of the event's currency, rounded to a whole one.

use std::collections::{BTreeMap, HashMap};

use pitboss_model::currency::minor_unit_digits;
use pitboss_model::live::Comparison;

/// The set's money: with no `[money]` table, every value is in minor units of the event's own
/// currency (a rule's 10000 is 100.00 EUR for a EUR event and 10,000 yen for a JPY one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Money {
    /// The currency values are written in; `None` without a `[money]` table.
    currency: Option<String>,
    /// Per currency with a rate (and the set's own): how many minor units of `currency` one
    /// minor unit of it is worth.
    scales: HashMap<String, f64>,
    /// The rates as written, for `pitboss rules check`.
    rates: BTreeMap<String, f64>,
}

/// What a value written in a rule is, for one event's currency.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Scale {
    /// Written in the event's currency (no `[money]`, or the event is in the set's currency):
    /// compared as written.
    #[default]
    Same,
    /// Minor units of the event's currency one minor unit of the set's currency is worth
    /// (`1 / scale`, kept as the divisor that gives it).
    By(f64),
    /// The event's currency has no rate: compared as written, and counted
    /// ([`crate::Output::unpriced`]).
    Unpriced,
}

/// A currency code as events carry them: upper-case letters and digits (ISO 4217, or one a
/// tenant is allowed besides, `extra_currencies`: docs/events.md).
fn code_ok(code: &str) -> bool {
    (3..=16).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn code_error(code: &str, what: &str) -> String {
    if code.bytes().any(|b| b.is_ascii_lowercase()) {
        format!(
            "{what} {code:?}: currency codes are in upper case, as events carry them ({:?})",
            code.to_ascii_uppercase()
        )
    } else {
        format!(
            "{what} {code:?} is not a currency code (ISO 4217 such as \"EUR\", or upper-case \
             letters and digits, 3 to 16 of them, for one a tenant is allowed besides)"
        )
    }
}

impl Money {
    /// Checks a `[money]` table: the error names what is wrong and says whether it is in
    /// `rates` (the caller points at that line) or in `currency`.
    pub fn new(currency: &str, rates: &BTreeMap<String, f64>) -> Result<Money, (bool, String)> {
        if !code_ok(currency) {
            return Err((false, code_error(currency, "[money] currency")));
        }
        let digits = |c: &str| minor_unit_digits(c) as i32;
        let mut scales = HashMap::with_capacity(rates.len() + 1);
        scales.insert(currency.to_owned(), 1.0);
        for (code, &rate) in rates {
            if !code_ok(code) {
                return Err((true, code_error(code, "[money] rates:")));
            }
            if code == currency {
                if rate != 1.0 {
                    return Err((
                        true,
                        format!(
                            "[money] rates: {code} is the set's own currency, worth 1 of itself, \
                             not {rate} (leave it out)"
                        ),
                    ));
                }
                continue;
            }
            if !(rate.is_finite() && rate > 0.0) {
                return Err((
                    true,
                    format!(
                        "[money] rates: {code} = {rate}: a rate is what one {code} is worth in \
                         {currency}, a number above 0"
                    ),
                ));
            }
            // One minor unit of `code` in minor units of `currency`.
            let scale = rate * 10f64.powi(digits(currency) - digits(code));
            if !(scale.is_finite() && scale > 0.0) {
                return Err((
                    true,
                    format!("[money] rates: {code} = {rate} is out of range"),
                ));
            }
            scales.insert(code.clone(), scale);
        }
        Ok(Money {
            currency: Some(currency.to_owned()),
            scales,
            rates: rates
                .iter()
                .filter(|(c, _)| *c != currency)
                .map(|(c, r)| (c.clone(), *r))
                .collect(),
        })
    }

    /// Whether the set has a `[money]` table.
    pub fn is_set(&self) -> bool {
        self.currency.is_some()
    }

    /// The set's currency (`[money] currency`).
    pub fn currency(&self) -> Option<&str> {
        self.currency.as_deref()
    }

    /// The rates as written (the set's own currency left out).
    pub fn rates(&self) -> &BTreeMap<String, f64> {
        &self.rates
    }

    /// What a value written in a rule is for an event in `currency`.
    #[inline]
    pub fn scale(&self, currency: Option<&str>) -> Scale {
        let (Some(own), Some(c)) = (&self.currency, currency) else {
            return Scale::Same;
        };
        if c == own {
            return Scale::Same;
        }
        match self.scales.get(c) {
            Some(&s) => Scale::By(s),
            None => Scale::Unpriced,
        }
    }
}

impl Scale {
    /// A value written in a rule as compared with a measure that is not a whole amount (an
    /// `avg`, a `median`, a `stddev` of money): converted, not rounded.
    #[inline]
    pub fn converted(self, value: f64) -> f64 {
        match self {
            Scale::By(s) => value / s,
            _ => value,
        }
    }

    /// A value written in a rule (minor units of the set's currency) as compared with an
    /// event's money under `cmp`: converted into minor units of the event's currency and
    /// rounded to a whole one on the side that leaves the comparison of a whole amount as the
    /// exact one (up for `gte` and `lt`, down for `gt` and `lte`, to the nearest for `eq`).
    #[inline]
    pub fn threshold(self, value: f64, cmp: Comparison) -> f64 {
        let Scale::By(s) = self else {
            return value;
        };
        let v = value / s;
        // What a rate's binary fraction leaves (10000 / 0.1 = 99999.99999999999) is not a
        // fraction of a minor unit: a few units in the last place of the quotient.
        let near = v.round();
        if (v - near).abs() <= 4.0 * f64::EPSILON * v.abs() {
            return near;
        }
        match cmp {
            Comparison::Gte | Comparison::Lt => v.ceil(),
            Comparison::Gt | Comparison::Lte => v.floor(),
            Comparison::Eq => near,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn money(currency: &str, rates: &[(&str, f64)]) -> Result<Money, (bool, String)> {
        let rates = rates.iter().map(|(c, r)| (c.to_string(), *r)).collect();
        Money::new(currency, &rates)
    }

    #[test]
    fn a_value_is_converted_into_the_events_minor_units_and_rounded_to_a_whole_one() {
        let m = money("EUR", &[("USD", 0.92), ("JPY", 0.0061), ("BHD", 2.44)]).unwrap();
        assert_eq!(m.scale(Some("EUR")), Scale::Same);
        assert_eq!(m.scale(None), Scale::Same);
        assert_eq!(m.scale(Some("GBP")), Scale::Unpriced);
        // 100.00 EUR = 16,393.44 yen: a stake of 16,394 yen is at least that, 16,393 is not.
        let jpy = m.scale(Some("JPY"));
        assert_eq!(jpy.threshold(10_000.0, Comparison::Gte), 16_394.0);
        assert_eq!(jpy.threshold(10_000.0, Comparison::Gt), 16_393.0);
        assert_eq!(jpy.threshold(10_000.0, Comparison::Lt), 16_394.0);
        assert_eq!(jpy.threshold(10_000.0, Comparison::Lte), 16_393.0);
        assert_eq!(jpy.threshold(10_000.0, Comparison::Eq), 16_393.0);
        // 100.00 EUR = 108.70 USD (cents to cents).
        let usd = m.scale(Some("USD"));
        assert_eq!(usd.threshold(10_000.0, Comparison::Gte), 10_870.0);
        // Three decimals: 100.00 EUR = 40.984 BHD.
        assert_eq!(
            m.scale(Some("BHD")).threshold(10_000.0, Comparison::Gte),
            40_984.0
        );
        // A rate whose binary fraction is not exact still gives the whole amount it names.
        let m = money("EUR", &[("SEK", 0.1)]).unwrap();
        let sek = m.scale(Some("SEK"));
        assert_eq!(sek.threshold(10_000.0, Comparison::Gt), 100_000.0);
        assert_eq!(sek.threshold(10_000.0, Comparison::Gte), 100_000.0);
        // Unrounded for a measure that is not a whole amount.
        assert_eq!(jpy.converted(10_000.0), 10_000.0 / 0.61);
        assert_eq!(Scale::Same.converted(10_000.5), 10_000.5);
        // Large amounts (rupiah, dong) keep their side of the comparison.
        let m = money("EUR", &[("IDR", 0.000_057)]).unwrap();
        let idr = m.scale(Some("IDR"));
        let v: f64 = 1_000_000_000.0 / 0.000_057;
        assert_eq!(idr.threshold(1_000_000_000.0, Comparison::Gte), v.ceil());
        assert_eq!(idr.threshold(1_000_000_000.0, Comparison::Gt), v.floor());
        // Not converted: as written.
        assert_eq!(Scale::Same.threshold(10_000.5, Comparison::Gte), 10_000.5);
        assert_eq!(
            Scale::Unpriced.threshold(10_000.0, Comparison::Gte),
            10_000.0
        );
        // Without a table, every currency is its own.
        assert_eq!(Money::default().scale(Some("JPY")), Scale::Same);
    }

    #[test]
    fn a_table_that_cannot_be_meant_is_refused_saying_why() {
        let refused = |c: &str, rates: &[(&str, f64)], want: &str| {
            let (_, e) = money(c, rates).unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        refused("eur", &[], "upper case");
        refused("EURO-1", &[], "not a currency code");
        refused("EUR", &[("usd", 0.9)], "upper case");
        refused("EUR", &[("USD", 0.0)], "a number above 0");
        refused("EUR", &[("USD", -1.0)], "a number above 0");
        refused("EUR", &[("USD", f64::NAN)], "a number above 0");
        refused("EUR", &[("EUR", 2.0)], "worth 1 of itself");
        refused("EUR", &[("JPY", 1e307)], "out of range");
        assert!(money("EUR", &[("EUR", 1.0)]).unwrap().rates().is_empty());
        // A tenant's own currency (extra_currencies) may have a rate, or be the set's.
        assert!(money("EUR", &[("USDT", 0.92)]).is_ok());
        assert!(money("USDT", &[]).is_ok());
    }
}
