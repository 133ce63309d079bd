//! Host load, read from `/proc`: cpu = 1-minute load average / cores, mem = used fraction.

/// Reads the host's load; `None` where `/proc` is not there or is unreadable.
pub fn sample() -> Option<(f64, f64)> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((
        parse_loadavg(&loadavg)? / cores as f64,
        parse_mem_used(&meminfo)?,
    ))
}

fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `1 - MemAvailable / MemTotal`.
fn parse_mem_used(text: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    (total > 0.0).then(|| (1.0 - available / total).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 2/1190 12345\n"), Some(0.52));
        let mem = "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_mem_used(mem), Some(0.75));
        assert_eq!(parse_mem_used("junk"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn this_host_has_a_load() {
        let (cpu, mem) = sample().expect("linux has /proc");
        assert!(cpu >= 0.0 && (0.0..=1.0).contains(&mem));
    }
}
