//! Processes a test starts (registries, `portcullis` itself, API servers): tied to the
//! test, so nothing outlives it. Each runs directly (no wrapper a signal could not
//! pass), is killed and reaped when its guard drops — on success, failure or panic —
//! and, through `setpriv --pdeathsig`, is killed by the kernel if the thread that
//! started it dies first.

use std::io;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// A running child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
}

/// A command for `program` that the kernel kills if the spawning thread dies
/// (`setpriv --pdeathsig KILL`, from util-linux, execs into `program` in place).
/// Spawn it from a thread that lives as long as the process should (the test's own).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if setpriv_available() {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn setpriv_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Spawned {
    /// Spawns `command` (made with [`command`]).
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        Ok(Spawned {
            child: command.spawn()?,
        })
    }

    /// The process ID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `SIGTERM` (a graceful stop).
    pub fn terminate(&self) -> io::Result<()> {
        self.signal(Signal::TERM)
    }

    /// Sends `SIGKILL`.
    pub fn kill(&self) -> io::Result<()> {
        self.signal(Signal::KILL)
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("no such process id"))?;
        kill_process(pid, signal).map_err(io::Error::from)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
