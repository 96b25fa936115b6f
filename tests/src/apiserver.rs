//! A real kube-apiserver (and its etcd) on loopback, for the suites that drive the agent through
//! the Kubernetes API (`handbook/kube-apiserver.md`).
//!
//! [`ApiServer::start`] makes a private temp dir with a CA, a serving cert for 127.0.0.1, a
//! service-account key pair and a static token file, starts etcd and kube-apiserver on free
//! loopback ports and waits for `/readyz`. Two identities are known to the server (see [`Who`]):
//! an admin in `system:masters`, and the agent's service account, which RBAC allows nothing
//! until a test binds it a role. Pods never run (no kubelet, no scheduler): tests create Pods
//! with `spec.nodeName` set and patch their status through the status subresource.
//!
//! The binary comes from [`KUBE_APISERVER_ENV`], which `cargo xtask test` sets (it builds and
//! caches the binary, `cargo xtask kube`); etcd is Debian's `etcd-server`. This module
//! does not build anything and touches nothing outside its temp dir and two loopback ports.
//!
//! Dropping the [`ApiServer`] kills both servers and removes the temp dir, also when a test
//! panics. The servers are started with `PR_SET_PDEATHSIG`, so they also die if the test process
//! is killed: keep the guard on the thread that started it.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::DirBuilderExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use xtask::KUBE_APISERVER_ENV;

/// How long etcd may take to answer `/health`.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long kube-apiserver may take to answer `/readyz` (about 6 s when the machine is idle).
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per server when a port picked as free was taken before the server bound it.
const PORT_ATTEMPTS: u32 = 5;
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Lines of a server log printed when it fails to start.
const LOG_TAIL_LINES: usize = 40;
/// Lines of etcd's log printed when kube-apiserver fails to start (etcd is chatty and rarely
/// the cause).
const ETCD_TAIL_LINES: usize = 10;

/// The namespace and name of the agent's service account. The agent's token authenticates as
/// its user name, so bindings may name it as a `ServiceAccount` subject, as deploy/ does.
pub const AGENT_NAMESPACE: &str = "kube-system";
pub const AGENT_SERVICE_ACCOUNT: &str = "netpol-agent";
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:netpol-agent";
/// The admin's user name (group `system:masters`: allowed everything).
pub const ADMIN_USER: &str = "netpol-test-admin";

/// The Service CIDR the server allocates ClusterIPs from (handbook/test-network.md).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Who a kubeconfig or client speaks as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// `system:masters`: may do anything, for setting up the cluster state.
    Admin,
    /// The agent's service account ([`AGENT_USER`]): only what RBAC bindings grant it.
    Agent,
}

/// A running etcd and kube-apiserver; dropping it stops both and removes their files.
pub struct ApiServer {
    // Field order is drop order: the API server goes before its etcd, the files last.
    /// `None` while stopped ([`ApiServer::stop_apiserver`]).
    apiserver: Option<Server>,
    etcd: Server,
    apiserver_binary: PathBuf,
    etcd_url: String,
    port: u16,
    url: String,
    files: Files,
    dir: TempDir,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` says ok.
    ///
    /// Blocking (it runs its readiness probes on a thread of its own, so it may be called from
    /// inside a tokio runtime too).
    pub fn start() -> Result<Self> {
        let started = Instant::now();
        let apiserver_binary = apiserver_binary()?;
        let etcd_binary = etcd_binary()?;
        let dir = TempDir::new("netpol-apiserver")?;
        let files = Files::write(dir.path())?;

        let (etcd, etcd_url) = start_etcd(&etcd_binary, dir.path())?;
        eprintln!(
            "apiserver: etcd ready at {etcd_url} after {:.1?}",
            started.elapsed()
        );
        let (apiserver, port) =
            start_apiserver(&apiserver_binary, dir.path(), &files, &etcd_url, &etcd)?;
        let url = format!("https://127.0.0.1:{port}");
        eprintln!(
            "apiserver: kube-apiserver ready at {url} after {:.1?}",
            started.elapsed()
        );
        Ok(Self {
            apiserver: Some(apiserver),
            etcd,
            apiserver_binary,
            etcd_url,
            port,
            url,
            files,
            dir,
        })
    }

    /// Kills kube-apiserver (etcd keeps the data): clients get "connection refused", and their
    /// watches' resource versions are too old for the next server's cache (410 Gone).
    pub fn stop_apiserver(&mut self) {
        drop(self.apiserver.take());
    }

    /// Starts kube-apiserver again on its port and waits until it is ready.
    pub fn start_apiserver_again(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let mut apiserver = spawn_apiserver(
            &self.apiserver_binary,
            self.dir.path(),
            &self.files,
            &self.etcd_url,
            self.port,
        )?;
        if let Err(exit) = wait_for_apiserver(&mut apiserver, &self.files.admin_kubeconfig) {
            bail!(
                "kube-apiserver restarted on port {}: {exit}\n{}",
                self.port,
                apiserver.log_tail(LOG_TAIL_LINES)
            );
        }
        self.apiserver = Some(apiserver);
        Ok(())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM file of the CA that signed the serving certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.files.ca_cert
    }

    /// The bearer token of `who`.
    pub fn token(&self, who: Who) -> &str {
        match who {
            Who::Admin => &self.files.admin_token,
            Who::Agent => &self.files.agent_token,
        }
    }

    /// A kubeconfig file speaking as `who` (written by [`ApiServer::start`]; for the agent's
    /// `--kubeconfig` or `KUBECONFIG`).
    pub fn kubeconfig(&self, who: Who) -> PathBuf {
        match who {
            Who::Admin => self.files.admin_kubeconfig.clone(),
            Who::Agent => self.files.agent_kubeconfig.clone(),
        }
    }

    /// A client speaking as `who`, built from [`ApiServer::kubeconfig`].
    pub async fn client(&self, who: Who) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig(who)).await
    }

    /// The temp dir with the certificates, tokens, kubeconfigs and server logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server logs so far (for a test's own failure message).
    pub fn logs(&self) -> String {
        let apiserver = match &self.apiserver {
            Some(apiserver) => apiserver.log_tail(LOG_TAIL_LINES),
            None => "(kube-apiserver stopped)".to_owned(),
        };
        format!("{}\n{apiserver}", self.etcd.log_tail(LOG_TAIL_LINES))
    }
}

fn apiserver_binary() -> Result<PathBuf> {
    let Some(path) = std::env::var_os(KUBE_APISERVER_ENV) else {
        bail!(
            "{KUBE_APISERVER_ENV} is not set: run the tests through `cargo xtask test`, or build \
             the binary with `cargo xtask kube` and export \
             {KUBE_APISERVER_ENV}=<the path it prints>"
        );
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!(
            "{KUBE_APISERVER_ENV}={} is not a file: rebuild it with `cargo xtask kube`",
            path.display()
        );
    }
    Ok(path)
}

fn etcd_binary() -> Result<PathBuf> {
    xtask::find_etcd().with_context(|| {
        format!(
            "no etcd at {} or on PATH: install Debian's etcd-server (`cargo xtask setup` does)",
            xtask::DEBIAN_ETCD
        )
    })
}

/// Everything the servers read, written before they start.
struct Files {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_public: PathBuf,
    service_account_private: PathBuf,
    token_file: PathBuf,
    admin_token: String,
    agent_token: String,
    admin_kubeconfig: PathBuf,
    agent_kubeconfig: PathBuf,
}

impl Files {
    fn write(dir: &Path) -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "netpol-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
            .context("generating the test CA")?;

        let mut serving_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        serving_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving_params
            .signed_by(&serving_key, &ca)
            .context("generating the serving certificate for 127.0.0.1")?;

        // Signs and verifies service-account tokens; 1.20 refuses to start without one.
        let service_account = KeyPair::generate()?;

        let admin_token = random_token()?;
        let agent_token = random_token()?;
        // token,user,uid,"groups": the agent has no groups beyond system:authenticated.
        let tokens = format!(
            "{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
             {agent_token},{AGENT_USER},{AGENT_USER}\n"
        );

        let files = Self {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_public: dir.join("sa.pub"),
            service_account_private: dir.join("sa.key"),
            token_file: dir.join("tokens.csv"),
            admin_token,
            agent_token,
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            agent_kubeconfig: dir.join("agent.kubeconfig"),
        };
        write(&files.ca_cert, &ca.pem())?;
        write(&files.serving_cert, &serving_cert.pem())?;
        write(&files.serving_key, &serving_key.serialize_pem())?;
        write(
            &files.service_account_public,
            &service_account.public_key_pem(),
        )?;
        write(
            &files.service_account_private,
            &service_account.serialize_pem(),
        )?;
        write(&files.token_file, &tokens)?;
        Ok(files)
    }

    /// Kubeconfigs need the port, so they are written once the server is up.
    fn write_kubeconfigs(&self, url: &str) -> Result<()> {
        for (path, user, token) in [
            (&self.admin_kubeconfig, ADMIN_USER, &self.admin_token),
            (&self.agent_kubeconfig, AGENT_USER, &self.agent_token),
        ] {
            write(path, &kubeconfig_text(url, &self.ca_cert, user, token))?;
        }
        Ok(())
    }
}

/// A kubeconfig as JSON (which is YAML, so kubectl and kube read it).
fn kubeconfig_text(url: &str, ca_cert: &Path, user: &str, token: &str) -> String {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "netpol-test",
            "cluster": {"server": url, "certificate-authority": ca_cert},
        }],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{
            "name": user,
            "context": {"cluster": "netpol-test", "user": user},
        }],
        "current-context": user,
    });
    format!("{config:#}\n")
}

async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    kube::Client::try_from(config).with_context(|| format!("a client from {}", path.display()))
}

/// Starts etcd on two free loopback ports, retrying with others if one was taken meanwhile.
/// Returns the server and its client URL.
fn start_etcd(binary: &Path, dir: &Path) -> Result<(Server, String)> {
    let data = dir.join("etcd-data");
    for attempt in 1..=PORT_ATTEMPTS {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        // A failed attempt may have left a half-made data dir.
        if data.exists() {
            fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
        let mut cmd = Command::new(binary);
        cmd.arg("--name=netpol-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=netpol-test={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        let mut etcd = Server::spawn("etcd", cmd, &dir.join("etcd.log"))?;
        match wait_for_etcd(&mut etcd, client_port) {
            Ok(()) => return Ok((etcd, client_url)),
            Err(Exit::PortTaken) if attempt < PORT_ATTEMPTS => {
                eprintln!(
                    "apiserver: etcd found port {client_port} or {peer_port} taken; retrying"
                );
            }
            Err(exit) => {
                let log = etcd.log_tail(LOG_TAIL_LINES);
                eprintln!("{log}");
                bail!(
                    "etcd ({}) on 127.0.0.1:{client_port}: {exit}; its log is printed above",
                    binary.display()
                );
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Starts kube-apiserver on a free loopback port, retrying with another if it was taken
/// meanwhile, and writes the kubeconfigs. Returns the server and its port.
fn start_apiserver(
    binary: &Path,
    dir: &Path,
    files: &Files,
    etcd_url: &str,
    etcd: &Server,
) -> Result<(Server, u16)> {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port()?;
        files.write_kubeconfigs(&format!("https://127.0.0.1:{port}"))?;
        let mut apiserver = spawn_apiserver(binary, dir, files, etcd_url, port)?;
        match wait_for_apiserver(&mut apiserver, &files.admin_kubeconfig) {
            Ok(()) => return Ok((apiserver, port)),
            Err(Exit::PortTaken) if attempt < PORT_ATTEMPTS => {
                eprintln!("apiserver: port {port} was taken; retrying");
            }
            Err(exit) => {
                eprintln!(
                    "{}\n{}",
                    etcd.log_tail(ETCD_TAIL_LINES),
                    apiserver.log_tail(LOG_TAIL_LINES)
                );
                bail!(
                    "kube-apiserver ({}) on 127.0.0.1:{port}: {exit}; the logs are printed above",
                    binary.display()
                );
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Starts kube-apiserver on `port` (not waiting for it).
fn spawn_apiserver(
    binary: &Path,
    dir: &Path,
    files: &Files,
    etcd_url: &str,
    port: u16,
) -> Result<Server> {
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--etcd-servers={etcd_url}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        // 1.20 still serves plain HTTP on 127.0.0.1:8080 unless told not to.
        .arg("--insecure-port=0")
        // Only for files it might generate; the serving cert is given.
        .arg(format!(
            "--cert-dir={}",
            dir.join("apiserver-certs").display()
        ))
        .arg(format!("--tls-cert-file={}", files.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            files.serving_key.display()
        ))
        .arg(format!("--token-auth-file={}", files.token_file.display()))
        .arg("--authorization-mode=RBAC")
        // No controller-manager creates default service accounts, which this plugin wants.
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg(format!(
            "--service-account-key-file={}",
            files.service_account_public.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            files.service_account_private.display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--profiling=false");
    Server::spawn("kube-apiserver", cmd, &dir.join("kube-apiserver.log"))
}

/// Why a server did not become ready.
#[derive(Debug)]
enum Exit {
    /// It exited saying a port was in use: try others.
    PortTaken,
    Exited(std::process::ExitStatus),
    TimedOut(Duration),
    Io(std::io::Error),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortTaken => write!(f, "a port was taken"),
            Self::Exited(status) => write!(f, "exited before it was ready ({status})"),
            Self::TimedOut(after) => write!(f, "not ready after {after:?}"),
            Self::Io(error) => write!(f, "cannot watch the process: {error}"),
        }
    }
}

/// Polls etcd's `/health` over plain HTTP until it reports healthy.
fn wait_for_etcd(etcd: &mut Server, port: u16) -> Result<(), Exit> {
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        etcd.check_running()?;
        if etcd_healthy(port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Exit::TimedOut(ETCD_READY_TIMEOUT));
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

fn etcd_healthy(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.take(4096).read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

/// Polls `/readyz` with the admin's kubeconfig until it answers `ok`. The probes run on a
/// thread with its own runtime, so this works whether or not the caller is inside one.
fn wait_for_apiserver(apiserver: &mut Server, kubeconfig: &Path) -> Result<(), Exit> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Exit::Io)?;
                let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
                loop {
                    apiserver.check_running()?;
                    if runtime.block_on(apiserver_ready(kubeconfig)) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(Exit::TimedOut(APISERVER_READY_TIMEOUT));
                    }
                    std::thread::sleep(PROBE_INTERVAL);
                }
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn apiserver_ready(kubeconfig: &Path) -> bool {
    let Ok(client) = client_from_kubeconfig(kubeconfig).await else {
        return false;
    };
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    let probe = tokio::time::timeout(Duration::from_secs(5), client.request_text(request));
    matches!(probe.await, Ok(Ok(body)) if body.trim() == "ok")
}

/// A child process whose stdout and stderr go to a log file; killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let stdout = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: prctl is async-signal-safe and the closure allocates nothing, as required
        // between fork and exec. The server gets SIGKILL when the thread that started it ends,
        // so a test killed by a timeout leaves no server behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name,
            child,
            log: log.to_owned(),
        })
    }

    /// Fails if the process has exited; [`Exit::PortTaken`] if its log says why.
    fn check_running(&mut self) -> Result<(), Exit> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                if log.contains("address already in use") {
                    Err(Exit::PortTaken)
                } else {
                    Err(Exit::Exited(status))
                }
            }
            Err(error) => Err(Exit::Io(error)),
        }
    }

    /// The last `lines` lines of the log, with a header naming the server and the file.
    fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        format!(
            "--- last {} lines of {} ({}) ---\n{}",
            tail.len(),
            self.name,
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL: the data is thrown away with the temp dir, nothing needs a clean shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private (0700: it holds tokens and keys) temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago (the caller retries if it is taken meanwhile).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener
        .local_addr()
        .context("reading the port bound on 127.0.0.1:0")?
        .port())
}

/// 128 random bits as hex.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .context("reading /dev/urandom for a token")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// What the thread that owns a [`NodeApiServer`]'s processes is asked to do.
enum ServerCommand {
    StopApiserver(mpsc::Sender<()>),
    StartApiserver(mpsc::Sender<Result<(), String>>),
}

/// An [`ApiServer`] run from a thread inside a network namespace (a simulated node), living as
/// long as this guard: its processes are tied to the thread that started them (parent-death
/// signal) and listen on that namespace's loopback, where an agent in it connects.
pub struct NodeApiServer {
    commands: Option<mpsc::Sender<ServerCommand>>,
    thread: Option<std::thread::JoinHandle<()>>,
    netns: String,
    admin: PathBuf,
    agent: PathBuf,
    dir: PathBuf,
}

impl NodeApiServer {
    pub fn start(netns: &crate::netns::Netns) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands_tx, commands_rx) = mpsc::channel::<ServerCommand>();
        let thread = netns.spawn(move || {
            let mut server = match ApiServer::start() {
                Ok(server) => server,
                Err(error) => {
                    let _ = ready_tx.send(Err(format!("{error:#}")));
                    return;
                }
            };
            let paths = (
                server.kubeconfig(Who::Admin),
                server.kubeconfig(Who::Agent),
                server.dir().to_owned(),
            );
            let _ = ready_tx.send(Ok(paths));
            // Until the guard drops the sender.
            while let Ok(command) = commands_rx.recv() {
                match command {
                    ServerCommand::StopApiserver(done) => {
                        server.stop_apiserver();
                        let _ = done.send(());
                    }
                    ServerCommand::StartApiserver(done) => {
                        let started = server
                            .start_apiserver_again()
                            .map_err(|error| format!("{error:#}"));
                        let _ = done.send(started);
                    }
                }
            }
        });
        let (admin, agent, dir) = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the API server thread answers")
            .unwrap_or_else(|error| panic!("the API server starts: {error}"));
        Self {
            commands: Some(commands_tx),
            thread: Some(thread),
            netns: netns.name().to_owned(),
            admin,
            agent,
            dir,
        }
    }

    pub fn kubeconfig(&self, who: Who) -> &Path {
        match who {
            Who::Admin => &self.admin,
            Who::Agent => &self.agent,
        }
    }

    /// kube-apiserver's log (the current run's).
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default()
    }

    /// Kills kube-apiserver; etcd and the data stay.
    pub fn stop_apiserver(&self) {
        let (done_tx, done) = mpsc::channel();
        self.command(ServerCommand::StopApiserver(done_tx));
        done.recv().expect("the API server thread stops the server");
    }

    /// Starts kube-apiserver again on the same port; returns once it is ready.
    pub fn start_apiserver_again(&self) {
        let (done_tx, done) = mpsc::channel();
        self.command(ServerCommand::StartApiserver(done_tx));
        done.recv()
            .expect("the API server thread answers")
            .unwrap_or_else(|error| panic!("kube-apiserver restarts: {error}"));
    }

    fn command(&self, command: ServerCommand) {
        self.commands
            .as_ref()
            .expect("running")
            .send(command)
            .expect("the API server thread is alive");
    }

    /// Runs `f` with an API client as `who`, on a thread in the server's namespace.
    pub fn with_api<R: Send>(&self, who: Who, f: impl AsyncFnOnce(kube::Client) -> R + Send) -> R {
        let kubeconfig = self.kubeconfig(who).to_owned();
        let path = format!("/run/netns/{}", self.netns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::netns::enter(&path);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime");
                    runtime.block_on(async {
                        let client = client_from_kubeconfig(&kubeconfig)
                            .await
                            .expect("an API client");
                        f(client).await
                    })
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for NodeApiServer {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The documents of `kind` in a multi-document YAML text.
pub fn documents<T: serde::de::DeserializeOwned>(text: &str, kind: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            <serde_yaml::Value as serde::Deserialize>::deserialize(document).expect("valid YAML")
        })
        .filter(|value| value.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|value| serde_yaml::from_value(value).expect("a valid object"))
        .collect()
}

fn deploy_rbac() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/rbac.yaml");
    fs::read_to_string(&path).expect("deploy/base/rbac.yaml")
}

/// Applies `deploy/base/rbac.yaml`: what the agent may read. Objects that exist already are kept
/// (so this also restores what [`remove_rbac_bindings`] removed).
pub async fn apply_rbac(admin: kube::Client) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use kube::Api;
    let text = deploy_rbac();
    for role in documents::<ClusterRole>(&text, "ClusterRole") {
        create_or_keep(Api::all(admin.clone()), role).await;
    }
    for binding in documents::<ClusterRoleBinding>(&text, "ClusterRoleBinding") {
        create_or_keep(Api::all(admin.clone()), binding).await;
    }
    for role in documents::<Role>(&text, "Role") {
        create_or_keep(Api::namespaced(admin.clone(), AGENT_NAMESPACE), role).await;
    }
    for binding in documents::<RoleBinding>(&text, "RoleBinding") {
        create_or_keep(Api::namespaced(admin.clone(), AGENT_NAMESPACE), binding).await;
    }
}

async fn create_or_keep<K>(api: kube::Api<K>, object: K)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&kube::api::PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating {:?}: {error}", object.meta().name),
    }
}

/// Deletes the bindings of `deploy/base/rbac.yaml`: the agent may read nothing any more.
pub async fn remove_rbac_bindings(admin: kube::Client) {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
    use kube::{Api, ResourceExt as _, api::DeleteParams};
    let text = deploy_rbac();
    let delete = DeleteParams::default();
    for binding in documents::<ClusterRoleBinding>(&text, "ClusterRoleBinding") {
        Api::<ClusterRoleBinding>::all(admin.clone())
            .delete(&binding.name_any(), &delete)
            .await
            .expect("deleting a ClusterRoleBinding");
    }
    for binding in documents::<RoleBinding>(&text, "RoleBinding") {
        Api::<RoleBinding>::namespaced(admin.clone(), AGENT_NAMESPACE)
            .delete(&binding.name_any(), &delete)
            .await
            .expect("deleting a RoleBinding");
    }
}
