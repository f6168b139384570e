//! Time as flow-archiver writes and reads it: milliseconds since the Unix epoch inside,
//! RFC 3339 (UTC, millisecond precision) in archives, records, reports and on the
//! command line. On the ground floor: imports nothing from the crate.

/// Milliseconds since the epoch as RFC 3339 with millisecond precision, UTC
/// (`2026-05-01T12:00:00.000Z`); a time chrono cannot represent prints as the number.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Parses RFC 3339 text (any offset) to milliseconds since the epoch; the error is
/// chrono's own description of what is wrong.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| e.to_string())
}

/// As [`parse_rfc3339_ms`], in microseconds (the index keeps times in microseconds,
/// as the Avro records do).
pub fn parse_rfc3339_us(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc_with_milliseconds_and_parse_back() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        let ms = 1_780_000_000_123;
        assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Ok(ms));
        assert_eq!(parse_rfc3339_us("1970-01-01T01:00:00.000001+01:00"), Ok(1));
        assert!(parse_rfc3339_ms("yesterday").is_err());
    }
}
