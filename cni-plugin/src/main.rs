//! `netpol-cni`: a chained CNI plugin, appended to the node's CNI configuration by the agent.
//!
//! ADD holds the pod's start until the agent answers that the pod is enforced (its endpoint
//! programmed with its policies, its host interface attached): the runtime starts the pod's
//! containers only after the whole chain returned, so the pod's first packet meets its
//! policies. If the agent cannot confirm within the timeout, ADD fails with a message saying
//! so, and kubelet retries: an unenforced pod never starts. The previous plugin's result is
//! passed through unchanged. DEL tells the agent (best effort) and always succeeds, as the
//! spec asks; CHECK asks the agent whether the pod is still enforced.
//!
//! Configuration (in the plugin's conflist entry): `socket` (the agent's, default
//! `/run/netpol/cni.sock`) and `timeoutSeconds` (default 10).

use std::{io::Read as _, path::PathBuf, process::ExitCode, time::Duration};

use netpol_cni::{
    DEFAULT_SOCKET, DEFAULT_TIMEOUT, Operation, Request, SUPPORTED_VERSIONS,
    addresses_and_host_interface, ask, parse_cni_args,
};

/// CNI error codes: 4 "invalid necessary environment variables", 6 "failed to decode
/// content", 7 "invalid network config"; 100 and up are the plugin's own.
const CODE_ENV: u32 = 4;
const CODE_DECODE: u32 = 6;
const CODE_CONFIG: u32 = 7;
const CODE_NOT_ENFORCED: u32 = 100;

/// How long DEL waits for the agent: it never fails, so it should not hold the runtime long.
const DEL_TIMEOUT: Duration = Duration::from_secs(2);

struct Failure {
    code: u32,
    message: String,
}

fn fail(code: u32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    if command != "VERSION" && std::io::stdin().read_to_string(&mut stdin).is_err() {
        return report(
            None,
            &fail(CODE_DECODE, "cannot read the configuration on stdin"),
        );
    }
    let config: serde_json::Value = if command == "VERSION" {
        serde_json::Value::Null
    } else {
        match serde_json::from_str(&stdin) {
            Ok(config) => config,
            Err(error) => {
                return report(None, &fail(CODE_DECODE, format!("configuration: {error}")));
            }
        }
    };
    let version = config["cniVersion"].as_str().map(str::to_owned);
    let outcome = match command.as_str() {
        "ADD" => add(&config),
        "DEL" => del(&config),
        "CHECK" => check(&config),
        "VERSION" => {
            println!(
                "{}",
                serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
            );
            Ok(())
        }
        other => Err(fail(
            CODE_ENV,
            format!("CNI_COMMAND {other:?} is not supported"),
        )),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(version.as_deref(), &failure),
    }
}

/// Prints the CNI error object and fails.
fn report(version: Option<&str>, failure: &Failure) -> ExitCode {
    println!(
        "{}",
        serde_json::json!({
            "cniVersion": version.unwrap_or("1.0.0"),
            "code": failure.code,
            "msg": failure.message,
        })
    );
    ExitCode::FAILURE
}

fn add(config: &serde_json::Value) -> Result<(), Failure> {
    let prev_result = &config["prevResult"];
    if !prev_result.is_object() {
        return Err(fail(
            CODE_CONFIG,
            "netpol-cni is a chained plugin: it needs the previous plugin's result (prevResult)",
        ));
    }
    if let Some(request) = request(config, Operation::Add)? {
        let response = ask(&socket(config), &request, timeout(config)).map_err(|error| {
            fail(
                CODE_NOT_ENFORCED,
                format!(
                    "pod {}/{} is not started: its network policies could not be confirmed: \
                     {error}",
                    request.namespace, request.name
                ),
            )
        })?;
        if !response.ok {
            return Err(fail(
                CODE_NOT_ENFORCED,
                format!(
                    "pod {}/{} is not started: the netpol agent could not enforce it: {}",
                    request.namespace, request.name, response.message
                ),
            ));
        }
    }
    // The chain's result, unchanged.
    println!("{prev_result}");
    Ok(())
}

fn del(config: &serde_json::Value) -> Result<(), Failure> {
    // DEL succeeds whatever the agent says or whether it runs: the sandbox is going away.
    if let Ok(Some(request)) = request(config, Operation::Del) {
        let _ = ask(&socket(config), &request, DEL_TIMEOUT);
    }
    Ok(())
}

fn check(config: &serde_json::Value) -> Result<(), Failure> {
    if let Some(request) = request(config, Operation::Check)? {
        let response = ask(&socket(config), &request, timeout(config))
            .map_err(|error| fail(CODE_NOT_ENFORCED, error))?;
        if !response.ok {
            return Err(fail(CODE_NOT_ENFORCED, response.message));
        }
    }
    Ok(())
}

/// The request for the pod this sandbox belongs to; `None` for a sandbox that is no
/// Kubernetes pod (no `K8S_POD_NAME` in `CNI_ARGS`): nothing to enforce.
fn request(config: &serde_json::Value, operation: Operation) -> Result<Option<Request>, Failure> {
    let args = parse_cni_args(&std::env::var("CNI_ARGS").unwrap_or_default());
    let arg = |key: &str| {
        args.iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty())
    };
    let (Some(namespace), Some(name)) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) else {
        return Ok(None);
    };
    let container_id = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    if container_id.is_empty() && operation != Operation::Del {
        return Err(fail(CODE_ENV, "CNI_CONTAINERID is not set"));
    }
    let (addresses, host_interface) = if config["prevResult"].is_object() {
        addresses_and_host_interface(&config["prevResult"])
            .map_err(|error| fail(CODE_CONFIG, error))?
    } else {
        (Vec::new(), None)
    };
    Ok(Some(Request {
        operation,
        namespace,
        name,
        uid: arg("K8S_POD_UID"),
        container_id,
        addresses,
        host_interface,
    }))
}

fn socket(config: &serde_json::Value) -> PathBuf {
    PathBuf::from(config["socket"].as_str().unwrap_or(DEFAULT_SOCKET))
}

fn timeout(config: &serde_json::Value) -> Duration {
    config["timeoutSeconds"]
        .as_u64()
        .filter(|seconds| *seconds > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}
