//! `cargo xtask demo`: the seed guide's four scenarios on a simulated node.
//!
//! Builds the node (pods as network namespaces, `ext` as other nodes and the internet, iptables
//! DNAT as kube-proxy), starts `netpol-agent` from an objects directory, and plays each
//! scenario step by step with the guide's own policies, printing a reachability table from
//! real probes after each step. Everything is removed at the end, also on failure.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use netpol_tests::{
    agent::{Agent, AgentOptions},
    scenarios::{NODE, World, cluster_yaml, play_step, scenarios, write_atomically},
};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    println!("Building the simulated node (pods as network namespaces; nothing leaves them)...");
    let world = World::build();
    let objects = tempdir()?;
    write_atomically(&objects.0.join("cluster.yaml"), &cluster_yaml())?;

    println!(
        "Starting netpol-agent --objects-dir {} in the node namespace...",
        objects.0.display()
    );
    let mut agent = Agent::start(
        &world.node.node,
        AgentOptions {
            node_name: NODE.to_owned(),
            source: vec!["--objects-dir".to_owned(), objects.0.display().to_string()],
            extra: vec!["--service-cidr".to_owned(), "10.96.0.0/16".to_owned()],
            pin_dir: None,
        },
    )?;
    agent.wait_ready(&world.node.node, Duration::from_secs(30))?;
    println!("The agent is ready.\n");

    let mut failures = 0;
    for scenario in scenarios() {
        println!("=== {} ===", scenario.title);
        for (index, step) in scenario.steps.iter().enumerate() {
            let result = play_step(&world, &objects.0, step, Duration::from_secs(10))?;
            let timing = match result.converged_after {
                Some(after) if !step.files.is_empty() => {
                    format!(" (in effect after {} ms)", after.as_millis())
                }
                _ => String::new(),
            };
            println!("Step {}: {}{timing}", index + 1, step.title);
            print!("{}", result.table());
            if !result.ok() {
                failures += 1;
            }
            println!();
        }
    }
    let metrics = agent.metrics(&world.node.node).unwrap_or_default();
    let interesting: Vec<&str> = metrics
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && (line.starts_with("netpol_denied_packets_total") && !line.ends_with(" 0")
                    || line.starts_with("netpol_endpoints ")
                    || line.starts_with("netpol_objects"))
        })
        .collect();
    println!("From the agent's /metrics:\n  {}", interesting.join("\n  "));
    drop(agent);
    drop(world);
    if failures > 0 {
        bail!("{failures} step(s) did not behave as the guide says");
    }
    println!("\nAll four scenarios behaved as the guide says. Cleaned up.");
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    let path = std::env::temp_dir().join(format!("netpol-demo-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(TempDir(path))
}
