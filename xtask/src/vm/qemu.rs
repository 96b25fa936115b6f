//! Booting one guest: qemu under TCG with a kernel and an initramfs, the serial console read
//! from qemu's stdout (a pipe: qemu truncates a file it writes to), echoed line by line with
//! the kernel's label, and scanned for the sentinel that `tests/src/bin/vm-init.rs` prints.
//!
//! Every wait is bounded: the guest gets `timeout`, and after the sentinel a short grace for
//! the power-off; then qemu is killed.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

const QEMU: &str = "qemu-system-x86_64";

/// Init's last line when every suite passed, and when one did not.
const SUCCESS: &str = "init: success";
const FAILURE: &str = "init: failure";

/// How long a guest may take to power off after its sentinel.
const POWER_OFF_GRACE: Duration = Duration::from_secs(20);

/// How long to wait for qemu to exit once its console has closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Kernel command line:
/// - `console=ttyS0`: the first serial port, which `-nographic` puts on qemu's stdout;
/// - `panic=-1`: reboot at once on a panic (init dying is one), which `-no-reboot` turns into
///   qemu exiting, instead of a hang until the timeout;
/// - `quiet`: kernel messages below warning stay off the console, so init's lines stand out.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// One guest to boot.
pub struct Boot<'a> {
    /// Prefix of every echoed console line, e.g. `5.10`.
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub timeout: Duration,
}

/// How a guest ended.
pub struct Report {
    pub passed: bool,
    /// Why it failed, or notes on a pass (e.g. qemu had to be killed after the sentinel).
    pub summary: String,
    /// Failing tests and other lines worth repeating in the final summary.
    pub notable: Vec<String>,
    pub duration: Duration,
}

enum Event {
    Console(String),
    Stderr(String),
}

pub fn boot(boot: &Boot<'_>) -> Result<Report> {
    let &Boot {
        label,
        vmlinuz,
        initramfs,
        timeout,
    } = boot;
    let mut cmd = Command::new(QEMU);
    cmd
        // /dev/kvm on these machines is a PVM device that cannot run stock kernels
        // (handbook/kernels.md): plain emulation.
        .args(["-accel", "tcg"])
        .args(["-m", "1G"])
        // One vCPU is one TCG thread: two guests fit the two host cores.
        .args(["-smp", "1"])
        // No display: the serial port (and qemu's monitor, unused) on stdio.
        .arg("-nographic")
        // A guest reboot (kernel panic with panic=-1) ends qemu instead of booting again.
        .arg("-no-reboot")
        // No default NIC (and its option ROM): the suites only use loopback and namespaces.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{label}: starting {QEMU} (is qemu-system-x86 installed?)"))?;

    let (sender, events) = mpsc::channel();
    let readers = [
        child
            .stdout
            .take()
            .map(|out| forward(out, sender.clone(), Event::Console)),
        child
            .stderr
            .take()
            .map(|err| forward(err, sender.clone(), Event::Stderr)),
    ];
    drop(sender);

    let deadline = started + timeout;
    let mut limit = deadline;
    let mut sentinel = None;
    let mut notable = Vec::new();
    let mut panic_message_next = false;
    let mut timed_out = false;
    loop {
        let Some(left) = limit.checked_duration_since(Instant::now()) else {
            timed_out = true;
            break;
        };
        match events.recv_timeout(left) {
            Ok(Event::Console(line)) => {
                println!("[{label}] {line}");
                let trimmed = line.trim();
                if trimmed == SUCCESS || trimmed == FAILURE {
                    sentinel = Some(trimmed == SUCCESS);
                    limit = deadline.min(Instant::now() + POWER_OFF_GRACE);
                } else if is_notable(trimmed) || (panic_message_next && !trimmed.is_empty()) {
                    notable.push(trimmed.to_owned());
                }
                // A panic's message is on the line after its location.
                panic_message_next = trimmed.contains("panicked at");
            }
            Ok(Event::Stderr(line)) => {
                println!("[{label}] qemu: {line}");
                notable.push(format!("qemu: {}", line.trim()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = finish(&mut child, timed_out, label)?;
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    let duration = started.elapsed();

    let (passed, summary) = match (sentinel, timed_out) {
        (Some(true), false) => (true, "init: success".to_owned()),
        (Some(true), true) => (
            true,
            "init: success, but the guest did not power off; qemu was killed".to_owned(),
        ),
        (Some(false), _) => (false, "init: failure (a suite failed)".to_owned()),
        (None, true) => (
            false,
            format!(
                "no sentinel within {} s: qemu was killed",
                timeout.as_secs()
            ),
        ),
        (None, false) => (false, format!("qemu exited ({status}) without a sentinel")),
    };
    Ok(Report {
        passed,
        summary,
        notable,
        duration,
    })
}

/// Lines worth repeating in the summary: failed tests and suites, panics, init's own error,
/// kernel trouble.
fn is_notable(line: &str) -> bool {
    (line.starts_with("test ") && line.ends_with("FAILED"))
        || (line.starts_with("init: ") && line.contains("FAILED"))
        || line.contains("panicked at")
        || line.contains("Kernel panic")
        || line.starts_with("init: error:")
}

/// Reads `input` line by line into `sender` on its own thread.
fn forward<R: Read + Send + 'static>(
    input: R,
    sender: mpsc::Sender<Event>,
    wrap: fn(String) -> Event,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = printable(&String::from_utf8_lossy(&line));
                    if sender.send(wrap(text)).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Kills qemu if it overran, then waits a bounded time for it to exit.
fn finish(child: &mut Child, timed_out: bool, label: &str) -> Result<ExitStatus> {
    if timed_out {
        let _ = child.kill();
    }
    let until = Instant::now() + EXIT_GRACE;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("{label}: waiting for qemu"))?
        {
            return Ok(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            return child
                .wait()
                .with_context(|| format!("{label}: waiting for the killed qemu"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `line` without terminal escape sequences (SeaBIOS clears the screen) and control
/// characters, so the echoed console stays readable.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters up to a final byte in '@'..='~'.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // Character set selection takes one more character.
                Some('(' | ')') => {
                    chars.next();
                }
                // Any other two-character sequence (`ESC c` resets the terminal).
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_line_ends_are_dropped_from_console_lines() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(printable("init: success\r\n"), "init: success");
        assert_eq!(printable("\x1b(Bplain\ttext"), "plain\ttext");
    }
}
