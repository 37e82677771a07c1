//! Wall-clock timestamps as the contract wants them: RFC 3339, UTC, millisecond
//! precision, always with a zone (`2026-11-28T03:27:46.123Z`). Go clients decode
//! these into `time.Time`, so a naive or empty timestamp would be fatal to them.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The wall clock, as seen through tokio's clock: in production the two
    /// agree, and under a paused tokio clock (the policy tests) timestamps
    /// advance with the simulated time, so grace periods and cooldowns that
    /// compare timestamps can be tested in milliseconds of wall time.
    pub fn now() -> Self {
        let wall = Utc::now().timestamp_millis();
        let (tokio_now, std_now) = (
            tokio::time::Instant::now().into_std(),
            std::time::Instant::now(),
        );
        // Zero unless a paused clock was advanced (or froze while real time went on).
        let skew = match tokio_now.checked_duration_since(std_now) {
            Some(ahead) => ahead.as_millis() as i64,
            None => -(std_now.duration_since(tokio_now).as_millis() as i64),
        };
        // Truncate to milliseconds so that what we serve, store and reload compare equal.
        Self::from_millis(wall + skew)
    }

    pub fn from_millis(ms: i64) -> Self {
        Self(DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH))
    }

    pub fn millis(self) -> i64 {
        self.0.timestamp_millis()
    }

    /// Seconds elapsed from `self` to `later` (negative when `later` is earlier).
    pub fn seconds_until(self, later: Timestamp) -> f64 {
        (later.millis() - self.millis()) as f64 / 1000.0
    }

    pub fn plus_seconds(self, seconds: f64) -> Self {
        Self::from_millis(self.millis() + (seconds * 1000.0) as i64)
    }

    pub fn parse(text: &str) -> Result<Self, chrono::ParseError> {
        let parsed = DateTime::parse_from_rfc3339(text)?;
        Ok(Self::from_millis(
            parsed.with_timezone(&Utc).timestamp_millis(),
        ))
    }
}

impl fmt::Display for Timestamp {
    /// `2026-11-28T03:27:46.123Z`, written from the date's fields into a
    /// buffer on the stack: `GET /engines` writes five timestamps per engine,
    /// and chrono's general formatter allocated a string for each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use chrono::{Datelike, Timelike};
        let year = self.0.year();
        if !(0..=9999).contains(&year) {
            return f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, self.0.month());
        put(8, 2, self.0.day());
        put(11, 2, self.0.hour());
        put(14, 2, self.0.minute());
        put(17, 2, self.0.second());
        // A leap second shows as nanoseconds past 1e9; RFC 3339 has no room for it.
        put(20, 3, (self.0.nanosecond() / 1_000_000).min(999));
        // Only ASCII digits and separators were written.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// In the OpenAPI document: a string in `date-time` format.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "RFC 3339, UTC, millisecond precision, e.g. `2026-11-28T03:27:46.123Z`.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{text}' is not an RFC 3339 timestamp with an offset: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_millis_and_zulu() {
        let ts = Timestamp::from_millis(1_795_836_466_123);
        assert_eq!(ts.to_string(), "2026-11-28T03:27:46.123Z");
        assert_eq!(
            serde_json::to_string(&ts).unwrap(),
            "\"2026-11-28T03:27:46.123Z\""
        );
    }

    #[test]
    fn the_fast_format_agrees_with_chrono() {
        // Epoch, leap day, end of a year, millisecond 0 and 999, year 9999.
        for ms in [
            0,
            951_782_400_000,
            1_709_164_800_007,
            1_798_761_599_999,
            253_402_300_799_999,
            -1,
        ] {
            let ts = Timestamp::from_millis(ms);
            assert_eq!(
                ts.to_string(),
                ts.0.to_rfc3339_opts(SecondsFormat::Millis, true),
                "{ms}"
            );
        }
    }

    #[test]
    fn parses_offsets_and_rejects_naive_times() {
        let ts = Timestamp::parse("2026-11-28T04:27:46.123+01:00").unwrap();
        assert_eq!(ts.to_string(), "2026-11-28T03:27:46.123Z");
        assert!(Timestamp::parse("2026-11-28T03:27:46").is_err());
        assert!(Timestamp::parse("").is_err());
    }
}
