//! What a ClickHouse error means for the call that failed, read from the exception code in the
//! server's answer: try again later (network, overload), split the batch (the server refused
//! values of some rows), or stop (the statement does not fit the server's schema).
//!
//! Vector's ClickHouse sink retries every answer except `INCORRECT_DATA` (117) and
//! `TYPE_MISMATCH` (53). We sort the codes further, because a refused batch is split here
//! rather than dropped: values a column or a view cannot take are data errors (a split finds
//! the rows), and a missing table or column, a type mismatch of the whole insert, or missing
//! grants are schema errors (no split can help). Every other code, and an answer without
//! one (a proxy's 502 page, a dropped connection, a timeout), is worth a retry: overload
//! (`TOO_MANY_PARTS`, `TOO_MANY_SIMULTANEOUS_QUERIES`, `MEMORY_LIMIT_EXCEEDED`), network
//! (`SOCKET_TIMEOUT`, `NETWORK_ERROR`) and replication troubles (`NO_ZOOKEEPER`,
//! `TABLE_IS_READ_ONLY`, `TOO_FEW_LIVE_REPLICAS`) pass.

use clickhouse::error::Error;

/// What can help after a ClickHouse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The same call may succeed later: unreachable, overloaded or busy server, or an answer
    /// without an exception code.
    Transient,
    /// The server refused values of the rows: the same rows fail again, other rows may land.
    Data,
    /// The statement does not fit the server's schema, settings or grants, or the client's
    /// rows do not fit the answer: nothing changes until someone changes them.
    Schema,
}

/// Values the server refused: a conversion, a parse, a length, a range, a constraint or a
/// `throwIf` failed on some row (in a column's expression, a materialized view, or the
/// input itself).
const DATA: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    19,  // SIZE_OF_FIXED_STRING_DOESNT_MATCH
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    153, // ILLEGAL_DIVISION
    190, // SIZES_OF_ARRAYS_DOESNT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376, // CANNOT_PARSE_UUID
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    407, // DECIMAL_OVERFLOW
    441, // CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
    467, // CANNOT_PARSE_BOOL
    469, // VIOLATED_CONSTRAINT
    691, // UNKNOWN_ELEMENT_OF_ENUM
];

/// The statement cannot work as the server stands. `LOGICAL_ERROR` is a server bug: a human
/// looks at it (18.16 reports an unknown `Enum` element in a `CAST` so; current releases say
/// `UNKNOWN_ELEMENT_OF_ENUM`, a data error).
const SCHEMA: &[u32] = &[
    1,   // UNSUPPORTED_METHOD
    2,   // UNSUPPORTED_PARAMETER
    7,   // INCORRECT_NUMBER_OF_COLUMNS
    8,   // THERE_IS_NO_COLUMN
    10,  // NOT_FOUND_COLUMN_IN_BLOCK
    16,  // NO_SUCH_COLUMN_IN_TABLE
    20,  // NUMBER_OF_COLUMNS_DOESNT_MATCH
    36,  // BAD_ARGUMENTS
    43,  // ILLEGAL_TYPE_OF_ARGUMENT
    44,  // ILLEGAL_COLUMN
    46,  // UNKNOWN_FUNCTION
    47,  // UNKNOWN_IDENTIFIER
    48,  // NOT_IMPLEMENTED
    49,  // LOGICAL_ERROR
    50,  // UNKNOWN_TYPE
    53,  // TYPE_MISMATCH
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    73,  // UNKNOWN_FORMAT
    81,  // UNKNOWN_DATABASE
    115, // UNKNOWN_SETTING
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    291, // DATABASE_ACCESS_DENIED
    386, // NO_COMMON_TYPE
    452, // SETTING_CONSTRAINT_VIOLATION
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// The exception code at the start of a ClickHouse answer: `Code: 60, e.displayText() = …`
/// (18.16), `Code: 60. DB::Exception: …` (current releases), or just `Code: 60` — what the
/// `clickhouse` crate reports when the body was empty and the code came in the
/// `X-ClickHouse-Exception-Code` header.
pub fn exception_code(answer: &str) -> Option<u32> {
    let rest = answer.trim_start().strip_prefix("Code:")?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The class of a ClickHouse exception code.
pub fn class_of_code(code: u32) -> Class {
    if DATA.contains(&code) {
        Class::Data
    } else if SCHEMA.contains(&code) {
        Class::Schema
    } else {
        Class::Transient
    }
}

/// The class of an error of the `clickhouse` crate. Network errors, timeouts and answers
/// without a code are transient; the client's own failures (parameters, serialization, a row
/// type that does not fit the answer) are schema errors.
pub fn classify(error: &Error) -> Class {
    match error {
        Error::BadResponse(answer) => {
            exception_code(answer).map_or(Class::Transient, class_of_code)
        }
        Error::Network(_) | Error::TimedOut | Error::Decompression(_) | Error::Other(_) => {
            Class::Transient
        }
        _ => Class::Schema,
    }
}

/// The server's own words where there are some (the answer), else the client's.
/// `error` and what caused it, each once: a refused TLS certificate or a reset connection
/// says so, where the crate's own message stops at "client error (Connect)".
pub fn with_causes(error: &Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

pub fn reason(error: &Error) -> String {
    match error {
        Error::BadResponse(answer) => answer.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Class {
        classify(&Error::BadResponse(text.to_owned()))
    }

    #[test]
    fn codes_are_read_in_both_formats_and_from_the_header() {
        assert_eq!(
            exception_code(
                "Code: 60, e.displayText() = DB::Exception: Table pitboss.events doesn't exist., e.what() = DB::Exception"
            ),
            Some(60)
        );
        assert_eq!(
            exception_code(
                "Code: 159. DB::Exception: Timeout exceeded: elapsed 1.2 seconds, maximum: 0.1. (TIMEOUT_EXCEEDED) (version 24.10.1.2812 (official build))"
            ),
            Some(159)
        );
        assert_eq!(exception_code("Code: 241"), Some(241));
        assert_eq!(exception_code("  Code: 33\n"), Some(33));
        assert_eq!(exception_code("502 Bad Gateway"), None);
        assert_eq!(exception_code("<html><body>Code: 1</body></html>"), None);
        assert_eq!(exception_code("Code: x"), None);
    }

    // The answers below are real: ClickHouse 18.16 over HTTP (the test server; the
    // `clickhouse` crate hands the body over trimmed), current ClickHouse (chDB 26.9, which
    // leaves out the "(version …)" a server appends), and the two the crate's own tests quote.

    #[test]
    fn refused_values_are_data_errors() {
        for text in [
            // 18.16: a MATERIALIZED toFixedString(currency, 3) column; the same through a
            // materialized view; a Decimal; a number parsed from text; throwIf; RowBinary
            // that ends inside a row.
            "Code: 131, e.displayText() = DB::Exception: String too long for type FixedString(3), e.what() = DB::Exception",
            "Code: 131, e.displayText() = DB::Exception: String too long for type FixedString(3): while pushing to view gwpoison_scratch.mv, e.what() = DB::Exception",
            "Code: 407, e.displayText() = DB::Exception: Decimal convert overflow, e.what() = DB::Exception",
            "Code: 6, e.displayText() = DB::Exception: Cannot parse string 'abc' as UInt8: syntax error at begin of string. Note: there are toUInt8OrZero and toUInt8OrNull functions, which returns zero/NULL instead of throwing exception., e.what() = DB::Exception",
            "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception",
            "Code: 33, e.displayText() = DB::Exception: Cannot read all data. Bytes read: 2. Bytes expected: 8.: (at row 2)",
            // Current: the same column; an Enum cast; a CHECK constraint.
            "Code: 131. DB::Exception: String too long for type FixedString(3): while executing 'FUNCTION toFixedString(c :: 1, 3_UInt8 :: 2) -> toFixedString(c, 3_UInt8) FixedString(3) : 5'. (TOO_LARGE_STRING_SIZE)",
            "Code: 691. DB::Exception: Unknown element 'XYZ' for enum: while executing 'FUNCTION CAST(c :: 1, 'Enum8(\\'EUR\\' = 1, \\'USD\\' = 2)'_String : 2) -> CAST(c, 'Enum8(\\'EUR\\' = 1, \\'USD\\' = 2)'_String) Enum8('EUR' = 1, 'USD' = 2) : 4'. (UNKNOWN_ELEMENT_OF_ENUM)",
            "Code: 469. DB::Exception: Constraint `iso` for table d.k (6f457156-69f0-495e-8bc0-fd63b5faae40) is violated at row 2. Expression: (length(c) = 3). Column values: c = 'EURO'. (VIOLATED_CONSTRAINT)",
        ] {
            assert_eq!(answer(text), Class::Data, "{text}");
        }
    }

    #[test]
    fn what_no_split_can_fix_is_a_schema_error() {
        for text in [
            // 18.16.
            "Code: 60, e.displayText() = DB::Exception: Table gwpoison_scratch.nope doesn't exist., e.what() = DB::Exception",
            "Code: 16, e.displayText() = DB::Exception: No such column nope in table parts, e.what() = DB::Exception",
            "Code: 53, e.displayText() = DB::Exception: Type mismatch in IN or VALUES section. Expected: UInt8. Got: String, e.what() = DB::Exception",
            "Code: 81, e.displayText() = DB::Exception: Database nodb_gw doesn't exist, e.what() = DB::Exception",
            "Code: 164, e.displayText() = DB::Exception: Cannot insert into table in readonly mode, e.what() = DB::Exception",
            "Code: 192, e.displayText() = DB::Exception: Unknown user nobody, e.what() = DB::Exception",
            // 18.16 calls an unknown Enum element in a CAST a logical error (current: 691).
            "Code: 49, e.displayText() = DB::Exception: Unknown element 'XYZ' for type Enum8('EUR' = 1, 'USD' = 2), e.what() = DB::Exception",
            // Current.
            "Code: 60. DB::Exception: Unknown table expression identifier 'd.nope'. Maybe you meant system.one? In scope SELECT * FROM d.nope. (UNKNOWN_TABLE)",
            "Code: 16. DB::Exception: No such column nope in table d.t (935fcc87-e808-44b0-b54b-d22f5c9330d9). (NO_SUCH_COLUMN_IN_TABLE)",
            "Code: 53. DB::Exception: Cannot convert string 'a' to type UInt8. (TYPE_MISMATCH)",
            "Code: 81. DB::Exception: Database nodb does not exist. (UNKNOWN_DATABASE)",
        ] {
            assert_eq!(answer(text), Class::Schema, "{text}");
        }
        // The client's own: its row type does not fit the answer.
        assert_eq!(classify(&Error::NotEnoughData), Class::Schema);
        assert_eq!(
            classify(&Error::SchemaMismatch("events.amount_minor".into())),
            Class::Schema
        );
    }

    #[test]
    fn overload_network_and_answers_without_a_code_are_retried() {
        for text in [
            // 18.16.
            "Code: 252, e.displayText() = DB::Exception: Too many parts (1). Merges are processing significantly slower than inserts., e.what() = DB::Exception",
            "Code: 241, e.displayText() = DB::Exception: Memory limit (for query) exceeded: would use 2.00 MiB (attempt to allocate chunk of 4096 bytes), maximum: 976.56 KiB, e.what() = DB::Exception",
            // Current.
            "Code: 252. DB::Exception: Too many parts (1 with average size of 339.00 B) in table 'd.parts (978f35cf-93a2-4288-af1a-980c1dfca4d9)'. Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
            "Code: 241. DB::Exception: Query memory limit exceeded: would use 1.06 MiB (attempt to allocate chunk of 0.00 B), maximum: 976.56 KiB: While executing AggregatingTransform. (MEMORY_LIMIT_EXCEEDED)",
            "Code: 159. DB::Exception: Timeout exceeded: elapsed 1.2 seconds, maximum: 0.1. (TIMEOUT_EXCEEDED) (version 24.10.1.2812 (official build))",
            "Code: 210. DB::NetException: I/O error: Broken pipe, while writing to socket (127.0.0.1:9000 -> 127.0.0.1:54646). (NETWORK_ERROR) (version 23.8.8.20 (official build))",
            // An empty body: the code from the X-ClickHouse-Exception-Code header
            // (TOO_MANY_SIMULTANEOUS_QUERIES), or only the status, as the crate words them.
            "Code: 202",
            "502 Bad Gateway",
            // A proxy's page.
            "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>",
        ] {
            assert_eq!(answer(text), Class::Transient, "{text}");
        }
        assert_eq!(classify(&Error::TimedOut), Class::Transient);
        assert_eq!(
            classify(&Error::Network("connection refused".into())),
            Class::Transient
        );
    }

    #[test]
    fn the_reason_is_the_servers_answer() {
        let text = "Code: 60, e.displayText() = DB::Exception: Table x.events doesn't exist., e.what() = DB::Exception";
        assert_eq!(reason(&Error::BadResponse(text.into())), text);
        assert_eq!(reason(&Error::TimedOut), "timeout expired");
    }

    #[test]
    fn no_code_is_both_data_and_schema() {
        assert!(DATA.iter().all(|c| !SCHEMA.contains(c)));
    }
}
