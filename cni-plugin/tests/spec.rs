//! The plugin binary against the CNI spec's expectations, with a stand-in agent on a socket:
//! ADD passes the previous result through unchanged once the agent confirms, and fails with
//! a CNI error when it cannot; DEL always succeeds (idempotent, agent or not); CHECK asks the
//! agent; VERSION lists the supported versions.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
};

use netpol_cni::{Operation, Request, Response};

const PLUGIN: &str = env!("CARGO_BIN_EXE_netpol-cni");

/// A stand-in agent answering `ok` to every request, reporting what it received.
struct Agent {
    socket: PathBuf,
    requests: mpsc::Receiver<Request>,
}

impl Agent {
    fn start(name: &str, ok: bool) -> Self {
        let dir =
            std::env::temp_dir().join(format!("netpol-cni-spec-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("cni.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind");
        let (tx, requests) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let request: Request = serde_json::from_str(&line).expect("a request");
                let _ = tx.send(request);
                let response = Response {
                    ok,
                    message: if ok {
                        String::new()
                    } else {
                        "map full".to_owned()
                    },
                };
                let mut text = serde_json::to_string(&response).expect("json");
                text.push('\n');
                let _ = (&stream).write_all(text.as_bytes());
            }
        });
        Self { socket, requests }
    }
}

fn prev_result() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "veth0a1b2c3d", "mac": "aa:bb:cc:dd:ee:ff"},
            {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/cni-x"}
        ],
        "ips": [{"version": "4", "interface": 1, "address": "10.244.0.9/16", "gateway": "10.244.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn config(socket: &Path, with_prev: bool) -> String {
    let mut config = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "pods",
        "type": "netpol-cni",
        "socket": socket,
        "timeoutSeconds": 2,
    });
    if with_prev {
        config["prevResult"] = prev_result();
    }
    config.to_string()
}

/// Runs the plugin; (exit success, stdout).
fn plugin(command: &str, stdin: &str) -> (bool, String) {
    let mut child = Command::new(PLUGIN)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", "/var/run/netns/cni-x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=1234;K8S_POD_INFRA_CONTAINER_ID=c0ffee",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("plugin runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("plugin ends");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn add_passes_the_previous_result_through_once_the_agent_confirms() {
    let agent = Agent::start("add", true);
    let (ok, stdout) = plugin("ADD", &config(&agent.socket, true));
    assert!(ok, "{stdout}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("a result");
    assert_eq!(result, prev_result(), "the chain's result, unchanged");
    let request = agent.requests.recv().expect("the agent was asked");
    assert_eq!(request.operation, Operation::Add);
    assert_eq!(
        (request.namespace.as_str(), request.name.as_str()),
        ("shop", "web-0")
    );
    assert_eq!(request.uid.as_deref(), Some("1234"));
    assert_eq!(
        request.addresses,
        vec!["10.244.0.9".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(request.host_interface.as_deref(), Some("veth0a1b2c3d"));
}

#[test]
fn add_fails_with_a_cni_error_when_the_agent_refuses_or_is_absent() {
    let agent = Agent::start("refuse", false);
    let (ok, stdout) = plugin("ADD", &config(&agent.socket, true));
    assert!(!ok);
    let error: serde_json::Value = serde_json::from_str(&stdout).expect("an error object");
    assert_eq!(error["code"], 100);
    assert_eq!(error["cniVersion"], "0.4.0");
    assert!(
        error["msg"].as_str().expect("msg").contains("map full"),
        "{stdout}"
    );

    let (ok, stdout) = plugin("ADD", &config(Path::new("/nonexistent/netpol.sock"), true));
    assert!(!ok);
    let error: serde_json::Value = serde_json::from_str(&stdout).expect("an error object");
    assert!(
        error["msg"]
            .as_str()
            .expect("msg")
            .contains("cannot reach the netpol agent"),
        "{stdout}"
    );
}

#[test]
fn add_without_a_previous_result_is_a_configuration_error() {
    let agent = Agent::start("noprev", true);
    let (ok, stdout) = plugin("ADD", &config(&agent.socket, false));
    assert!(!ok);
    let error: serde_json::Value = serde_json::from_str(&stdout).expect("an error object");
    assert_eq!(error["code"], 7);
}

#[test]
fn del_succeeds_with_or_without_the_agent_and_twice() {
    let agent = Agent::start("del", true);
    for _ in 0..2 {
        let (ok, stdout) = plugin("DEL", &config(&agent.socket, true));
        assert!(ok, "{stdout}");
        assert!(stdout.trim().is_empty(), "DEL prints nothing: {stdout}");
    }
    assert_eq!(
        agent.requests.recv().expect("told").operation,
        Operation::Del
    );
    let (ok, _) = plugin("DEL", &config(Path::new("/nonexistent/netpol.sock"), false));
    assert!(ok, "DEL never fails");
}

#[test]
fn check_asks_the_agent() {
    let agent = Agent::start("check-ok", true);
    let (ok, stdout) = plugin("CHECK", &config(&agent.socket, true));
    assert!(ok && stdout.trim().is_empty(), "{stdout}");
    assert_eq!(
        agent.requests.recv().expect("asked").operation,
        Operation::Check
    );
    let refusing = Agent::start("check-no", false);
    let (ok, _) = plugin("CHECK", &config(&refusing.socket, true));
    assert!(!ok);
}

#[test]
fn version_lists_the_supported_versions() {
    let (ok, stdout) = plugin("VERSION", "");
    assert!(ok);
    let version: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let supported = version["supportedVersions"].as_array().expect("list");
    for wanted in ["0.3.1", "0.4.0", "1.0.0"] {
        assert!(supported.iter().any(|v| v == wanted), "{stdout}");
    }
}
