//! Sizes (`20G`, `512M`) and durations (`7 days`, `12h`) as job and lab files write them.

use std::time::Duration;

/// Parses a size: a number with an optional binary suffix `K`, `M`, `G`, `T` (optionally followed
/// by `i`/`iB`/`B`); no suffix means bytes.
///
/// ```
/// use citron_core::units::parse_size;
/// assert_eq!(parse_size("512M"), Ok(512 << 20));
/// assert_eq!(parse_size("20GiB"), Ok(20 << 30));
/// assert!(parse_size("12 parsecs").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size; write a number with K, M, G or T, like 20G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KI" | "KIB" => 10,
        "M" | "MB" | "MI" | "MIB" => 20,
        "G" | "GB" | "GI" | "GIB" => 30,
        "T" | "TB" | "TI" | "TIB" => 40,
        _ => return Err(format!("{s:?} has an unknown size unit; use K, M, G or T (like 20G)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a duration: `30s`, `15m`, `12h`, `7d`, `7 days`, `2 weeks`, or several (`1h 30m`).
///
/// ```
/// use citron_core::units::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("7 days"), Ok(Duration::from_secs(7 * 86400)));
/// assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration; write a number with a unit, like 30s, 12h or 7 days");
    let mut total = 0u64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let secs = match unit.to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            "w" | "week" | "weeks" => 7 * 86400,
            _ => return Err(bad()),
        };
        total = n.checked_mul(secs).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    Ok(Duration::from_secs(total))
}
