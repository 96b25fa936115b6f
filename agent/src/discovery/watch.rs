//! Following link and route changes: a thread subscribed to the rtnetlink link, IPv4 route and
//! IPv6 route groups tells its caller, debounced, that a new snapshot is due. It does not keep
//! a model of its own: the snapshot is the truth, the notifications only say when to look.

use std::{
    ops::ControlFlow,
    os::{fd::AsRawFd, unix::net::UnixStream},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::{DiscoveryError, netlink};

/// The kernel's receive buffer asked for the watch socket (capped by `net.core.rmem_max`): a
/// node creating many pods at once sends bursts of notifications. An overflow is not fatal, it
/// only turns into a [`WatchEvent::Changed`].
const WATCH_SOCKET_BUFFER: libc::c_int = 4 << 20;
/// At most this many datagrams are read per wake-up, so a flood cannot keep the thread from
/// seeing a stop request or from reporting.
const DATAGRAMS_PER_WAKE: usize = 1024;

/// What a [`watch`] thread reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// Links or main-table routes changed, or notifications were lost: take a new snapshot.
    Changed,
    /// The watcher stopped on this error and reports nothing more; start a new one (after a
    /// backoff) and take a snapshot.
    Failed(DiscoveryError),
}

/// A running watcher thread. Dropping it (or [`Watcher::stop`]) stops the thread and waits for
/// it; this takes at most as long as a running callback.
#[derive(Debug)]
pub struct Watcher {
    /// Closing this end wakes the thread, which then exits.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Whether the thread ended: after [`WatchEvent::Failed`], after the callback returned
    /// `ControlFlow::Break`, or if the callback panicked.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the link and route watcher callback panicked");
        }
    }
}

/// Watches the links and main-table routes (IPv4 and IPv6) of the calling thread's network
/// namespace and calls `on_event` on a thread of its own when they change.
///
/// The socket is opened and subscribed before this function returns, on the calling thread,
/// so it watches the caller's namespace (a socket stays in the namespace it was created in) and
/// every change after the return is reported. So start the watcher first, then take the first
/// [`snapshot`](super::snapshot).
///
/// Debouncing: the first notification of a burst starts a `debounce` window; everything that
/// arrives within it is coalesced into one [`WatchEvent::Changed`] at its end. A change is thus
/// reported at most `debounce` after it happened (plus scheduling), however long the burst.
/// Returning `ControlFlow::Break` from `on_event` stops the watcher (e.g. when the receiver of
/// a channel is gone). `on_event` runs on the watcher thread and should not block for long;
/// with tokio, `Notify::notify_one` or `watch::Sender::send_replace` fit (both coalesce
/// further), with std an `mpsc::Sender`:
///
/// ```no_run
/// use std::{ops::ControlFlow, sync::mpsc, time::Duration};
/// use netpol_agent::discovery::{self, WatchEvent};
///
/// let (changes, changed) = mpsc::channel();
/// let _watcher = discovery::watch(Duration::from_millis(200), move |event| {
///     match changes.send(event) {
///         Ok(()) => ControlFlow::Continue(()),
///         Err(_) => ControlFlow::Break(()),
///     }
/// })?;
/// loop {
///     let interfaces = discovery::snapshot()?;
///     println!("uplinks: {:?}", interfaces.uplinks());
///     let Ok(WatchEvent::Changed) = changed.recv() else { break };
/// }
/// # Ok::<(), discovery::DiscoveryError>(())
/// ```
pub fn watch<F>(debounce: Duration, on_event: F) -> Result<Watcher, DiscoveryError>
where
    F: FnMut(WatchEvent) -> ControlFlow<()> + Send + 'static,
{
    let mut socket =
        Socket::new(NETLINK_ROUTE).map_err(|source| DiscoveryError::Socket { source })?;
    socket
        .bind_auto()
        .map_err(|source| DiscoveryError::Socket { source })?;
    for group in [
        libc::RTNLGRP_LINK,
        libc::RTNLGRP_IPV4_ROUTE,
        libc::RTNLGRP_IPV6_ROUTE,
    ] {
        socket
            .add_membership(group)
            .map_err(|source| DiscoveryError::Subscribe { group, source })?;
    }
    socket
        .set_non_blocking(true)
        .map_err(|source| DiscoveryError::Socket { source })?;
    if let Err(error) = socket.set_rx_buf_sz(WATCH_SOCKET_BUFFER) {
        tracing::debug!(
            error = &error as &dyn std::error::Error,
            "keeping the default receive buffer for the watch socket"
        );
    }
    let (stop, stopped) = UnixStream::pair().map_err(|source| DiscoveryError::Spawn { source })?;
    let thread = std::thread::Builder::new()
        .name("netpol-discovery".to_owned())
        .spawn(move || run(&socket, &stopped, debounce, on_event))
        .map_err(|source| DiscoveryError::Spawn { source })?;
    Ok(Watcher {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The watcher thread: waits for notifications or the stop signal, reports after `debounce`.
fn run(
    socket: &Socket,
    stopped: &UnixStream,
    debounce: Duration,
    mut on_event: impl FnMut(WatchEvent) -> ControlFlow<()>,
) {
    let mut buffer = Vec::new();
    // When the first unreported change of the current burst arrived.
    let mut pending_since: Option<Instant> = None;
    loop {
        let timeout =
            pending_since.map(|since| (since + debounce).saturating_duration_since(Instant::now()));
        let mut fds = [socket.as_raw_fd(), stopped.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        match netlink::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                let _ = on_event(WatchEvent::Failed(DiscoveryError::Watch { source }));
                return;
            }
        }
        let [notifications, stop] = fds;
        if stop.revents != 0 {
            tracing::debug!("link and route watcher stopping");
            return;
        }
        if notifications.revents != 0 {
            match drain(socket, &mut buffer) {
                Ok(false) => {}
                Ok(true) => {
                    pending_since.get_or_insert_with(Instant::now);
                }
                Err(source) => {
                    let _ = on_event(WatchEvent::Failed(DiscoveryError::Watch { source }));
                    return;
                }
            }
        }
        if let Some(since) = pending_since
            && since.elapsed() >= debounce
        {
            pending_since = None;
            if on_event(WatchEvent::Changed).is_break() {
                tracing::debug!("link and route watcher stopped by its callback");
                return;
            }
        }
    }
}

/// Reads the queued notifications; returns whether any of them can change a snapshot.
fn drain(socket: &Socket, buffer: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut changed = false;
    for _ in 0..DATAGRAMS_PER_WAKE {
        match netlink::receive_datagram(socket, buffer) {
            Ok(()) => changed |= netlink::is_relevant(buffer),
            Err(error) => match error.kind() {
                std::io::ErrorKind::WouldBlock => return Ok(changed),
                std::io::ErrorKind::Interrupted => {}
                // A cut datagram was consumed whole; whatever it said, look again.
                std::io::ErrorKind::InvalidData => changed = true,
                _ if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::debug!(
                        "the kernel dropped link or route notifications, a new snapshot catches up"
                    );
                    changed = true;
                }
                _ => return Err(error),
            },
        }
    }
    // More are queued; poll reports the socket readable again at once.
    Ok(changed)
}
