//! Durations as people write them on the command line and in the config.

use std::time::Duration;

/// A duration that must not be zero: `--timeout 0` would kill every test
/// as it starts.
pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("`{text}` is no time at all: every test would be killed as it starts")),
        duration => Ok(duration),
    }
}

/// Parses `120s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration (examples: 90s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use ms, s, m or h)")),
    };
    if seconds.is_nan() || seconds > LONGEST.as_secs_f64() {
        return Err(format!("`{text}` is longer than the longest wait we keep (365 days)"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// The longest duration accepted: deadlines are instants, and an instant
/// that far ahead cannot be represented (it panicked: exit 101, a test left
/// spinning).
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("0ms").is_err());
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("365d").map_err(|e| e.contains("unit")), Err(true));
        assert!(parse_duration("18000000000000000000s").unwrap_err().contains("longest"));
        assert!(parse_duration("1e400").is_err());
        assert_eq!(parse_duration("8760h"), Ok(Duration::from_secs(365 * 24 * 3600)));
    }
}
