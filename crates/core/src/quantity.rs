//! Kubernetes resource quantities as plain numbers: one parser for every
//! caller (pod requests, node allocatable, Kueue workloads' pod sets).

/// A Kubernetes CPU quantity in vCPUs: `250m`, `2`, `0.5`, `1e3`, `2k`.
/// `None` for anything else, negative or not finite.
pub fn parse_cpu(text: &str) -> Option<f64> {
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
}
