//! Which CCF micro-architecture a CPU brand string names: codenames as
//! hypervisors report them, EPYC model numbers, Xeon tiers and versions.

/// The micro-architecture of a CPU brand string as CCF names it, when the brand
/// says it. Cloud VMs often hide the model (GCP shows `Intel(R) Xeon(R) CPU @
/// 2.20GHz`); those get `None` and so the averages.
pub fn microarchitecture(cpu_brand: &str) -> Option<&'static str> {
    let brand = cpu_brand.to_ascii_lowercase();
    // Codenames as hypervisors and arm64 kernels report them, e.g. QEMU's
    // `Intel Xeon Processor (Cascadelake)`, `AMD EPYC-Rome Processor`, `Neoverse-N1`.
    let squashed: String = brand.chars().filter(char::is_ascii_alphanumeric).collect();
    const CODENAMES: [(&str, &str); 18] = [
        ("cascadelake", "Cascade Lake"),
        ("icelake", "Ice Lake"),
        ("skylake", "Skylake"),
        ("broadwell", "Broadwell"),
        ("haswell", "Haswell"),
        ("ivybridge", "Ivy Bridge"),
        ("sandybridge", "Sandy Bridge"),
        ("sapphirerapids", "Sapphire Rapids"),
        ("emeraldrapids", "Emerald Rapids"),
        ("graniterapids", "Granite Rapids"),
        ("epycnaples", "AMD EPYC 1st Gen"),
        ("epycrome", "AMD EPYC 2nd Gen"),
        ("epycmilan", "AMD EPYC 3rd Gen"),
        ("epycgenoa", "AMD EPYC 4th Gen"),
        ("epycturin", "AMD EPYC 5th Gen"),
        ("neoversen1", "AWS Graviton2"),
        ("neoversev1", "AWS Graviton3"),
        ("neoversev2", "AWS Graviton4"),
    ];
    if let Some((_, name)) = CODENAMES.iter().find(|(key, _)| squashed.contains(key)) {
        return Some(name);
    }
    let tokens: Vec<&str> = brand.split_whitespace().collect();
    let after = |word: &str| {
        tokens
            .iter()
            .position(|t| t.starts_with(word))
            .and_then(|i| tokens.get(i + 1).copied())
    };
    if let Some(model) = after("epyc") {
        return epyc_generation(model);
    }
    if tokens.iter().any(|t| t.starts_with("xeon")) {
        return xeon_generation(&tokens, after("xeon"));
    }
    None
}

/// EPYC model numbers end in the generation: 7571 and 7R13 are 1st and 3rd Gen,
/// 9R14 4th, 9R45 5th.
fn epyc_generation(model: &str) -> Option<&'static str> {
    let model = model.as_bytes();
    if model.len() < 4 || !model[0].is_ascii_digit() {
        return None;
    }
    match model[3] {
        b'1' => Some("AMD EPYC 1st Gen"),
        b'2' => Some("AMD EPYC 2nd Gen"),
        b'3' => Some("AMD EPYC 3rd Gen"),
        b'4' => Some("AMD EPYC 4th Gen"),
        b'5' => Some("AMD EPYC 5th Gen"),
        _ => None,
    }
}

fn xeon_generation(tokens: &[&str], after_xeon: Option<&str>) -> Option<&'static str> {
    // Xeon Scalable: the second digit of the model is the generation (8259CL is 2nd).
    let tiers = ["platinum", "gold", "silver", "bronze"];
    if let Some(i) = tokens.iter().position(|t| tiers.contains(t)) {
        return match tokens.get(i + 1).map(|m| m.as_bytes()) {
            Some([b'0'..=b'9', generation, ..]) => match *generation {
                b'1' => Some("Skylake"),
                b'2' => Some("Cascade Lake"),
                b'3' => Some("Ice Lake"),
                b'4' => Some("Sapphire Rapids"),
                b'5' => Some("Emerald Rapids"),
                _ => None,
            },
            _ => None,
        };
    }
    // Xeon 6 performance cores, e.g. `Intel(R) Xeon(R) 6975P-C`.
    if let Some([b'6', b'0'..=b'9', b'0'..=b'9', b'0'..=b'9', b'p', ..]) =
        after_xeon.map(str::as_bytes)
    {
        return Some("Granite Rapids");
    }
    // E5/E7 v2, v3, v4 (e.g. `E5-2686 v4`); an E5 without version is Sandy Bridge.
    let version = tokens.iter().find_map(|t| match *t {
        "v2" => Some("Ivy Bridge"),
        "v3" => Some("Haswell"),
        "v4" => Some("Broadwell"),
        _ => None,
    });
    if tokens
        .iter()
        .any(|t| t.starts_with("e5-") || t.starts_with("e7-"))
    {
        let e5 = tokens.iter().any(|t| t.starts_with("e5-"));
        return version.or(e5.then_some("Sandy Bridge"));
    }
    tokens
        .iter()
        .any(|t| t.starts_with("e-21") || t.starts_with("e-22"))
        .then_some("Coffee Lake")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brands_map_to_microarchitectures() {
        for (brand, expected) in [
            (
                "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz",
                Some("Cascade Lake"),
            ),
            (
                "Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz",
                Some("Skylake"),
            ),
            (
                "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
                Some("Ice Lake"),
            ),
            ("Intel(R) Xeon(R) Platinum 8488C", Some("Sapphire Rapids")),
            ("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", Some("Skylake")),
            ("INTEL(R) XEON(R) PLATINUM 8581C", Some("Emerald Rapids")),
            ("Intel(R) Xeon(R) 6975P-C", Some("Granite Rapids")),
            (
                "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz",
                Some("Broadwell"),
            ),
            ("Intel(R) Xeon(R) CPU E5-2676 v3 @ 2.40GHz", Some("Haswell")),
            (
                "Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz",
                Some("Ivy Bridge"),
            ),
            (
                "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz",
                Some("Sandy Bridge"),
            ),
            (
                "Intel(R) Xeon(R) E-2278G CPU @ 3.40GHz",
                Some("Coffee Lake"),
            ),
            ("Intel Xeon Processor (Cascadelake)", Some("Cascade Lake")),
            ("AMD EPYC 7R13 Processor", Some("AMD EPYC 3rd Gen")),
            ("AMD EPYC 7571", Some("AMD EPYC 1st Gen")),
            ("AMD EPYC 7B12", Some("AMD EPYC 2nd Gen")),
            ("AMD EPYC 9R14", Some("AMD EPYC 4th Gen")),
            ("AMD EPYC 9R45", Some("AMD EPYC 5th Gen")),
            ("AMD EPYC 7763 64-Core Processor", Some("AMD EPYC 3rd Gen")),
            ("AMD EPYC-Rome Processor", Some("AMD EPYC 2nd Gen")),
            ("AMD EPYC-Milan-v2 Processor", Some("AMD EPYC 3rd Gen")),
            ("Neoverse-N1", Some("AWS Graviton2")),
            ("Neoverse-V1", Some("AWS Graviton3")),
            ("Neoverse-V2", Some("AWS Graviton4")),
            ("Intel(R) Xeon(R) CPU @ 2.20GHz", None),
            ("AMD EPYC Processor", None),
            ("Intel(R) Core(TM) i7-8700K", None),
            ("", None),
        ] {
            assert_eq!(microarchitecture(brand), expected, "{brand}");
        }
    }
}
