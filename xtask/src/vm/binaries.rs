//! The host-built binaries a guest runs: the init and the test binaries of `netpol-tests`,
//! found in cargo's JSON messages (the file names carry hashes).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use xtask::EBPF_OBJECT_ENV;

use crate::exec;

/// The package holding the suites and the init.
const PACKAGE: &str = "netpol-tests";
/// The init's `[[bin]]` in that package.
const INIT_BIN: &str = "vm-init";

pub struct Binaries {
    pub init: PathBuf,
    /// The suites asked for, in the order asked.
    pub tests: Vec<PathBuf>,
}

/// Builds the init and the test targets named in `suites` against the prebuilt eBPF
/// `object`.
pub fn build(object: &Path, suites: &[&str]) -> Result<Binaries> {
    let init = artifacts(object, &["build", "--bin", INIT_BIN])?
        .into_iter()
        .find(|artifact| artifact.name == INIT_BIN && !artifact.test)
        .map(|artifact| artifact.executable)
        .with_context(|| format!("cargo built no {INIT_BIN} binary"))?;
    let built = artifacts(object, &["test", "--no-run"])?;
    let tests = suites
        .iter()
        .map(|suite| {
            built
                .iter()
                .find(|artifact| artifact.test && artifact.name == *suite)
                .map(|artifact| artifact.executable.clone())
                .with_context(|| format!("cargo built no test target {suite} in {PACKAGE}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if tests.is_empty() {
        bail!("no suites to run");
    }
    Ok(Binaries { init, tests })
}

struct Artifact {
    name: String,
    test: bool,
    executable: PathBuf,
}

/// Runs `cargo <args> -p netpol-tests` and returns the executables it reports.
fn artifacts(object: &Path, args: &[&str]) -> Result<Vec<Artifact>> {
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .args(["--package", PACKAGE])
        // Diagnostics still reach the terminal rendered; stdout carries the JSON.
        .arg("--message-format=json-render-diagnostics")
        .current_dir(exec::workspace_root())
        .env(EBPF_OBJECT_ENV, object)
        .stderr(Stdio::inherit());
    let stdout = exec::capture(&mut cmd)?;
    parse_artifacts(&stdout)
}

/// The `compiler-artifact` messages with an executable.
fn parse_artifacts(stdout: &str) -> Result<Vec<Artifact>> {
    let mut found = Vec::new();
    for line in stdout.lines().filter(|line| line.starts_with('{')) {
        let message: Value = serde_json::from_str(line)
            .with_context(|| format!("cargo printed a line that is not JSON: {line}"))?;
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"]
            .as_str()
            .context("a compiler-artifact message without target.name")?;
        let test = message["profile"]["test"]
            .as_bool()
            .context("a compiler-artifact message without profile.test")?;
        found.push(Artifact {
            name: name.to_owned(),
            test,
            executable: PathBuf::from(executable),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_read_from_compiler_artifacts() {
        let stdout = r#"{"reason":"compiler-artifact","target":{"name":"aya","kind":["lib"]},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"test_run","kind":["test"]},"profile":{"test":true},"executable":"/t/deps/test_run-1"}
{"reason":"compiler-artifact","target":{"name":"vm-init","kind":["bin"]},"profile":{"test":false},"executable":"/t/vm-init"}
{"reason":"build-finished","success":true}
"#;
        let found = parse_artifacts(stdout).expect("parse");
        let summary: Vec<(&str, bool, &Path)> = found
            .iter()
            .map(|a| (a.name.as_str(), a.test, a.executable.as_path()))
            .collect();
        assert_eq!(
            summary,
            [
                ("test_run", true, Path::new("/t/deps/test_run-1")),
                ("vm-init", false, Path::new("/t/vm-init")),
            ]
        );
    }
}
