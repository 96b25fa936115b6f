//! Running commands: one place that prints what runs and turns failure into an error.

use std::{
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

/// Runs `cmd`, inheriting stdio, and fails if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its output whatever the exit status (for probes).
pub fn probe(cmd: &mut Command) -> Option<Output> {
    cmd.output().ok()
}

/// Runs `cmd` capturing stdout, and fails (with its stderr) if it does not succeed.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("failed to start {}", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}\n{}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{} printed non-UTF-8", describe(cmd)))
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
