//! Runs the real `cpc-devnet` binary as a child process for end-to-end tests: on a free loopback port,
//! ready when [`DevnetProcess::start`] returns, stopped with SIGTERM by [`DevnetProcess::stop`] and killed
//! on drop, restartable on the same address and data dir. Blocking and std-only, so it works from plain
//! `#[test]`s and from inside a tokio runtime alike.
//!
//! ```no_run
//! use cpc_tests::harness::{DevnetOptions, DevnetProcess};
//! use std::time::Duration;
//! // In an integration test: `DevnetOptions::new(env!("CARGO_BIN_EXE_cpc-devnet"))`.
//! let devnet = DevnetProcess::start(DevnetOptions::located()?.block_time(Duration::from_millis(200)))?;
//! let status = devnet.get("/status")?;
//! # Ok::<(), cpc_tests::harness::HarnessError>(())
//! ```

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// Name of the binary.
pub const BINARY_NAME: &str = "cpc-devnet";
/// Environment variable that overrides where the binary is looked for.
pub const BINARY_ENV: &str = "CPC_DEVNET_BIN";
/// Prefix of the line the binary prints once it listens.
pub const LISTENING_PREFIX: &str = "cpc-devnet listening on http://";

/// Harness failures.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The binary could not be started.
    #[error(
        "cannot start {binary}: {source} (build it with `cargo build -p cpc-tests`, or set {BINARY_ENV})"
    )]
    Spawn {
        /// The binary path.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The child did not print its listening line.
    #[error("cpc-devnet did not announce its address: {0}")]
    NoAddress(String),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// An HTTP exchange failed.
    #[error("http {0}")]
    Http(String),
    /// Sending a signal or waiting for the child failed.
    #[error("process control failed: {0}")]
    Process(#[from] std::io::Error),
}

/// How to start the devnet.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Path to the `cpc-devnet` binary.
    pub binary: PathBuf,
    /// `--block-time`.
    pub block_time: Duration,
    /// `--data-dir`; in memory when `None`.
    pub data_dir: Option<PathBuf>,
    /// `--premine`, when set.
    pub premine: Option<u128>,
    /// `--listen` host and port; `127.0.0.1:0` (a free port) by default.
    pub listen: String,
    /// Further arguments.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the child (its logs go to the test's stderr).
    pub log_filter: String,
    /// How long start-up may take.
    pub startup_timeout: Duration,
}

impl DevnetOptions {
    /// Options for the binary at `binary`, 200 ms blocks, in memory.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            block_time: Duration::from_millis(200),
            data_dir: None,
            premine: None,
            listen: "127.0.0.1:0".to_owned(),
            extra_args: Vec::new(),
            log_filter: "warn".to_owned(),
            startup_timeout: Duration::from_secs(20),
        }
    }

    /// Options for the binary found by [`locate_binary`].
    pub fn located() -> Result<Self, HarnessError> {
        locate_binary().map(Self::new).ok_or_else(|| HarnessError::Spawn {
            binary: PathBuf::from(BINARY_NAME),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not next to the test executable",
            ),
        })
    }

    /// Sets the block interval.
    pub fn block_time(mut self, block_time: Duration) -> Self {
        self.block_time = block_time;
        self
    }

    /// Persists the chain in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the faucet premine.
    pub fn premine(mut self, premine: u128) -> Self {
        self.premine = Some(premine);
        self
    }
}

/// Finds `cpc-devnet`: `$CPC_DEVNET_BIN`, else next to the running executable or one folder up (a test
/// binary lives in `target/<profile>/deps/`, the devnet in `target/<profile>/`).
pub fn locate_binary() -> Option<PathBuf> {
    locate_workspace_binary(BINARY_NAME, BINARY_ENV)
}

/// Finds a workspace binary (`cpc-devnet`, `cpc-coordinator`, `cpc-agent`): `$env_var`, else next to the
/// running executable or one folder up (a test binary lives in `target/<profile>/deps/`).
pub fn locate_workspace_binary(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)].into_iter().find(|p| p.is_file())
}

/// A running `cpc-devnet` child.
#[derive(Debug)]
pub struct DevnetProcess {
    child: Option<Child>,
    addr: SocketAddr,
    options: DevnetOptions,
}

impl DevnetProcess {
    /// Starts the devnet and waits until `/status` answers 200.
    pub fn start(options: DevnetOptions) -> Result<Self, HarnessError> {
        let listen = options.listen.clone();
        Self::spawn(options, &listen)
    }

    fn spawn(options: DevnetOptions, listen: &str) -> Result<Self, HarnessError> {
        let mut cmd = Command::new(&options.binary);
        cmd.arg("--listen")
            .arg(listen)
            .arg("--block-time")
            .arg(format!("{}ms", options.block_time.as_millis()));
        if let Some(dir) = &options.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if let Some(p) = options.premine {
            cmd.arg("--premine").arg(p.to_string());
        }
        cmd.args(&options.extra_args)
            .env("RUST_LOG", &options.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|source| HarnessError::Spawn { binary: options.binary.clone(), source })?;
        let addr = match read_address(&mut child, options.startup_timeout) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let process = Self { child: Some(child), addr, options };
        process.wait_ready()?;
        Ok(process)
    }

    fn wait_ready(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + self.options.startup_timeout;
        loop {
            if let Ok((200, _)) = self.get("/status") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!("{}/status", self.url())));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The options it was started with.
    pub fn options(&self) -> &DevnetOptions {
        &self.options
    }

    /// The data dir, if persistent.
    pub fn data_dir(&self) -> Option<&Path> {
        self.options.data_dir.as_deref()
    }

    /// A minimal HTTP/1.1 GET (no client library needed): status code and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), HarnessError> {
        let err = |e: std::io::Error| HarnessError::Http(format!("GET {path}: {e}"));
        let mut stream =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(err)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(err)?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr)
            .map_err(err)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(err)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| HarnessError::Http(format!("GET {path}: malformed response")))?;
        Ok((code, body.to_owned()))
    }

    /// `GET /status` decoded.
    pub fn status(&self) -> Result<cpc_common::rpc::StatusResponse, HarnessError> {
        let (code, body) = self.get("/status")?;
        if code != 200 {
            return Err(HarnessError::Http(format!("/status answered {code}")));
        }
        serde_json::from_str(&body).map_err(|e| HarnessError::Http(format!("/status: {e}")))
    }

    /// Waits until the chain reaches `height`; returns the height seen.
    pub fn wait_for_height(&self, height: u64, timeout: Duration) -> Result<u64, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.status()?.height;
            if h >= height {
                return Ok(h);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!("height {height} (at {h})")));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (up to 10 s, then SIGKILL) for the child to exit.
    pub fn stop(&mut self) -> Result<ExitStatus, HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::Process(std::io::Error::other("cpc-devnet is not running")));
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let signalled = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        if !signalled.success() {
            child.kill()?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                return Err(HarnessError::Timeout("cpc-devnet to exit after SIGTERM".into()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops (SIGTERM) and starts again with the same options and data dir, on the same address, so
    /// [`Self::url`] stays valid.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        if self.child.is_some() {
            self.stop()?;
        }
        let listen = self.addr.to_string();
        let deadline = Instant::now() + self.options.startup_timeout;
        loop {
            match Self::spawn(self.options.clone(), &listen) {
                Ok(mut fresh) => {
                    self.child = fresh.child.take();
                    return Ok(());
                }
                // The port may linger for a moment after the old process exits.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for DevnetProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads the listening line from the child's stdout (with a timeout), then keeps draining stdout.
fn read_address(child: &mut Child, timeout: Duration) -> Result<SocketAddr, HarnessError> {
    let stdout =
        child.stdout.take().ok_or_else(|| HarnessError::NoAddress("stdout not captured".into()))?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let first = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send(first);
        // Keep the pipe drained so the child never blocks on a full stdout.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match rx.recv_timeout(timeout) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return Err(HarnessError::NoAddress(e.to_string())),
        Err(_) => return Err(HarnessError::Timeout("the listening line".into())),
    };
    let addr = line.trim().strip_prefix(LISTENING_PREFIX).ok_or_else(|| {
        let status = child.try_wait().ok().flatten();
        HarnessError::NoAddress(format!("got {:?} (exit status {status:?})", line.trim()))
    })?;
    addr.parse().map_err(|e| HarnessError::NoAddress(format!("{addr}: {e}")))
}

/// A loopback TCP port free at the time of asking (for a listener a test passes to a process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `cpc-coordinator --json farm ARGS` with `HOME` at `home`, so that no admin token file of the machine's
/// user is found by default, and no admin URL or token file from the environment.
pub fn farm_admin_command(home: &Path, args: &[&str]) -> Command {
    let mut cmd = coordinator_command();
    cmd.env("HOME", home)
        .env_remove("CPC_ADMIN_URL")
        .env_remove("CPC_ADMIN_TOKEN_FILE")
        .args(["--json", "farm"])
        .args(args);
    cmd
}

/// A `cpc-coordinator` command (`$CPC_COORDINATOR_BIN`, or the binary next to the test executable), with
/// the caller's `CPC_NODE`, `CPC_KEYSTORE` and `CPC_VALIDATORS` removed so a test only talks to what it
/// started.
///
/// # Panics
/// When the binary is missing: build it first (`cargo build --workspace --bins`, as `deploy/test.sh` does).
pub fn coordinator_command() -> Command {
    let bin = locate_workspace_binary("cpc-coordinator", "CPC_COORDINATOR_BIN").unwrap_or_else(|| {
        panic!("cpc-coordinator binary not found: run `cargo build --workspace --bins` or set CPC_COORDINATOR_BIN")
    });
    let mut cmd = Command::new(bin);
    cmd.env_remove("CPC_NODE").env_remove("CPC_KEYSTORE").env_remove("CPC_VALIDATORS");
    cmd
}
