//! A real `tally serve` process for the tests that need one (several servers, kill -9,
//! logs, commands beside a server): started on a free port with its log in a file, waited
//! on by condition, and killed if the test ends without stopping it.
//!
//! Nothing here polls. A thread copies the server's stderr into the log file line by line
//! and announces each line on a watch channel, which it drops when stderr closes (the
//! process ended), so a wait wakes exactly when the log grows or the process ends.

use reqwest::StatusCode;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::watch;

/// How long any wait on a server may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// The built `tally` binary.
pub const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// A `tally` command on `database_url`, run in `dir`, that reads no config file and no
/// database, address or public URL from the test's environment.
pub fn tally_command(database_url: &str, dir: &Path) -> Command {
    let mut command = Command::new(TALLY);
    command
        .arg("--database")
        .arg(database_url)
        .current_dir(dir)
        .env_remove("TALLY_CONFIG")
        .env_remove("TALLY_DATABASE_URL")
        .env_remove("TALLY_LISTEN")
        .env_remove("TALLY_PUBLIC_URL")
        .env_remove("DATABASE_URL")
        .env_remove("PORT")
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// A port that was free a moment ago, for a test that must name the port before the server
/// starts (`tally demo` prints links to it). Another socket can take it before the server binds
/// it; everywhere else pass [`ANY_PORT`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Lets the server bind a port the system picks; [`ServerProcess::base`] is then learned from
/// the line it logs once it listens, so no other socket can take the port in between.
pub const ANY_PORT: u16 = 0;

pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`; empty until [`ServerProcess::wait_until_answering`] has seen
    /// the server listen, when it was started on [`ANY_PORT`].
    pub base: String,
    log: PathBuf,
    /// Changes with every line the server logs; closed once its stderr is (it exited).
    lines: watch::Receiver<usize>,
    _dir: tempfile::TempDir,
}

/// The log line `tally serve` writes once it listens (at `info`, for the `tally` target).
const SERVING: &str = "tally is serving";

impl ServerProcess {
    /// Starts `tally … serve --listen 127.0.0.1:PORT` (PORT may be [`ANY_PORT`]), where `command` makes the `tally`
    /// command (its flags and environment) to run in the given directory. Does not wait.
    /// The `tally` target logs at `info` besides what the command asks, so that the line
    /// saying the server listens is there to wait for.
    pub fn start(port: u16, command: impl FnOnce(&Path) -> Command) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut command = command(dir.path());
        let filter = command
            .get_envs()
            .find(|(name, _)| *name == "TALLY_LOG")
            .and_then(|(_, value)| value.map(|value| value.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "warn".into());
        let mut child = command
            .env("TALLY_LOG", format!("{filter},tally=info"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tally serve");
        let lines = copy_lines(child.stderr.take().unwrap(), std::fs::File::create(&log).unwrap());
        let base = if port == ANY_PORT { String::new() } else { format!("http://127.0.0.1:{port}") };
        ServerProcess { child, base, log, lines, _dir: dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server listens, then until `GET path` (`/health` or `/ready`)
    /// answers: a request sent once the socket listens waits in its backlog to be served.
    /// Fails the test if the server exits first or does not answer 200.
    pub async fn wait_until_answering(&mut self, client: &reqwest::Client, path: &str) {
        let log = self.wait_for_log("the server to listen", |log| log.contains(SERVING)).await;
        if self.base.is_empty() {
            let port = listening_port(&log).unwrap_or_else(|| panic!("no port in the line {SERVING:?}:\n{log}"));
            self.base = format!("http://127.0.0.1:{port}");
        }
        let reply = tokio::time::timeout(DEADLINE, client.get(format!("{}{path}", self.base)).send()).await;
        match reply {
            Ok(Ok(reply)) if reply.status() == StatusCode::OK => {}
            Ok(Ok(reply)) => panic!("tally serve answered {path} with {}:\n{}", reply.status(), self.log()),
            Ok(Err(error)) => panic!("tally serve did not answer {path} ({error}):\n{}", self.log()),
            Err(_) => panic!("tally serve did not answer {path} in time:\n{}", self.log()),
        }
    }

    /// Waits until `condition` holds of the server's log; fails the test if the server
    /// exits first or the log stops growing for [`DEADLINE`].
    pub async fn wait_for_log(&mut self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let mut lines = self.lines.clone();
        loop {
            // Marked seen before the log is read: a line written after this wakes the wait.
            lines.borrow_and_update();
            let log = self.log();
            if condition(&log) {
                return log;
            }
            match tokio::time::timeout(DEADLINE, lines.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let log = self.log();
                    if condition(&log) {
                        return log;
                    }
                    let status = self.child.wait().unwrap();
                    panic!("tally serve exited ({status}) before {what}:\n{log}");
                }
                Err(_) => panic!("timed out waiting for {what}:\n{log}"),
            }
        }
    }

    /// SIGKILL, then reaps the process; fails the test if it had already exited by itself.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let status = self.child.wait().expect("reap the server");
        assert!(!status.success(), "the server was killed, not stopped: {status}");
    }

    /// SIGTERM, then waits for a graceful exit with status 0 and a log without errors.
    pub async fn stop(&mut self) {
        let signalled = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(signalled.success(), "could not signal the server");
        // Its stderr closes when it exits.
        let mut lines = self.lines.clone();
        let closed = tokio::time::timeout(DEADLINE, async { while lines.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "tally serve did not stop on SIGTERM:\n{}", self.log());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tally serve exited with {status} on SIGTERM:\n{}", self.log());
        let log = self.log();
        assert!(!log.contains("ERROR"), "the server logged errors:\n{log}");
    }

    /// Ends the process, however it is, without judging how.
    pub fn end(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.end();
    }
}

/// The port of `address=127.0.0.1:PORT` (or `"address":"127.0.0.1:PORT"` in JSON logs) on
/// the line the server logs once it listens.
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|line| line.contains(SERVING))?;
    let (_, rest) = line.split_once("127.0.0.1:")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Copies `stderr` into `log` line by line on a thread of its own, announcing each line;
/// the returned receiver's sender is dropped when `stderr` closes.
fn copy_lines(stderr: std::process::ChildStderr, mut log: std::fs::File) -> watch::Receiver<usize> {
    let (announce, lines) = watch::channel(0);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Written before it is announced, so a woken wait reads it.
            if writeln!(log, "{line}").and_then(|()| log.flush()).is_err() {
                break;
            }
            announce.send_modify(|count| *count += 1);
        }
    });
    lines
}
