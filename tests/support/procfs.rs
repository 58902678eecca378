//! What /proc says about a process, for the benches' side-by-side figures.

const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Utime + stime of a process, in seconds (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / CLOCK_TICKS_PER_SECOND,
            )
        })
        .unwrap_or(0.0)
}
