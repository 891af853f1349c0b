//! The server under test: spawning it (optionally pinned to a CPU), its memory and CPU time from
//! `/proc`, and the open-file limit of this process.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = lim.rlim_max;
        if lim.rlim_cur < want {
            let new = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                return want;
            }
        }
        lim.rlim_cur
    }
}

/// A server process this tool started (killed on drop).
pub struct Spawned {
    child: Child,
    /// Its pid.
    pub pid: u32,
}

impl Spawned {
    /// Runs `cmd` with `sh -c 'exec …'` (so the pid is the server's), stdout/stderr to `log`,
    /// and waits until `addr` accepts connections.
    pub async fn start(cmd: &str, addr: SocketAddr, log: Option<&str>) -> Result<Spawned, String> {
        let (out, err) = match log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{path}: {e}"))?;
                let f2 = f.try_clone().map_err(|e| e.to_string())?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {cmd}: {e}"))?;
        let pid = child.id().ok_or("no pid")?;
        let mut s = Spawned { child, pid };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(s);
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("{cmd} exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("{cmd}: {addr} not accepting after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Resident set size of `pid` in bytes (VmRSS).
pub fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, all threads) of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after comm and state.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Waits until `pid` is idle: three 100 ms windows in a row with at most one tick of CPU
/// (bounded by `max`). Returns how long it took.
pub async fn settle(pid: u32, max: Duration) -> Duration {
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_ticks(pid).unwrap_or(0);
    while start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_ticks(pid).unwrap_or(0);
        if now.saturating_sub(last) <= 1 {
            quiet += 1;
            if quiet >= 3 {
                break;
            }
        } else {
            quiet = 0;
        }
        last = now;
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_entries() {
        let me = std::process::id();
        assert!(rss(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(raise_nofile() > 0);
    }
}
