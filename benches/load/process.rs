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
/// priority, `nice` says so in the log and runs it as it is.
pub fn ahead(program: &str) -> Command {
    let mut c = Command::new("nice");
    c.args(["-n", "-10", "setsid", program]);
    c
}

/// Raises the session of process `pid` (started by [`ahead`], and ready: `setsid` has run)
/// above the others when Linux groups the cores' time by session (`autogroup`). Says what it
/// did. Never raises a session it shares with this process.
pub fn raise_session(pid: u32) -> String {
    let session = |p: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // After the command's name: state, parent, process group, session.
        stat.rsplit_once(") ")?
            .1
            .split(' ')
            .nth(3)
            .map(str::to_owned)
    };
    if session(&pid.to_string()).is_none_or(|s| session("self") == Some(s)) {
        return "in this benchmark's session (no setsid?)".into();
    }
    let path = format!("/proc/{pid}/autogroup");
    if !std::path::Path::new(&path).exists() {
        return "in its own session (no autogroup on this kernel)".into();
    }
    match std::fs::write(&path, "-10") {
        Ok(()) => std::fs::read_to_string(&path).map_or_else(
            |e| format!("in its own session ({e})"),
            |g| format!("in its own session at a higher priority ({})", g.trim()),
        ),
        Err(e) => format!("in its own session, not raised ({e})"),
    }
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
