//! The child processes and their database: ports, start-up, readiness and shutdown.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use sqlx::{Connection, PgConnection};

pub async fn recreate_database(url: &str) -> anyhow::Result<()> {
    let (server, name) = url
        .rsplit_once('/')
        .context("BENCH_DATABASE_URL has no database name")?;
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .context("cannot reach Postgres")?;
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("create database \"{name}\""))
        .execute(&mut admin)
        .await?;
    Ok(())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The command for `program` in a session of its own at a higher priority (`nice -n -10
/// setsid program`; both run it in place, so its pid is the child's): Linux shares the cores
/// between sessions before threads, and by niceness within them. Without the right to raise a
/// priority, `nice` says so in the log and runs it at the usual one; without `nice` or
/// `setsid`, it is `program` as it is. Its session gets no Ctrl-C from the terminal: keep the
/// child in a [`Reaped`].
pub fn ahead(program: &str) -> Command {
    if !["nice", "setsid"].iter().all(|tool| on_path(tool)) {
        return Command::new(program);
    }
    let mut c = Command::new("nice");
    c.args(["-n", "-10", "setsid", program]);
    c
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// A child stopped when dropped (an error, or Ctrl-C, ends the benchmark early), unless it
/// has been waited for already.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            stop(&mut self.0);
        }
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Raises the session of process `pid` (started by [`ahead`], and ready: `setsid` has run)
/// above the others when Linux groups the cores' time by session (autogroup). Says where it
/// runs and at what priority. Never raises a session it shares with this process.
pub fn raise_session(pid: u32) -> String {
    // After the command's name: state, parent, process group, session, … (16) nice.
    let stat = |p: &str, field: usize| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(") ")?
            .1
            .split(' ')
            .nth(field)
            .map(str::to_owned)
    };
    let nice = stat(&pid.to_string(), 16).unwrap_or_else(|| "unknown".into());
    let session = stat(&pid.to_string(), 3);
    if session.is_none_or(|s| stat("self", 3) == Some(s)) {
        return format!("in this benchmark's session, at nice {nice}");
    }
    let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|v| v.trim() == "1");
    if !enabled {
        return format!("in a session of its own at nice {nice} (autogroup off)");
    }
    let path = format!("/proc/{pid}/autogroup");
    let raised = std::fs::write(&path, "-10").map_or_else(
        |e| format!("not raised: {e}"),
        |()| std::fs::read_to_string(&path).map_or_else(|e| e.to_string(), |g| g.trim().to_owned()),
    );
    format!("in a session of its own at nice {nice} (its autogroup: {raised})")
}

/// Starts `command` with its logs going to `log`.
pub fn spawn(log: &std::path::Path, command: &mut Command) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    println!("bench: logs in {}", log.display());
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start moment-mandates")
}

/// Polls `url` until it answers 200; returns the seconds it took.
pub async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    child: &mut Child,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(started.elapsed().as_secs_f64());
        }
        if let Some(status) = child.try_wait()? {
            bail!("moment-mandates exited before it was ready: {status}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{url} not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
