//! A real `tally serve` process for the tests that need one (several servers, kill -9,
//! logs, commands beside a server): started on a free port with its log in a file, waited
//! on by condition, and killed if the test ends without stopping it.

use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// How often a wait on a process looks again.
const POLL: Duration = Duration::from_millis(20);

/// Asks `ready` until it gives a value, failing with `what` after [`DEADLINE`]. A process
/// tells nothing when it starts answering, writes a log line or exits, so these waits look
/// again every `POLL`.
async fn poll<T>(what: impl Fn() -> String, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(POLL).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct ServerProcess {
    child: Child,
    pub base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `tally … serve --listen 127.0.0.1:PORT`, where `command` makes the `tally`
    /// command (its flags and environment) to run in the given directory. Does not wait.
    pub fn start(port: u16, command: impl FnOnce(&Path) -> Command) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let child = command(dir.path())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tally serve");
        ServerProcess { child, base: format!("http://127.0.0.1:{port}"), log, _dir: dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET path` (`/health` or `/ready`) answers 200; fails the test if the
    /// server exits first.
    pub async fn wait_until_answering(&mut self, client: &reqwest::Client, path: &str) {
        let url = format!("{}{path}", self.base);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tally serve exited early ({status}):\n{}", self.log());
            }
            let reply = client.get(&url).send().await;
            if reply.is_ok_and(|reply| reply.status() == StatusCode::OK) {
                return;
            }
            assert!(Instant::now() < deadline, "tally serve did not answer {path}:\n{}", self.log());
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `condition` holds of the server's log.
    pub async fn wait_for_log(&mut self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let child = &mut self.child;
        let log = &self.log;
        let read = || std::fs::read_to_string(log).unwrap_or_default();
        poll(
            || format!("waiting for {what}:\n{}", read()),
            || {
                let log = read();
                if condition(&log) {
                    return Some(log);
                }
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("tally serve exited ({status}) before {what}:\n{log}");
                }
                None
            },
        )
        .await
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
        let child = &mut self.child;
        let status = poll(|| "tally serve did not stop on SIGTERM".into(), || child.try_wait().unwrap()).await;
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
