//! The units of the command line: durations (`1m30s`), sizes (`512k`), and
//! `0` as "off" for a timer. Plain functions over strings and numbers.
//!
//! Imports nothing of the crate.

use std::time::Duration;

/// `1.5s`, `250ms`, `2m`, `1h`, `1m30s`, or a bare number of seconds (`0`
/// turns a timer off). Not humantime: it refuses bare numbers, which these
/// flags have always taken (`--idle-timeout 0`), and twenty lines do the rest.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let invalid = || format!("invalid duration {s:?} (try 10s, 250ms, 1m30s)");
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| invalid())?;
        total += n * match unit {
            "ms" => 0.001,
            // A bare number is seconds, but only alone: `1m30` is a typo.
            "" if rest.len() == s.len() => 1.0,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration unit in {s:?} (use ms, s, m or h)"
                ));
            }
        };
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// A byte count given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) usize);

/// `1048576`, `512k`, `10m`, `1g` (also `kb`/`kib`, any case): binary units, as
/// nginx's `client_max_body_size` reads them.
pub(crate) fn parse_size(s: &str) -> Result<Size, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (try 1048576, 512k, 10m, 1g)"))?;
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("invalid size unit in {s:?} (use k, m or g)")),
    };
    n.checked_mul(1usize << shift)
        .map(Size)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `0` turns a timer off.
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h5m"), Ok(Duration::from_secs(3900)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("1m30").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(Size(1 << 20)));
        assert_eq!(parse_size("512k"), Ok(Size(512 << 10)));
        assert_eq!(parse_size("10MB"), Ok(Size(10 << 20)));
        assert_eq!(parse_size("1GiB"), Ok(Size(1 << 30)));
        assert_eq!(parse_size("0"), Ok(Size(0)));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("10q").is_err());
        assert!(parse_size("-1").is_err());
    }
}
