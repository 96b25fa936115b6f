//! Running the real `netpol-agent` binary inside a simulated node's namespace, with a private
//! pin directory; stopped (and, unless told otherwise, cleaned up) when the guard drops.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// Where the agent binary is: `NETPOL_AGENT_BIN`, or next to the running test binary (cargo
/// puts workspace binaries in the profile directory, one level above `deps/`).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NETPOL_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("netpol-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "netpol-agent binary not found near {} (build it, or set NETPOL_AGENT_BIN)",
        exe.display()
    )
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    /// The debug API's socket (private: agents of other tests and the host's stay apart).
    pub api_socket: PathBuf,
    pub log: PathBuf,
    netns: String,
    /// Remove pins and filters on drop (`netpol-agent cleanup`).
    pub cleanup_on_drop: bool,
}

/// How to start the agent.
pub struct AgentOptions {
    pub node_name: String,
    /// `--objects-dir` or `--kubeconfig`.
    pub source: Vec<String>,
    pub extra: Vec<String>,
    /// Reuse this pin directory (restart tests); a fresh one otherwise.
    pub pin_dir: Option<PathBuf>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Agent {
    /// Starts `netpol-agent run` in `netns` (network namespace only: bpffs stays shared).
    pub fn start(netns: &Netns, options: AgentOptions) -> Result<Self> {
        let binary = agent_binary()?;
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = options.pin_dir.unwrap_or_else(|| {
            PathBuf::from("/sys/fs/bpf").join(format!("netpol-it-{}-{id}", std::process::id()))
        });
        let log =
            std::env::temp_dir().join(format!("netpol-agent-{}-{id}.log", std::process::id()));
        let api_socket =
            std::env::temp_dir().join(format!("netpol-api-{}-{id}/agent.sock", std::process::id()));
        let mut agent = Self {
            child: None,
            pin_dir,
            api_socket,
            log,
            netns: netns.name().to_owned(),
            cleanup_on_drop: true,
        };
        agent.spawn(&binary, &options.node_name, &options.source, &options.extra)?;
        Ok(agent)
    }

    fn spawn(
        &mut self,
        binary: &Path,
        node: &str,
        source: &[String],
        extra: &[String],
    ) -> Result<()> {
        let log =
            File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .args(["--node-name", node])
            .args(source)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log);
        enter_netns_in_child(&mut command, &self.netns)?;
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/readyz` answers 200 (bounded); fails at once if the agent exits.
    pub fn wait_ready(&mut self, netns: &Netns, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("the agent exited ({status}); log:\n{}", self.log_text());
            }
            if netns
                .run(|| http_get("/readyz"))
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the agent was not ready within {timeout:?}; log:\n{}",
            self.log_text()
        )
    }

    /// The agent's `/metrics` text.
    pub fn metrics(&self, netns: &Netns) -> Result<String> {
        let (status, body) = netns.run(|| http_get("/metrics"))?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Waits up to `timeout` for the agent to exit by itself; its status if it did.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kills the agent with SIGKILL (no chance to clean anything up).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits (bounded).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a debug command (`status`, `explain ...`, `maps dump policy`) against this agent
    /// in its namespace; returns its exit code and output.
    pub fn debug(&self, args: &[&str]) -> Result<DebugOutput> {
        let output = self
            .debug_command(args)?
            .output()
            .with_context(|| format!("running netpol-agent {}", args.join(" ")))?;
        Ok(DebugOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The command of [`Agent::debug`], to spawn (`monitor`).
    pub fn debug_command(&self, args: &[&str]) -> Result<Command> {
        let binary = agent_binary()?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .arg("--socket")
            .arg(&self.api_socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        enter_netns_in_child(&mut command, &self.netns)?;
        Ok(command)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `netpol-agent cleanup` for this agent's pins in its namespace.
    pub fn cleanup(&self) -> Result<()> {
        let binary = agent_binary()?;
        let mut command = Command::new(binary);
        command.arg("cleanup").arg("--pin-dir").arg(&self.pin_dir);
        enter_netns_in_child(&mut command, &self.netns)?;
        let output = command.output().context("running netpol-agent cleanup")?;
        if !output.status.success() {
            bail!(
                "cleanup failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if self.cleanup_on_drop {
            let _ = self.cleanup();
            let _ = std::fs::remove_dir_all(&self.pin_dir);
            let _ = std::fs::remove_file(&self.log);
            if let Some(dir) = self.api_socket.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// What a debug command printed, and its exit code.
#[derive(Debug)]
pub struct DebugOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl DebugOutput {
    /// Its `-o json` output, decoded.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Makes the child join the network namespace `name` before it executes (and nothing else:
/// `ip netns exec` would also remount /sys and hide bpffs).
fn enter_netns_in_child(command: &mut Command, name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: the closure only calls setns(2), which is async-signal-safe; `file` outlives the
    // spawn because the closure owns it.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A tiny HTTP/1.1 GET against the agent's default listen address (call it inside the node's
/// namespace).
pub fn http_get(path: &str) -> Result<(u16, String)> {
    http_get_at("127.0.0.1:9990", path)
}

/// [`http_get`] from the endpoint at `address`.
pub fn http_get_at(address: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    // One write: a request split over several segments must not race the server's read.
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
