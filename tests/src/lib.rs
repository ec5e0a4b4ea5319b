//! The end-to-end harness: starts the real `millrace` binary on a free port with a temporary data directory,
//! and stops it gracefully (SIGTERM) or kills it (SIGKILL) for crash tests.
//!
//! The binary is `$MILLRACE_BIN`, else the newest of `target/release/millrace` and `target/debug/millrace`
//! (`scripts/test.sh` builds it first).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of the millrace binary under test.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MILLRACE_BIN") {
        // A relative path means relative to the workspace root (tests run with their package as cwd).
        return Ok(workspace_root().join(p));
    }
    let root = workspace_root();
    let candidates = ["target/release/millrace", "target/debug/millrace"].map(|p| root.join(p));
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            anyhow!("no millrace binary: run `cargo build --bin millrace` or set MILLRACE_BIN")
        })
}

/// True when running in CI, where a missing client tool must fail a test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// A running broker. Dropping it kills the process; the data directory lives as long as this value.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Extra arguments of `millrace serve` (e.g. `--pipeline FILE`), kept for restarts.
    args: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Broker {
    pub fn start() -> Result<Broker> {
        Broker::start_with_env(&[])
    }

    /// Starts a broker with extra `MILLRACE_*` settings.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Broker> {
        Broker::start_with(env, &[])
    }

    /// Starts a broker with extra `MILLRACE_*` settings and extra `serve` arguments.
    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> Result<Broker> {
        let data = tempfile::tempdir()?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut b = Broker {
            child: None,
            addr: "127.0.0.1:0".parse()?,
            data,
            env,
            args: args.iter().map(|a| a.to_string()).collect(),
            stderr: Default::default(),
        };
        b.launch("127.0.0.1:0")?;
        Ok(b)
    }

    /// The address as a bootstrap string.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    fn launch(&mut self, listen: &str) -> Result<()> {
        let mut cmd = Command::new(binary()?);
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(self.data.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning millrace")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        self.child = Some(child);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("millrace listening on ") {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        self.addr = addr
                            .parse()
                            .with_context(|| format!("bad ready line {line:?}"))?;
                        return Ok(());
                    }
                }
                Err(_) => bail!("broker did not become ready; stderr:\n{}", self.stderr()),
            }
        }
    }

    /// What the broker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn pid(&self) -> Result<u32> {
        Ok(self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("not running"))?
            .id())
    }

    /// SIGTERM, and waits: the broker must exit 0 within 5 seconds.
    pub fn stop(&mut self) -> Result<()> {
        let pid = self.pid()?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("broker exited with {status}; stderr:\n{}", self.stderr());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("broker did not exit within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no clean marker.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Replaces the extra `serve` arguments for the next [`Broker::restart`] (e.g. to create topics with
    /// configs before a pipeline that reads them starts).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Starts the broker again on the same data directory and port.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        let listen = self.addr.to_string();
        // The old port is normally free again at once; fall back to a new one if another process took it.
        if self.launch(&listen).is_err() {
            self.launch("127.0.0.1:0")?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs an external client program; `Ok(None)` when it is not installed and we are not in CI.
pub fn run_client(program: &str, args: &[&str], dir: &Path) -> Result<Option<String>> {
    let out = match Command::new(program).args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !in_ci() => {
            eprintln!("skipping: {program} is not installed");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("running {program}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Some(stdout))
}
