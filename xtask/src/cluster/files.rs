//! What the cluster's components read: certificates, tokens, kubeconfigs and configuration
//! files, all under the cluster directory.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{
    API_PORT, CNI_NETWORK, Layout, NODE_IP, NODE_NAME, PAUSE_IMAGE, POD_CIDR, SERVICE_CIDR,
};

/// Debian's `containernetworking-plugins`.
const DEBIAN_CNI_PLUGINS: &str = "/usr/lib/cni";

/// Who talks to the API server, each with a static token: `(name, user, groups)`. The node
/// and the control plane get the identities the Node authorizer and the bootstrap RBAC roles
/// expect.
const IDENTITIES: &[(&str, &str, &str)] = &[
    ("admin", "netpol-admin", "system:masters"),
    ("kubelet", "system:node:netpol-node", "system:nodes"),
    (
        "kube-controller-manager",
        "system:kube-controller-manager",
        "",
    ),
    ("kube-scheduler", "system:kube-scheduler", ""),
    ("kube-proxy", "system:kube-proxy", ""),
];

/// Writes the PKI, the token file and one kubeconfig per identity.
pub fn write_credentials(layout: &Layout) -> Result<()> {
    let pki = &layout.pki;
    fs::create_dir_all(pki).with_context(|| format!("creating {}", pki.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "netpol-cluster-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
        .context("generating the cluster CA")?;
    write(&pki.join("ca.crt"), &ca.pem())?;

    // The names the API server is reached by: the node address, the `kubernetes` Service's
    // ClusterIP (in-cluster clients such as the agent) and loopback.
    let mut serving = CertificateParams::new(vec![
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
        "localhost".to_owned(),
    ])?;
    for address in [NODE_IP, super::KUBERNETES_SERVICE_IP, "127.0.0.1"] {
        serving.subject_alt_names.push(SanType::IpAddress(
            address.parse().context("a built-in address")?,
        ));
    }
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .context("generating the API server's serving certificate")?;
    write(&pki.join("apiserver.crt"), &serving_cert.pem())?;
    write(&pki.join("apiserver.key"), &serving_key.serialize_pem())?;

    // The API server's client certificate towards kubelets (logs, exec).
    let mut kubelet_client = CertificateParams::new(Vec::<String>::new())?;
    kubelet_client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    kubelet_client
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    kubelet_client.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    kubelet_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = kubelet_client
        .signed_by(&client_key, &ca)
        .context("generating the kubelet client certificate")?;
    write(
        &pki.join("apiserver-kubelet-client.crt"),
        &client_cert.pem(),
    )?;
    write(
        &pki.join("apiserver-kubelet-client.key"),
        &client_key.serialize_pem(),
    )?;

    // Signs service-account tokens (API server) and the controller-manager's token secrets.
    let service_account = KeyPair::generate()?;
    write(&pki.join("sa.pub"), &service_account.public_key_pem())?;
    write(&pki.join("sa.key"), &service_account.serialize_pem())?;

    let mut tokens = String::new();
    for (name, user, groups) in IDENTITIES {
        let token = random_token()?;
        tokens.push_str(&format!("{token},{user},{user},\"{groups}\"\n"));
        write(
            &layout.kubeconfig(name),
            &kubeconfig_text(&pki.join("ca.crt"), user, &token),
        )?;
    }
    write(&pki.join("tokens.csv"), &tokens)
}

fn kubeconfig_text(ca_cert: &Path, user: &str, token: &str) -> String {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "netpol-cluster",
            "cluster": {
                "server": format!("https://{NODE_IP}:{API_PORT}"),
                "certificate-authority": ca_cert,
            },
        }],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{
            "name": "netpol-cluster",
            "context": {"cluster": "netpol-cluster", "user": user},
        }],
        "current-context": "netpol-cluster",
    });
    config.to_string()
}

/// containerd 1.6 with everything it keeps under the cluster directory.
pub fn write_containerd_config(layout: &Layout) -> Result<()> {
    let dir = &layout.containerd;
    let text = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters this machine does not use would only log errors.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # The sandbox lacks CAP_SYS_RESOURCE: without this runc cannot lower oom_score_adj and dies.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = layout.containerd_socket().display(),
        pause = PAUSE_IMAGE,
        cni_conf = layout.cni_conf_dir().display(),
        cni_bin = layout.cni_bin_dir().display(),
    );
    write(&layout.containerd_config(), &text)
}

/// `ptp` + `host-local`: a /32 per pod and a routed host-side veth, the shape Terway gives.
/// The plugins are Debian's (`/usr/lib/cni`), linked into a directory of the cluster's own,
/// where the agent's DaemonSet installs its chained plugin as it does on any node.
pub fn write_cni_config(layout: &Layout) -> Result<()> {
    let bin = layout.cni_bin_dir();
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for entry in
        fs::read_dir(DEBIAN_CNI_PLUGINS).with_context(|| format!("reading {DEBIAN_CNI_PLUGINS}"))?
    {
        let plugin = entry
            .with_context(|| format!("reading {DEBIAN_CNI_PLUGINS}"))?
            .path();
        if let Some(name) = plugin.file_name() {
            std::os::unix::fs::symlink(&plugin, bin.join(name))
                .with_context(|| format!("linking {} into {}", plugin.display(), bin.display()))?;
        }
    }
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "ptp",
            "ipMasq": false,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": layout.dir.join("cni").join("ipam"),
            },
        }],
    });
    write(
        &layout.cni_conf_dir().join("10-netpol-cluster.conflist"),
        &serde_json::to_string_pretty(&conflist)?,
    )
}

/// kubelet 1.20: cgroupfs, no swap check, hand-loaded images never collected, x509 clients.
pub fn write_kubelet_config(layout: &Layout) -> Result<()> {
    let config = serde_json::json!({
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": false,
        // There is no registry to pull an image from again.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "authentication": {
            "x509": {"clientCAFile": layout.pki.join("ca.crt")},
            "webhook": {"enabled": false},
            "anonymous": {"enabled": false},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "resolvConf": layout.dir.join("resolv.conf"),
        "serializeImagePulls": false,
        "maxPods": 250,
    });
    write(&layout.dir.join("resolv.conf"), "")?;
    write(
        &layout.dir.join("kubelet-config.yaml"),
        &serde_json::to_string_pretty(&config)?,
    )
}

/// kube-proxy in iptables mode, writing no machine-wide conntrack sysctl.
pub fn write_kube_proxy_config(layout: &Layout) -> Result<()> {
    let config = serde_json::json!({
        "kind": "KubeProxyConfiguration",
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": layout.kubeconfig("kube-proxy")},
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    });
    write(
        &layout.dir.join("kube-proxy-config.yaml"),
        &serde_json::to_string_pretty(&config)?,
    )
}

/// The ranges the components are started with, for `status`.
pub fn ranges() -> String {
    format!("pods {POD_CIDR}, Services {SERVICE_CIDR}")
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

pub fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
