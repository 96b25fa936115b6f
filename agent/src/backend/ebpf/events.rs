//! Drop and audit events from `NP_EVENTS` (a perf event array: ring buffers need 5.8).
//!
//! One perf buffer per online CPU, drained by a thread of its own that polls them all. Each
//! event is logged (rate-limited: a dropping flood must not flood the log), counted and handed
//! to the sink (the `monitor` stream); events the kernel could not deliver because a buffer
//! was full are counted as lost.

use std::{
    net::IpAddr,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::{
    events::{EVENT_AUDIT, PolicyEvent},
    metrics::DropReason,
    policy::DIR_INGRESS,
};
use aya::maps::{
    MapData,
    perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer},
};

use super::EbpfError;

/// Pages per CPU buffer (a power of two).
const PAGES_PER_CPU: usize = 16;
/// Events logged per second at most; the rest are counted and summarised.
const LOGGED_PER_SECOND: u32 = 20;

/// What the reader reports to its owner.
pub trait EventSink: Send + 'static {
    /// `seen` events were read and `lost` were dropped by the kernel since the last call.
    fn count(&self, seen: u64, lost: u64);

    /// One event, as read (must not block: the buffers fill while it waits).
    fn event(&self, event: &PolicyEvent);
}

/// Perf buffers ready to be drained.
pub struct EventReader {
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
}

/// The draining thread; stops when dropped.
pub struct EventThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventThread {
    /// Runs `body` on a thread named `name` until the returned guard drops (`body` returns
    /// when the flag it is given is set).
    pub fn spawn(
        name: &str,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || body(&stop))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EventReader {
    /// Opens one buffer per online CPU of `array`.
    pub(super) fn open(mut array: PerfEventArray<MapData>) -> Result<Self, EbpfError> {
        let cpus = aya::util::online_cpus().map_err(|(path, source)| EbpfError::Pin {
            path: path.into(),
            source,
        })?;
        let mut buffers = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let buffer = array
                .open(cpu, Some(PAGES_PER_CPU))
                .map_err(|source| EbpfError::Events { cpu, source })?;
            buffers.push(buffer);
        }
        Ok(Self { buffers })
    }

    /// Drains the buffers on a thread of its own until the returned guard drops.
    pub fn spawn(self, sink: impl EventSink) -> std::io::Result<EventThread> {
        EventThread::spawn("netpol-events", move |stop| self.drain(stop, &sink))
    }

    fn drain(mut self, stop: &AtomicBool, sink: &impl EventSink) {
        let mut limiter = RateLimit::new();
        while !stop.load(Ordering::Relaxed) {
            let mut fds: Vec<libc::pollfd> = self
                .buffers
                .iter()
                .map(|buffer| libc::pollfd {
                    fd: buffer.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
            if ready <= 0 {
                limiter.flush();
                continue;
            }
            let (mut seen, mut lost) = (0u64, 0u64);
            for buffer in &mut self.buffers {
                if !buffer.readable() {
                    continue;
                }
                buffer.for_each(|event| match event {
                    PerfEvent::Sample { head, tail } => {
                        seen += 1;
                        if let Some(event) = decode(head, tail) {
                            limiter.log(&event);
                            sink.event(&event);
                        }
                    }
                    PerfEvent::Lost { count } => lost += count,
                });
            }
            if lost > 0 {
                tracing::warn!(lost, "drop events lost: the perf buffers were full");
            }
            sink.count(seen, lost);
            limiter.flush();
        }
    }
}

/// A `PolicyEvent` from its (possibly wrapped) bytes.
fn decode(head: &[u8], tail: &[u8]) -> Option<PolicyEvent> {
    const SIZE: usize = std::mem::size_of::<PolicyEvent>();
    let mut bytes = [0u8; SIZE];
    let from_head = head.len().min(SIZE);
    bytes[..from_head].copy_from_slice(&head[..from_head]);
    let from_tail = (SIZE - from_head).min(tail.len());
    bytes[from_head..from_head + from_tail].copy_from_slice(&tail[..from_tail]);
    if from_head + from_tail < SIZE {
        return None;
    }
    // SAFETY: `PolicyEvent` is plain old data (`aya::Pod`) and `bytes` has its exact size;
    // `read_unaligned` copes with the byte array's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PolicyEvent>()) })
}

/// Logs at most [`LOGGED_PER_SECOND`] events a second and summarises the rest.
struct RateLimit {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    fn new() -> Self {
        Self {
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    fn log(&mut self, event: &PolicyEvent) {
        self.roll();
        if self.logged >= LOGGED_PER_SECOND {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let ip = |addr: &agent_common::addr::Addr| {
            addr.to_ip()
                .map_or_else(|| "?".to_owned(), |ip: IpAddr| ip.to_string())
        };
        let reason = DropReason::ALL
            .iter()
            .find(|reason| **reason as u32 == event.reason)
            .map_or("unknown", |reason| reason.name());
        let direction = if event.direction == u32::from(DIR_INGRESS) {
            "ingress"
        } else {
            "egress"
        };
        let audit = event.flags & EVENT_AUDIT != 0;
        tracing::info!(
            target: "netpol::drop",
            src = %ip(&event.src),
            sport = event.sport,
            dst = %ip(&event.dst),
            dport = event.dport,
            protocol = event.protocol,
            endpoint = event.endpoint,
            direction,
            reason,
            audit,
            "{}",
            if audit { "would drop (audit)" } else { "dropped" }
        );
    }

    fn roll(&mut self) {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.flush();
            self.window = Instant::now();
            self.logged = 0;
        }
    }

    fn flush(&mut self) {
        if self.suppressed > 0 && self.window.elapsed() >= Duration::from_secs(1) {
            tracing::info!(target: "netpol::drop", suppressed = self.suppressed, "more drop events not logged");
            self.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_that_wrap_the_ring_are_put_back_together() {
        let event = PolicyEvent {
            sport: 1234,
            dport: 80,
            protocol: 6,
            reason: DropReason::Policy as u32,
            ..PolicyEvent::default()
        };
        // SAFETY: reading the bytes of a plain-old-data value.
        let bytes: [u8; std::mem::size_of::<PolicyEvent>()] =
            unsafe { std::mem::transmute_copy(&event) };
        let (head, tail) = bytes.split_at(10);
        assert_eq!(decode(head, tail), Some(event));
        assert_eq!(decode(head, &tail[..5]), None, "a short sample is skipped");
    }
}
