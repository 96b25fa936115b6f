//! What the chained CNI plugin (`netpol-cni`) and the agent say to each other, and the parts of
//! the CNI spec the plugin reads.
//!
//! One request per connection on the agent's Unix socket: a JSON line from the plugin, a JSON
//! line back. The plugin has no other tie to the agent: it never reads the agent's state.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Where the agent listens unless the plugin's configuration says otherwise (`socket`).
pub const DEFAULT_SOCKET: &str = "/run/netpol/cni.sock";

/// How long ADD waits for the agent to confirm enforcement unless configured
/// (`timeoutSeconds`); kubelet retries a failed ADD.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The plugin's `type` in a conflist.
pub const PLUGIN_TYPE: &str = "netpol-cni";

/// The CNI versions the plugin speaks (it passes the previous result through in the chain's
/// own version).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A sandbox was set up: enforce the pod before answering.
    Add,
    /// A sandbox is gone.
    Del,
    /// Is the pod still enforced?
    Check,
}

/// A pod sandbox, as the runtime described it to the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub operation: Operation,
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID` when the runtime passes it (containerd 1.6 and later do).
    pub uid: Option<String>,
    pub container_id: String,
    /// The pod's addresses, from the previous plugin's result.
    pub addresses: Vec<IpAddr>,
    /// The host side of the pod's link, from the previous plugin's result.
    pub host_interface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// ADD: the pod is enforced. CHECK: it still is. DEL: noted.
    pub ok: bool,
    /// Why not, for the runtime's error message and the pod's events.
    pub message: String,
}

/// Sends `request` to the agent at `socket` and waits for its answer, at most `timeout` in all.
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, String> {
    let stream = UnixStream::connect(socket).map_err(|error| {
        format!(
            "cannot reach the netpol agent at {}: {error}",
            socket.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("setting socket timeouts: {error}"))?;
    let mut line = serde_json::to_string(request).map_err(|error| error.to_string())?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|error| format!("writing to the netpol agent: {error}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|error| format!("the netpol agent did not answer within {timeout:?}: {error}"))?;
    if answer.is_empty() {
        return Err("the netpol agent closed the connection without an answer".to_owned());
    }
    serde_json::from_str(&answer).map_err(|error| format!("unreadable answer {answer:?}: {error}"))
}

/// `CNI_ARGS` (`K1=V1;K2=V2`) as pairs.
pub fn parse_cni_args(args: &str) -> Vec<(String, String)> {
    args.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// The pod's addresses and host interface in a previous result (any supported version:
/// `ips[].address` in CIDR form; the host interface is the one without a `sandbox`).
pub fn addresses_and_host_interface(
    prev_result: &serde_json::Value,
) -> Result<(Vec<IpAddr>, Option<String>), String> {
    let mut addresses = Vec::new();
    for ip in prev_result["ips"].as_array().into_iter().flatten() {
        let text = ip["address"]
            .as_str()
            .ok_or_else(|| format!("prevResult ips entry without address: {ip}"))?;
        let address = text.split('/').next().unwrap_or(text);
        addresses.push(
            address
                .parse()
                .map_err(|_| format!("prevResult address {text:?} is not an IP address"))?,
        );
    }
    let host_interface = prev_result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|interface| interface["sandbox"].as_str().is_none_or(str::is_empty))
        .and_then(|interface| interface["name"].as_str())
        .map(str::to_owned);
    Ok((addresses, host_interface))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_addresses_and_the_host_side_from_a_ptp_result() {
        let result = serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [{"version": "4", "interface": 1, "address": "10.244.0.7/16", "gateway": "10.244.0.1"}],
        });
        let (addresses, host) = addresses_and_host_interface(&result).expect("valid");
        assert_eq!(addresses, vec!["10.244.0.7".parse::<IpAddr>().expect("ip")]);
        assert_eq!(host.as_deref(), Some("veth1a2b3c4d"));
    }

    #[test]
    fn should_reject_a_result_with_a_broken_address() {
        let result = serde_json::json!({"ips": [{"address": "10.244.0/16"}]});
        assert!(addresses_and_host_interface(&result).is_err());
    }

    #[test]
    fn should_split_cni_args() {
        let args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0");
        assert!(args.contains(&("K8S_POD_NAME".to_owned(), "web-0".to_owned())));
        assert_eq!(args.len(), 3);
    }
}
