//! A server process's memory and CPU from `/proc/<pid>`: VmRSS from `status`, user + system
//! time from `stat`, open descriptors from `fd/`; and the kernel's listen-queue counters from
//! `/proc/net/netstat`.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (0 when `fd/` is not readable).
    pub fds: u64,
    /// When it was taken.
    pub at: Instant,
}

/// Reads `/proc/<pid>`; `None` when the process is gone or the files are unreadable.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let at = Instant::now();
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rss_kib = field("VmRSS:")?;
    let threads = field("Threads:").unwrap_or(0);
    let cpu_ticks = parse_stat_cpu(&stat)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(Sample {
        rss_kib,
        cpu_ticks,
        threads,
        fds,
        at,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may contain spaces, so fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / TICKS_PER_SEC / secs * 100.0
}

/// Server resource use over a phase, as reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    /// Mean CPU over the phase, percent of one core.
    pub cpu_percent: f64,
    /// RSS at the end of the phase, MiB.
    pub rss_mib: f64,
    /// Open descriptors at the end of the phase.
    pub fds: u64,
    /// Threads at the end of the phase.
    pub threads: u64,
}

/// Usage between two samples.
pub fn usage(a: &Sample, b: &Sample) -> ServerUsage {
    ServerUsage {
        cpu_percent: cpu_percent(a, b),
        rss_mib: b.rss_kib as f64 / 1024.0,
        fds: b.fds,
        threads: b.threads,
    }
}

/// The kernel's listen-queue counters (`/proc/net/netstat`, `TcpExt`), cumulative since boot
/// for the whole network namespace: compare two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenCounters {
    /// `ListenOverflows`: handshakes that completed (or SYNs that arrived) while a listener's
    /// accept queue was full, i.e. more connections waiting than its backlog.
    pub overflows: u64,
    /// `ListenDrops`: every SYN or handshake ACK a listener dropped, overflows included.
    pub drops: u64,
}

/// Reads [`ListenCounters`]; `None` where `/proc/net/netstat` is missing (not Linux).
pub fn listen_counters() -> Option<ListenCounters> {
    parse_listen_counters(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// The `TcpExt` counters of a `/proc/net/netstat` text: a line of names, then a line of
/// values, both starting with `TcpExt:`.
pub fn parse_listen_counters(netstat: &str) -> Option<ListenCounters> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    let mut c = ListenCounters::default();
    let (mut overflows, mut drops) = (false, false);
    for (name, value) in names.zip(values) {
        match name {
            "ListenOverflows" => (c.overflows, overflows) = (value.parse().ok()?, true),
            "ListenDrops" => (c.drops, drops) = (value.parse().ok()?, true),
            _ => {}
        }
    }
    (overflows && drops).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_counters_from_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 3 1207 1290 55\n\
                    IpExt: InNoRoutes InTruncatedPkts\n\
                    IpExt: 0 0\n";
        assert_eq!(
            parse_listen_counters(text),
            Some(ListenCounters {
                overflows: 1207,
                drops: 1290
            })
        );
        assert_eq!(parse_listen_counters("IpExt: a\nIpExt: 1\n"), None);
        assert_eq!(
            parse_listen_counters("TcpExt: ListenOverflows\nTcpExt: 1\n"),
            None
        );
        #[cfg(target_os = "linux")]
        assert!(listen_counters().is_some(), "readable on Linux");
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        let line = "1234 (my (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        assert_eq!(parse_stat_cpu(line), Some(300));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn reads_its_own_process() {
        let a = sample(std::process::id()).expect("own /proc entry");
        assert!(a.rss_kib > 0 && a.threads > 0 && a.fds > 0);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample(std::process::id()).expect("own /proc entry");
        assert!(cpu_percent(&a, &b) >= 0.0);
        assert!(sample(u32::MAX).is_none());
    }
}
