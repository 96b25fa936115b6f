//! PID 1 of the guests that `cargo xtask vm` boots (see `xtask/src/vm/`).
//!
//! It owns the guest's whole life: mount the pseudo filesystems, bring up `lo`, load the kernel
//! modules the suites need, run every test binary under `/tests` one after another (as root,
//! `--test-threads=1`), then print exactly one sentinel line, `init: success` or
//! `init: failure`, and power the machine off. xtask reads the console for that line; any other
//! ending (a panic here, a kernel panic, a hang) shows up there as a missing sentinel.
//!
//! The initramfs layout it expects (written by `xtask/src/vm/initramfs.rs`):
//! - `/tests/*`: the test binaries, with their shared libraries at their host paths;
//! - `/modules/order`: module file names, one per line, dependencies first; the files sit
//!   beside it, already decompressed;
//! - `/dev/console`, so this process starts with a console on fds 0, 1 and 2.
//!
//! It does not decide what a test needs: tests still check for root and skip or fail by
//! themselves.

use std::{
    ffi::CString,
    fs,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

const TESTS_DIR: &str = "/tests";
const MODULES_DIR: &str = "/modules";
const SUCCESS: &str = "init: success";
const FAILURE: &str = "init: failure";

fn main() {
    // Never reach `power_off` outside a VM: as root on a host it would switch the host off.
    if std::process::id() != 1 {
        eprintln!("vm-init: not PID 1; this is the init of `cargo xtask vm` guests, not a tool");
        std::process::exit(2);
    }
    // The firmware leaves its last line unterminated: start on a fresh one.
    println!();
    let passed = match run() {
        Ok(passed) => passed,
        Err(error) => {
            println!("init: error: {error:#}");
            false
        }
    };
    println!("{}", if passed { SUCCESS } else { FAILURE });
    let _ = io::stdout().flush();
    power_off();
}

/// Sets the machine up and runs the suites; `Ok(false)` when a suite failed.
fn run() -> Result<bool> {
    mount_filesystems()?;
    if let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") {
        println!("init: kernel {}", release.trim());
    }
    print_memlock_limit();
    bring_up_loopback()?;
    load_modules()?;
    run_suites()
}

fn mount_filesystems() -> Result<()> {
    // (source, target, type, required). Debian kernels have all of them; cgroup2 is only a
    // convenience for later suites, so a kernel without it does not stop the run.
    let mounts = [
        ("proc", "/proc", "proc", true),
        ("sysfs", "/sys", "sysfs", true),
        ("devtmpfs", "/dev", "devtmpfs", true),
        ("tmpfs", "/tmp", "tmpfs", true),
        ("tmpfs", "/run", "tmpfs", true),
        ("bpffs", "/sys/fs/bpf", "bpf", true),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", false),
    ];
    for (source, target, fstype, required) in mounts {
        match mount(source, target, fstype) {
            Ok(()) => {}
            Err(error) if !required => println!("init: skipping {target}: {error:#}"),
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn mount(source: &str, target: &str, fstype: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let c = |text: &str| CString::new(text).context("mount argument with a NUL byte");
    let (source_c, target_c, fstype_c) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; data is null.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting {fstype} on {target}"));
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, and PID 1 starts with the kernel's
/// default (64 KiB before 5.16, 8 MiB since). It is left as it is, so a suite that needs more
/// fails here the way it would on such a host; the line says what the suites got.
fn print_memlock_limit() {
    // SAFETY: rlimit is plain old data; getrlimit only writes the struct passed in.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0 {
        let show = |value: libc::rlim_t| {
            if value == libc::RLIM_INFINITY {
                "unlimited".to_owned()
            } else {
                format!("{} KiB", value / 1024)
            }
        };
        println!(
            "init: RLIMIT_MEMLOCK {} (hard {})",
            show(limit.rlim_cur),
            show(limit.rlim_max)
        );
    }
}

/// Test-run delivers on `lo` (ifindex 1); later suites talk over it.
fn bring_up_loopback() -> Result<()> {
    // SAFETY: socket has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket to configure lo");
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let fd = socket.as_raw_fd();
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags inside `request`.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("reading the flags of lo");
    }
    // SAFETY: SIOCGIFFLAGS just initialised the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS only reads `request`.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request as *const libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("bringing lo up");
    }
    Ok(())
}

/// Loads the modules in `/modules/order`, in that order (xtask put dependencies first).
fn load_modules() -> Result<()> {
    let order_path = Path::new(MODULES_DIR).join("order");
    let order = match fs::read_to_string(&order_path) {
        Ok(order) => order,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("reading {order_path:?}")),
    };
    for name in order.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let path = Path::new(MODULES_DIR).join(name);
        let file = fs::File::open(&path).with_context(|| format!("opening {path:?}"))?;
        // SAFETY: finit_module reads the module from the open fd; the parameter string is a
        // valid empty C string and the flags are zero.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                c"".as_ptr(),
                0 as libc::c_int,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(error).with_context(|| format!("loading module {name}"));
            }
        }
        println!("init: loaded module {name}");
    }
    Ok(())
}

/// Runs every file in `/tests`, in name order; true when all of them exit 0.
fn run_suites() -> Result<bool> {
    let mut suites: Vec<PathBuf> = fs::read_dir(TESTS_DIR)
        .with_context(|| format!("reading {TESTS_DIR}"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("listing {TESTS_DIR}"))?;
    suites.sort();
    if suites.is_empty() {
        bail!("no test binaries in {TESTS_DIR}");
    }
    let mut all_passed = true;
    for suite in &suites {
        let name = suite.file_name().map_or_else(
            || suite.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        println!("init: running {name}");
        let started = Instant::now();
        // The console is inherited: the suite's output goes straight to the serial port.
        // `--nocapture`: a test's output and panic appear as they happen, so a guest killed at
        // its timeout still shows why the test it was running took so long or failed.
        let status = Command::new(suite)
            .args(["--test-threads=1", "--nocapture", "--color=never"])
            .env_clear()
            .env("PATH", "/bin")
            .env("HOME", "/tmp")
            .env("TMPDIR", "/tmp")
            .env("RUST_BACKTRACE", "1")
            .current_dir("/tmp")
            .status()
            .with_context(|| format!("starting {name}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if status.success() {
            println!("init: {name} passed in {seconds:.1} s");
        } else {
            println!("init: {name} FAILED ({status}) in {seconds:.1} s");
            all_passed = false;
        }
    }
    Ok(all_passed)
}

/// Powers off; qemu runs with `-no-reboot`, so if that fails, exiting (a kernel panic with
/// `panic=-1`, then a reboot) still ends qemu.
fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    println!("init: power off failed: {}", io::Error::last_os_error());
    std::process::exit(1);
}
