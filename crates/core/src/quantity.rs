//! Kubernetes resource quantities as plain numbers: one parser for every
//! caller (pod requests, node allocatable, Kueue workloads' pod sets).

/// A Kubernetes CPU quantity in vCPUs: `250m`, `2`, `0.5`, `1e3`, `2k`.
/// `None` for anything else, negative or not finite.
pub fn parse_cpu(text: &str) -> Option<f64> {
    parse(text)
}

/// A size in bytes as Kubernetes writes memory: `1048576`, `1Mi`, `512Ki`,
/// `1M`. The error follows the quoted text, for a flag's value parser.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    match parse(text) {
        // Past 2^53 an f64 no longer holds every whole number: no limit needs that.
        Some(bytes) if bytes.fract() == 0.0 && bytes <= (1u64 << 53) as f64 => Ok(bytes as usize),
        Some(_) => Err(format!(
            "{:?} is not a whole number of bytes up to 8Pi",
            text.trim()
        )),
        None => Err(format!(
            "{:?} is not a size like 1048576, 512Ki or 1Mi",
            text.trim()
        )),
    }
}

/// Any quantity as a plain number, with its decimal or binary suffix applied.
fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let value = match text.parse::<f64>() {
        Ok(v) => v,
        Err(_) => {
            let split = text.find(|c: char| c.is_ascii_alphabetic())?;
            let (number, suffix) = text.split_at(split);
            let scale = match suffix {
                "n" => 1e-9,
                "u" => 1e-6,
                "m" => 1e-3,
                "k" => 1e3,
                "M" => 1e6,
                "G" => 1e9,
                "T" => 1e12,
                "Ki" => 1024.0,
                "Mi" => 1024.0 * 1024.0,
                "Gi" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            number.parse::<f64>().ok()? * scale
        }
    };
    (value.is_finite() && value >= 0.0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_cpu("250m"), Some(0.25));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu(" 0.5 "), Some(0.5));
        assert_eq!(parse_cpu("1e3"), Some(1000.0));
        assert_eq!(parse_cpu("2k"), Some(2000.0));
        assert!((parse_cpu("100u").unwrap() - 1e-4).abs() < 1e-15);
        for bad in ["lots", "", "-1", "NaN", "inf", "5x", "m"] {
            assert_eq!(parse_cpu(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_parse_as_whole_bytes() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("1Mi", 1 << 20),
            ("512Ki", 512 << 10),
            ("1M", 1_000_000),
            (" 2Gi ", 2 << 30),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for (text, needle) in [
            ("1.5", "not a whole number of bytes"),
            ("100m", "not a whole number of bytes"),
            ("1e30", "up to 8Pi"),
            ("lots", "not a size like"),
            ("-1Ki", "not a size like"),
        ] {
            let err = parse_bytes(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
