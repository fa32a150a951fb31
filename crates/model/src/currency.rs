//! ISO 4217 alphabetic currency codes in current use (funds and precious-metal codes included,
//! the testing code XTS and "no currency" XXX excluded).

/// Sorted list of accepted ISO 4217 codes.
pub const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE",
    "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
    "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK",
    "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
    "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON",
    "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD",
    "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV",
    "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD",
    "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG",
];

/// Whether `code` is an ISO 4217 code in current use (exact, upper case).
pub fn is_iso4217(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
}

/// Digits after the decimal point of the currency's minor unit (its ISO 4217 exponent): how
/// many minor units make one major unit (`amount_minor` 12345 of EUR is 123.45, of JPY 12345,
/// of BHD 12.345, of CLF 1.2345). Codes without a minor unit (precious metals, units of
/// account) count whole units: 0. Codes outside ISO 4217 (a tenant's extra currencies): 2.
pub fn minor_unit_digits(code: &str) -> u32 {
    match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        // No minor unit in ISO 4217 ("N.A."): gold, silver, palladium, platinum, SDR, bond
        // market units, Sucre, ADB unit.
        "XAU" | "XAG" | "XPD" | "XPT" | "XDR" | "XBA" | "XBB" | "XBC" | "XBD" | "XSU" | "XUA" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_and_unique() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn lookups() {
        assert!(is_iso4217("EUR"));
        assert!(is_iso4217("JPY"));
        assert!(!is_iso4217("eur"));
        assert!(!is_iso4217("XXX"));
        assert!(!is_iso4217("BTC"));
        assert!(!is_iso4217(""));
    }
}
