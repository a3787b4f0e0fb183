//! Sizes (`20G`, `512M`) and durations (`7 days`, `12h`) as job and lab files write them.

use std::time::Duration;

/// Parses a size: a number with an optional binary suffix `K`, `M`, `G`, `T` (optionally followed
/// by `i`/`iB`/`B`); no suffix means bytes.
///
/// Hand-written, not `bytesize`: bytesize reads `K`, `M`, `G` and `KB`, `MB`, `GB` as powers of
/// 1000 (only `Ki`, `Mi`, ... as powers of 1024) and accepts fractions (`1.5G`), while a job's
/// `size: 20G` has always meant 20 GiB, as for qemu-img and dd: the same files would silently
/// give smaller disks.
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

/// Parses a duration: `30s`, `15m`, `12h`, `7d`, `7 days`, `2 weeks`, or several (`1h 30m`),
/// with humantime (which also takes `500ms` and `1.5h`); units in any case.
///
/// ```
/// use citron_core::units::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("7 days"), Ok(Duration::from_secs(7 * 86400)));
/// assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // humantime's units are case-sensitive and its `M` is a month; job files have always taken
    // `12H` and `15M` as hours and minutes, so the text is lower-cased first (a month is then
    // spelt `month`).
    humantime::parse_duration(&s.trim().to_ascii_lowercase())
        .map_err(|_| format!("{s:?} is not a duration; write a number with a unit, like 30s, 12h or 7 days"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_meaning() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("15M"), Ok(15 * 60), "M is minutes, not months");
        assert_eq!(secs("12H"), Ok(12 * 3600));
        assert_eq!(secs("2 weeks"), Ok(14 * 86400));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("  7 days "), Ok(7 * 86400));
        for bad in ["", "5", "soon", "-1h", "99999999999999999999s", "h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
