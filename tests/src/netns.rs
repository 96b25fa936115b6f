//! Network namespaces for tests, following `handbook/test-network.md`: a simulated node, pods
//! joined to it by veths, and an `ext` namespace playing other nodes and the internet with
//! documentation addresses. Nothing is linked to the root namespace and no packet leaves these
//! namespaces. Every namespace is deleted when its guard drops, also when a test panics.
//!
//! Code runs inside a namespace through [`Netns::run`]: a scoped thread that `setns`es into it
//! first (a network namespace is per thread), so probes and servers are plain sockets.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long a probe waits for a connection or an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` (or another command) and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace that is deleted on drop (unless it is someone else's).
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// A new namespace named `np<pid>-<n>-<role>` with loopback up.
    pub fn new(role: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("np{}-{id}-{role}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let netns = Self { name, owned: true };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// A namespace that exists already and is left in place on drop (the real cluster's).
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(&path);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `f` on a thread of its own inside this namespace, for work that must outlive the
    /// caller's scope (a process whose parent-death signal is tied to the thread that started
    /// it, say).
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// A TCP and UDP server on `port` (IPv4) inside this namespace that answers every
    /// connection or datagram with `reply`. Stops when the returned guard drops.
    pub fn serve(&self, port: u16, reply: &'static str) -> Server {
        self.serve_at(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port, reply)
    }

    /// [`Netns::serve`] on the address `at` (`::` for IPv6).
    pub fn serve_at(&self, at: IpAddr, port: u16, reply: &'static str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", self.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                enter(&path);
                let tcp = TcpListener::bind((at, port)).expect("bind TCP server");
                let udp = UdpSocket::bind((at, port)).expect("bind UDP server");
                tcp.set_nonblocking(true).expect("nonblocking listener");
                udp.set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("UDP timeout");
                ready_tx.send(()).expect("signal readiness");
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut stream, _)) = tcp.accept() {
                        let _ = stream.write_all(reply.as_bytes());
                    }
                    if let Ok((_, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(reply.as_bytes(), from);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server started");
        Server {
            stop,
            thread: Some(thread),
        }
    }

    /// A TCP echo server on `port` (for [`Stream`]): every connection gets a thread that echoes
    /// until the peer closes. Stops accepting when the guard drops.
    pub fn serve_echo(&self, port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", self.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                enter(&path);
                let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind echo server");
                listener
                    .set_nonblocking(true)
                    .expect("nonblocking listener");
                ready_tx.send(()).expect("signal readiness");
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 64];
                                while let Ok(n) = stream.read(&mut buf) {
                                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server started");
        Server {
            stop,
            thread: Some(thread),
        }
    }

    /// Whether a TCP connection to `dst:port` from inside this namespace is answered.
    pub fn tcp_probe(&self, dst: IpAddr, port: u16) -> bool {
        self.tcp_probe_within(dst, port, PROBE_TIMEOUT)
    }

    /// [`Netns::tcp_probe`] with another timeout (latency measurements probe often).
    pub fn tcp_probe_within(&self, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        self.run(|| {
            let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout)
            else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(timeout));
            let mut answer = [0u8; 16];
            matches!(stream.read(&mut answer), Ok(n) if n > 0)
        })
    }

    /// Like [`Netns::tcp_probe`], from the local address `src` (a namespace holding several
    /// addresses, such as `ext` playing many outside hosts).
    pub fn tcp_probe_from(&self, src: IpAddr, dst: IpAddr, port: u16) -> bool {
        self.run(|| {
            let domain = match dst {
                IpAddr::V4(_) => socket2::Domain::IPV4,
                IpAddr::V6(_) => socket2::Domain::IPV6,
            };
            let Ok(socket) = socket2::Socket::new(domain, socket2::Type::STREAM, None) else {
                return false;
            };
            if socket.bind(&SocketAddr::new(src, 0).into()).is_err() {
                return false;
            }
            if socket
                .connect_timeout(&SocketAddr::new(dst, port).into(), PROBE_TIMEOUT)
                .is_err()
            {
                return false;
            }
            let mut stream: TcpStream = socket.into();
            let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut answer = [0u8; 16];
            matches!(stream.read(&mut answer), Ok(n) if n > 0)
        })
    }

    /// Whether a UDP datagram to `dst:port` from inside this namespace is answered.
    pub fn udp_probe(&self, dst: IpAddr, port: u16) -> bool {
        self.udp_probe_within(dst, port, PROBE_TIMEOUT)
    }

    /// [`Netns::udp_probe`] with another timeout.
    pub fn udp_probe_within(&self, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        self.run(|| {
            let bind: SocketAddr = match dst {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let Ok(socket) = UdpSocket::bind(bind) else {
                return false;
            };
            let _ = socket.set_read_timeout(Some(timeout));
            if socket
                .send_to(b"probe", SocketAddr::new(dst, port))
                .is_err()
            {
                return false;
            }
            let mut answer = [0u8; 16];
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut answer) {
                    // The answer may come from the Service address (un-DNATed) or the backend.
                    let _ = from;
                    return n > 0;
                }
            }
            false
        })
    }
}

/// A TCP connection kept open from inside a namespace, exchanging a byte every
/// [`Stream::INTERVAL`] with an echo server and counting the exchanges that failed.
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl Stream {
    pub const INTERVAL: Duration = Duration::from_millis(50);

    /// Opens the connection (panics if it cannot) and starts exchanging.
    pub fn open(netns: &Netns, dst: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", netns.name());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                enter(&path);
                let mut stream =
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), PROBE_TIMEOUT)
                        .expect("the stream connects");
                stream
                    .set_read_timeout(Some(PROBE_TIMEOUT))
                    .expect("read timeout");
                ready_tx.send(()).expect("signal readiness");
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut byte = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    let exchanged =
                        stream.write_all(b"x").is_ok() && matches!(stream.read(&mut byte), Ok(1));
                    if exchanged {
                        ok += 1
                    } else {
                        failed += 1
                    }
                    std::thread::sleep(Self::INTERVAL);
                }
                (ok, failed)
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("stream opened");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns (exchanges that worked, exchanges that failed).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or((0, u64::MAX))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A running test server; stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|error| panic!("open {path}: {error}"));
    // SAFETY: `file` is an open namespace file; setns only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// The address plan of the simulated node (handbook/test-network.md).
pub mod plan {
    /// The node's uplink address and its peer in `ext`.
    pub const NODE_UPLINK: &str = "192.0.2.1";
    pub const EXT_UPLINK: &str = "192.0.2.254";
    /// The link-local gateway every pod routes through (proxy ARP on the host veth).
    pub const POD_GATEWAY: &str = "169.254.1.1";
    /// The node's uplink interface.
    pub const UPLINK: &str = "uplink0";
}

/// A pod: its namespace, address and the host side of its veth in the node namespace.
pub struct Pod {
    pub netns: Netns,
    pub ip: IpAddr,
    pub host_veth: String,
}

/// A simulated node: the `node` namespace with ip_forward on, its pods, and `ext` behind the
/// uplink holding remote pods and "internet" hosts.
pub struct SimulatedNode {
    pub node: Netns,
    pub ext: Netns,
    pub pods: Vec<Pod>,
}

impl SimulatedNode {
    /// A node whose uplink leads to `ext`, which answers for `ext_addresses` (remote pods,
    /// documentation-range internet hosts) and routes `local_pod_cidr` back to the node.
    pub fn new(local_pod_cidr: &str, ext_addresses: &[&str]) -> Self {
        let node = Netns::new("node");
        let ext = Netns::new("ext");
        node.sysctl("net.ipv4.ip_forward", "1");
        ext.sysctl("net.ipv4.ip_forward", "1");
        node.ip(&[
            "link",
            "add",
            plan::UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            "ext0",
            "netns",
            ext.name(),
        ]);
        node.ip(&[
            "addr",
            "add",
            &format!("{}/24", plan::NODE_UPLINK),
            "dev",
            plan::UPLINK,
        ]);
        node.ip(&["link", "set", plan::UPLINK, "up"]);
        node.ip(&["route", "add", "default", "via", plan::EXT_UPLINK]);
        ext.ip(&[
            "addr",
            "add",
            &format!("{}/24", plan::EXT_UPLINK),
            "dev",
            "ext0",
        ]);
        ext.ip(&["link", "set", "ext0", "up"]);
        ext.ip(&["route", "add", local_pod_cidr, "via", plan::NODE_UPLINK]);
        for address in ext_addresses {
            ext.ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"]);
        }
        Self {
            node,
            ext,
            pods: Vec::new(),
        }
    }

    /// Adds a pod with address `ip` (IPv4) and returns its index.
    pub fn add_pod(&mut self, ip: &str) -> usize {
        let index = self.pods.len();
        let netns = Netns::new(&format!("pod{index}"));
        // Terway names host-side veths `cali` + 11 hex characters.
        let host_veth = format!("cali{:011x}", 0x5ee_d000_0000u64 + index as u64);
        self.link_pod(&netns, &host_veth, ip, None);
        self.pods.push(Pod {
            netns,
            ip: ip.parse().expect("pod address"),
            host_veth,
        });
        index
    }

    /// Deletes pod `index`'s veth and makes it again, its host side with interface index
    /// `ifindex` (as a rebuilt pod network that reuses an index would have it).
    pub fn relink_pod(&self, index: usize, ifindex: &str) {
        let pod = &self.pods[index];
        self.node.ip(&["link", "del", &pod.host_veth]);
        self.link_pod(
            &pod.netns,
            &pod.host_veth,
            &pod.ip.to_string(),
            Some(ifindex),
        );
    }

    /// The routed pod link: a veth from `host_veth` (with interface index `ifindex` if given)
    /// to `eth0` in `netns`, proxy ARP for the link-local gateway, a /32 route each way.
    fn link_pod(&self, netns: &Netns, host_veth: &str, ip: &str, ifindex: Option<&str>) {
        let mut add = vec!["link", "add", host_veth];
        if let Some(ifindex) = ifindex {
            add.extend(["index", ifindex]);
        }
        add.extend([
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]);
        self.node.ip(&add);
        self.node.ip(&["link", "set", host_veth, "up"]);
        self.node
            .sysctl(&format!("net.ipv4.conf.{host_veth}.proxy_arp"), "1");
        // Answer the pod's ARP for the gateway at once (the default delays up to 0.8 s,
        // longer than a probe's first try).
        self.node
            .sysctl(&format!("net.ipv4.neigh.{host_veth}.proxy_delay"), "0");
        self.node
            .ip(&["route", "add", &format!("{ip}/32"), "dev", host_veth]);
        netns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        netns.ip(&["link", "set", "eth0", "up"]);
        netns.ip(&[
            "route",
            "add",
            plan::POD_GATEWAY,
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        netns.ip(&[
            "route",
            "add",
            "default",
            "via",
            plan::POD_GATEWAY,
            "dev",
            "eth0",
        ]);
    }

    /// kube-proxy's part: DNAT `vip:port` (TCP and UDP) to `backend:port`, for forwarded and
    /// node-originated traffic (IPv4 or IPv6, as the addresses are).
    pub fn add_service(&self, vip: &str, port: u16, backend: &str) {
        let (tool, destination) = if vip.contains(':') {
            ("ip6tables", format!("[{backend}]:{port}"))
        } else {
            ("iptables", format!("{backend}:{port}"))
        };
        let port = port.to_string();
        for chain in ["PREROUTING", "OUTPUT"] {
            for protocol in ["tcp", "udp"] {
                self.node.exec(
                    tool,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        chain,
                        "-d",
                        vip,
                        "-p",
                        protocol,
                        "--dport",
                        &port,
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &destination,
                    ],
                );
            }
        }
    }
}

/// The link-local gateway of IPv6 pods: the host side of every pod veth holds it, as Calico's
/// `fe80::ecee:eeff:feee:eeee` on each host veth.
pub const POD_GATEWAY_V6: &str = "fe80::1";

impl SimulatedNode {
    /// Adds an IPv6-only pod with address `ip` and returns its index: a veth named as in
    /// [`Self::add_pod`], a /128 route to the pod through it in the node, and in the pod the
    /// address as /128 with a default route via [`POD_GATEWAY_V6`] on the host side. Turns on
    /// IPv6 forwarding in the node. Addresses skip duplicate address detection, so they are
    /// usable at once.
    pub fn add_pod_v6(&mut self, ip: &str) -> usize {
        let index = self.pods.len();
        let netns = Netns::new(&format!("pod{index}"));
        let host_veth = format!("cali{:011x}", 0x5ee_d000_0000u64 + index as u64);
        self.node.sysctl("net.ipv6.conf.all.forwarding", "1");
        self.node.ip(&[
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]);
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{POD_GATEWAY_V6}/64"),
            "dev",
            &host_veth,
            "nodad",
        ]);
        self.node.ip(&["link", "set", &host_veth, "up"]);
        self.node.ip(&[
            "-6",
            "route",
            "add",
            &format!("{ip}/128"),
            "dev",
            &host_veth,
        ]);
        netns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip}/128"),
            "dev",
            "eth0",
            "nodad",
        ]);
        netns.ip(&["link", "set", "eth0", "up"]);
        netns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            POD_GATEWAY_V6,
            "dev",
            "eth0",
        ]);
        self.pods.push(Pod {
            netns,
            ip: ip.parse().expect("pod address"),
            host_veth,
        });
        index
    }
}
