//! The one duration grammar, for flags and for pod annotations alike: terms of
//! a number and a unit (`ms`, `s`, `m`, `h`, `d`), one after another (`1h30m`).
//! Callers differ only in how loose the numbers may be and in the range they take.

use std::time::Duration;

/// What one caller accepts.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A bare number is seconds and numbers may have a fraction (`90`, `1.5h`).
    /// Pod annotations say no: a bare `2` written on a pod may mean hours.
    pub loose_numbers: bool,
    /// Zero is a valid value, not a mistake.
    pub zero_allowed: bool,
    /// The longest value, and how the error names it.
    pub max: (Duration, &'static str),
    /// Examples for the error, e.g. `30s, 5m or 1h`.
    pub examples: &'static str,
}

/// Parses `text` under `rules`; the error is a reason to follow the quoted text,
/// e.g. `is not a duration like 30s, 5m or 1h`.
pub fn parse(text: &str, rules: &Rules) -> Result<Duration, String> {
    let text = text.trim();
    let how = || format!("is not a duration like {}", rules.examples);
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut seconds = 0.0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err(how());
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c| !is_number(c)).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(is_number).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        if number.contains('.') && !rules.loose_numbers {
            return Err(format!("{} (whole numbers only)", how()));
        }
        let value: f64 = number.parse().map_err(|_| how())?;
        let scale = match unit {
            "" if rules.loose_numbers && number.len() == text.len() => 1.0,
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(format!("{} (a unit is needed)", how())),
            _ => {
                return Err(format!(
                    "{}: unknown unit {unit:?} (use ms, s, m, h or d)",
                    how()
                ));
            }
        };
        seconds += value * scale;
        rest = after;
    }
    let (max, max_words) = rules.max;
    // Larger values overflow: `Duration` panics past u64 seconds, deadlines
    // (`Instant + d`) overflow long before.
    if !seconds.is_finite() || seconds > max.as_secs_f64() {
        return Err(format!("is longer than {max_words}"));
    }
    if seconds == 0.0 && !rules.zero_allowed {
        return Err("must be longer than zero".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Flags: a bare number is seconds, fractions are fine, zero is allowed, and
/// no setting needs more than a year.
pub const FLAGS: Rules = Rules {
    loose_numbers: true,
    zero_allowed: true,
    max: (Duration::from_secs(365 * 24 * 3600), "a year"),
    examples: "30s, 5m or 1h",
};

/// A flag's duration under [`FLAGS`]: `90s`, `5m`, `1h`, `250ms`, `1h30m` or
/// plain seconds. Usable as a clap value parser.
pub fn parse_flag(text: &str) -> Result<Duration, String> {
    parse(text, &FLAGS).map_err(|why| format!("{:?} {why}", text.trim()))
}

/// A flag's period, where zero would mean a busy loop: as [`parse_flag`],
/// zero refused.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let rules = Rules {
        zero_allowed: false,
        ..FLAGS
    };
    parse(text, &rules).map_err(|why| format!("{:?} {why}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOSE: Rules = Rules {
        loose_numbers: true,
        zero_allowed: true,
        max: (Duration::from_secs(3600), "an hour"),
        examples: "30s or 5m",
    };
    const STRICT: Rules = Rules {
        loose_numbers: false,
        zero_allowed: false,
        ..LOOSE
    };

    #[test]
    fn terms_add_up_under_both_rules() {
        for rules in [LOOSE, STRICT] {
            assert_eq!(parse(" 1m30s ", &rules), Ok(Duration::from_secs(90)));
            assert_eq!(parse("250ms", &rules), Ok(Duration::from_millis(250)));
            assert_eq!(parse("1h", &rules), Ok(Duration::from_secs(3600)));
        }
    }

    #[test]
    fn loose_numbers_allow_bare_seconds_and_fractions() {
        assert_eq!(parse("90", &LOOSE), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0.5m", &LOOSE), Ok(Duration::from_secs(30)));
        assert_eq!(parse("0s", &LOOSE), Ok(Duration::ZERO));
        // A bare number only stands alone: `1m30` is a missing unit.
        assert!(
            parse("1m30", &LOOSE)
                .unwrap_err()
                .contains("unit is needed")
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("", LOOSE, "not a duration like 30s or 5m"),
            ("soon", LOOSE, "not a duration"),
            ("5 parsecs", LOOSE, "unknown unit \" parsecs\""),
            ("-1s", LOOSE, "must not be negative"),
            ("61m", LOOSE, "longer than an hour"),
            ("99999999999999999999999999h", LOOSE, "longer than an hour"),
            ("90", STRICT, "a unit is needed"),
            ("1.5m", STRICT, "whole numbers only"),
            ("0m", STRICT, "longer than zero"),
        ];
        for (text, rules, needle) in cases {
            let err = parse(text, &rules).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn flags_take_up_to_a_year_and_periods_refuse_zero() {
        for (text, seconds) in [
            ("250ms", 0.25),
            ("90", 90.0),
            ("1.5h", 5400.0),
            ("8760h", 31_536_000.0),
        ] {
            assert_eq!(
                parse_flag(text),
                Ok(Duration::from_secs_f64(seconds)),
                "{text}"
            );
            assert_eq!(
                parse_period(text),
                Ok(Duration::from_secs_f64(seconds)),
                "{text}"
            );
        }
        assert_eq!(parse_flag("0s"), Ok(Duration::ZERO));
        // Found by tests/fuzz_parsers.rs: these panicked in Duration::from_secs_f64
        // or overflowed the lease deadline.
        for huge in [
            "99999999999999999999",
            "1e30",
            "9999999999999999999h",
            "8761h",
        ] {
            assert!(parse_flag(huge).is_err(), "{huge}");
        }
        for (text, needle) in [
            ("0s", "\"0s\" must be longer than zero"),
            ("soon", "\"soon\" is not a duration like 30s, 5m or 1h"),
        ] {
            let err = parse_period(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
