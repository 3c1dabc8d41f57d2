//! Sizes and durations as people type them on the command line: the one
//! parser of every size flag (`export --split`, `fetch --max-package-size`)
//! and of `export --expires-in`, with the rule docs/FORMAT.md section 10
//! documents. It reads text and returns numbers; it knows no flag's limits
//! beyond "more than zero" (callers add their own).

use std::time::Duration;

/// Parses a size: a whole number of bytes with an optional unit, case
/// insensitive, the trailing `B` optional. `K`, `M`, `G`, `T` are powers of
/// 1000 (`4G` = 4 000 000 000, which fits FAT32's 4 GiB - 1 byte); `Ki`,
/// `Mi`, `Gi`, `Ti` are powers of 1024. Zero and overflow are errors.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let not_a_size = || {
        format!(
            "{s:?} is not a size; write bytes with an optional unit: K, M, G, T are powers of 1000 \
             (650M, 4G), Ki, Mi, Gi, Ti powers of 1024 (2GiB); the B is optional"
        )
    };
    let n: u64 = num.parse().map_err(|_| not_a_size())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(not_a_size()),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large (more than {} bytes)", u64::MAX))?;
    if v == 0 {
        return Err(format!("{s:?}: the size must be at least 1 byte"));
    }
    Ok(v)
}

/// The shortest lifetime `--expires-in` takes.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Parses a bundle lifetime such as `30d`, `12h`, `90m` or `2w` (the units
/// of humantime; a year `y` is 365.25 days, a month `M` 30.44 days). A bare
/// number is refused with units that are allowed, and anything under
/// [`MIN_LIFETIME`] is refused.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let hint = "write a number with a unit: 30d, 12h, 90m or 2w (at least 1m; 1y is 365.25 days)";
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} has no unit; {hint}"));
    }
    let d = humantime::parse_duration(t).map_err(|_| format!("{s:?} is not a duration; {hint}"))?;
    if d < MIN_LIFETIME {
        return Err(format!("{s:?} is shorter than the minimum of 1m; {hint}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_documented_table() {
        let table: &[(&str, u64)] = &[
            ("1500", 1500),
            ("1500b", 1500),
            ("1500B", 1500),
            ("10K", 10_000),
            ("10k", 10_000),
            ("10KB", 10_000),
            ("10kb", 10_000),
            ("10Ki", 10_240),
            ("10KiB", 10_240),
            ("10kib", 10_240),
            ("650M", 650_000_000),
            ("650mb", 650_000_000),
            ("4G", 4_000_000_000),
            ("4gb", 4_000_000_000),
            ("1GB", 1_000_000_000),
            ("1GiB", 1 << 30),
            ("4GiB", 4 << 30),
            ("2Mi", 2 << 20),
            ("1T", 1_000_000_000_000),
            ("1TiB", 1 << 40),
            (" 7 ", 7),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_with_the_rule() {
        for bad in [
            "",
            "G",
            "4X",
            "4 GiBs",
            "-1",
            "1.5G",
            "0",
            "0K",
            "99999999999T",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(
                e.contains("powers of 1000")
                    || e.contains("at least 1 byte")
                    || e.contains("too large"),
                "{bad:?}: {e}"
            );
        }
        assert!(parse_size("4X").unwrap_err().contains("powers of 1024"));
    }

    #[test]
    fn lifetimes_need_a_unit_and_a_minute() {
        assert_eq!(parse_lifetime("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_lifetime("1m"), Ok(MIN_LIFETIME));
        // A year is humantime's 365.25 days, as the help and errors say.
        assert_eq!(parse_lifetime("1y"), Ok(Duration::from_secs(31_557_600)));
        let bare = parse_lifetime("30").unwrap_err();
        assert!(bare.contains("no unit") && bare.contains("30d"), "{bare}");
        assert!(
            !bare.contains("sec"),
            "suggests a unit under the minimum: {bare}"
        );
        let short = parse_lifetime("30s").unwrap_err();
        assert!(short.contains("minimum of 1m"), "{short}");
        assert!(parse_lifetime("soon")
            .unwrap_err()
            .contains("not a duration"));
    }
}
