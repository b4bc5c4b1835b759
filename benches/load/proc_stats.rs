//! What `/proc` tells about the machine and the processes under load: CPU seconds and
//! resident memory.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub async fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let command = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "- CPU: {model}, {cores} cores available\n- Memory: {mem}\n- Linux {}\n- {}\n- {}\n- Date: {}",
        kernel.trim(),
        command("pgbench", "--version"),
        command("rustc", "--version"),
        command("date", "-u")
    )
}

/// CPU seconds used so far by the service, the simulator, this load generator and all of
/// Postgres's processes.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub service: f64,
    pub sim: f64,
    pub client: f64,
    pub postgres: f64,
}

impl Cpu {
    pub fn now(service: u32, sim: u32) -> Self {
        let mut postgres = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            if let Some(pid) = pid
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "postgres")
            {
                postgres += cpu_secs(pid);
            }
        }
        Self {
            service: cpu_secs(service),
            sim: cpu_secs(sim),
            client: cpu_secs(std::process::id()),
            postgres,
        }
    }

    pub fn since(self, earlier: Self) -> Self {
        Self {
            service: self.service - earlier.service,
            sim: self.sim - earlier.sim,
            client: self.client - earlier.client,
            postgres: self.postgres - earlier.postgres,
        }
    }

    pub fn row(&self, secs: f64) -> String {
        let share = |x: f64| x / secs;
        format!(
            "| {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            share(self.service),
            share(self.postgres),
            share(self.sim),
            share(self.client),
            share(self.service + self.postgres + self.sim + self.client)
        )
    }
}

/// User plus system CPU seconds of a process (`/proc/<pid>/stat`, at 100 ticks a second).
pub fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14th and 15th.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS` now, `VmHWM` the peak so far).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Samples the service's resident memory every 50 ms while a run lasts.
pub struct RssSampler {
    done: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid, "VmRSS")));
        let (d, p) = (done.clone(), peak.clone());
        tokio::spawn(async move {
            while !d.load(Ordering::SeqCst) {
                p.fetch_max(rss_kib(pid, "VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { done, peak }
    }

    pub fn stop(self) -> u64 {
        self.done.store(true, Ordering::SeqCst);
        self.peak.load(Ordering::SeqCst)
    }
}
