//! Go-style durations (`168h`, `1h30m`, `2s`, `500ms`), as Kubernetes users write them.

use std::time::Duration;

/// Parses a Go duration; negative and empty durations are errors.
pub fn parse(input: &str) -> Result<Duration, String> {
    if input.is_empty() {
        return Err("is empty (use a Go duration such as 2s, 30m or 168h)".into());
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{input:?} is not a duration (use a Go duration such as 2s, 30m or 168h)");
    let mut total = Duration::ZERO;
    let mut rest = input;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(Duration::try_from_secs_f64(value * seconds).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        rest = after;
    }
    Ok(total)
}

/// A duration as a Go duration in its largest whole unit (`168h`, `90m`, `45s`).
pub fn show(d: Duration) -> String {
    let secs = d.as_secs();
    if (secs >= 3600 && secs.is_multiple_of(3600)) || secs >= 36000 {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("168h"), Ok(Duration::from_secs(168 * 3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "1", "h", "-1s", "1d", "1h-2m", "1..5s", "2 s"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
