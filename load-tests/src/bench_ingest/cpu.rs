//! CPU time of processes from /proc: the services', and the local stack's broker and
//! Redis, which share the cores with them.

/// CPU seconds (user + system) a process has used so far; 0 when it cannot be read.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(0.0, |stat| cpu_seconds_of_stat(&stat))
}

/// CPU seconds from the text of `/proc/<pid>/stat`.
fn cpu_seconds_of_stat(stat: &str) -> f64 {
    // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// The local stack's broker and Redis: they share the cores with the services, so their
/// CPU per message shows what each phase costs the machine as a whole.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StackPids {
    pub(crate) broker: Option<u32>,
    pub(crate) redis: Option<u32>,
}

impl StackPids {
    pub(crate) fn find() -> Self {
        StackPids {
            broker: pid_of("kafka.Kafka"),
            redis: pid_of("redis-server"),
        }
    }
}

/// The pid of the first process whose command line contains `pattern` (the local stack's
/// broker and Redis), to count their CPU time too.
fn pid_of(pattern: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(pattern)
            .then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_summed_after_the_command_name() {
        // A command name with spaces and a ")" of its own; utime 250, stime 50 ticks.
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert!((cpu_seconds_of_stat(stat) - 3.0).abs() < 1e-9);
        assert_eq!(cpu_seconds_of_stat("garbage"), 0.0);
    }
}
