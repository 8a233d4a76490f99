//! What the bench reads about processes: clocks, RSS and CPU time from `/proc`, and
//! the open-files limit.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Sums `read` over every PID; `None` when there is none or one can't be read.
pub(crate) fn sum_over(pids: &[u32], read: fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| read(*p)).sum()
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(crate) fn clk_tck() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; read it from getconf
    // when available rather than assuming.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raises the soft open-files limit to the hard limit.
pub(crate) fn raise_nofile() {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output();
    if let Ok(o) = out
        && let Ok(hard) = String::from_utf8_lossy(&o.stdout).trim().parse::<u64>()
    {
        #[cfg(target_os = "linux")]
        let _ = rlimit_set(hard);
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn rlimit_set(n: u64) -> std::io::Result<()> {
    // SAFETY: `setrlimit(2)` only reads the struct it is given; `Rlimit` matches the
    // kernel's `struct rlimit` on 64-bit Linux (two `rlim_t`, which are u64), is fully
    // initialised and lives on the stack for the whole call. RLIMIT_NOFILE is 7 on
    // Linux. The call has no other effect on memory.
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    unsafe extern "C" {
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    }
    let r = Rlimit { cur: n, max: n };
    // SAFETY: see above.
    let rc = unsafe { setrlimit(7, &r) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
