//! What the agent suites that read an objects directory share: the directory, starting the
//! agent on it, waiting for a condition, reading a metric, and playing every seed scenario.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    agent::{Agent, AgentOptions},
    netns::SimulatedNode,
    scenarios::{NODE, World, cluster_yaml, play_step, scenarios, write_atomically},
};

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary objects directory holding the world's namespaces and pods; removed on drop.
pub struct ObjectsDir(pub PathBuf);

impl ObjectsDir {
    pub fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("netpol-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("objects dir");
        write_atomically(&path.join("cluster.yaml"), &cluster_yaml()).expect("cluster objects");
        Self(path)
    }

    pub fn write(&self, name: &str, content: &str) {
        write_atomically(&self.0.join(name), content).expect("write object file");
    }
}

impl Drop for ObjectsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the agent on `objects` in the world's node (with `extra` flags besides the Service
/// range) and waits until it is ready.
pub fn start_agent(
    world: &World,
    objects: &ObjectsDir,
    extra: &[&str],
    pin_dir: Option<PathBuf>,
) -> Agent {
    start_agent_on(&world.node, objects, extra, pin_dir)
}

/// [`start_agent`] on any simulated node.
pub fn start_agent_on(
    node: &SimulatedNode,
    objects: &ObjectsDir,
    extra: &[&str],
    pin_dir: Option<PathBuf>,
) -> Agent {
    let mut flags: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
    flags.extend(["--service-cidr".to_owned(), "10.96.0.0/16".to_owned()]);
    let mut agent = Agent::start(
        &node.node,
        AgentOptions {
            node_name: NODE.to_owned(),
            source: vec!["--objects-dir".to_owned(), objects.0.display().to_string()],
            extra: flags,
            pin_dir,
        },
    )
    .expect("the agent starts");
    agent
        .wait_ready(&node.node, READY_TIMEOUT)
        .expect("the agent gets ready");
    agent
}

/// `kube-system/eni-config` with `disable_network_policy` set to `value`, as YAML.
pub fn eni_config(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: eni-config\n  namespace: kube-system\ndata:\n  disable_network_policy: \"{value}\"\n"
    )
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; returns how long it took.
pub fn within(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The sum of every sample of the `/metrics` text whose line starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Plays every step of the four seed scenarios and asserts each.
pub fn play_all(world: &World, objects: &ObjectsDir, agent: &Agent) {
    for scenario in scenarios() {
        for step in &scenario.steps {
            let result = play_step(world, &objects.0, step, STEP_TIMEOUT).expect("step runs");
            assert!(
                result.ok(),
                "{} / {}:\n{}\nagent log:\n{}",
                scenario.title,
                step.title,
                result.table(),
                agent.log_text()
            );
        }
    }
}
