//! Attaching the programs to interfaces, so that they stay attached when the agent exits.
//!
//! Two mechanisms, chosen once per node:
//! - **netlink** (clsact qdisc + cls_bpf filter, every kernel we support): our filter is the one
//!   at [`NETLINK_PRIORITY`] with [`NETLINK_HANDLE`]; filters of others are never touched.
//!   A filter outlives the process that added it.
//! - **tcx** (kernels 6.6+): a BPF link per hook, pinned under `<pin dir>/links/` so it
//!   outlives the process.
//!
//! Attaching where our program already is replaces it atomically (netlink: change of our
//! filter; tcx: link update), so a restarting agent never leaves an interface unprotected.

use std::{io, path::Path};

use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    util::KernelVersion,
};

use super::EbpfError;

/// Priority of our cls_bpf filters: low numbers run first, so policy is decided before other
/// filters (Terway's) can end classification with `TC_ACT_OK`.
pub const NETLINK_PRIORITY: u16 = 1;
/// Handle of our cls_bpf filters ("np").
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0x6e70);

/// How programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Netlink,
    Tcx,
}

impl AttachMode {
    /// tcx where the kernel has it (6.6+), netlink otherwise.
    pub fn detect() -> Self {
        match KernelVersion::current() {
            Ok(version) if version >= KernelVersion::new(6, 6, 0) => Self::Tcx,
            _ => Self::Netlink,
        }
    }
}

/// One program at one hook of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub program: &'static str,
    pub attach_type: TcAttachType,
}

/// Attaches `program` at `hook` of `iface`, replacing our previous program there if any.
pub(super) fn attach(
    program: &mut SchedClassifier,
    iface: &str,
    hook: Hook,
    mode: AttachMode,
    links_dir: &Path,
) -> Result<(), EbpfError> {
    let attach_error = |source| EbpfError::Attach {
        iface: iface.to_owned(),
        program: hook.program,
        source,
    };
    match mode {
        AttachMode::Netlink => {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) | Err(TcError::AlreadyAttached) => {}
                Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
                }
                Err(error) => return Err(attach_error(error.into())),
            }
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: NETLINK_PRIORITY,
                handle: NETLINK_HANDLE,
                classid: None,
            });
            let link_id = match program.attach_with_options(iface, hook.attach_type, options) {
                Ok(link_id) => link_id,
                // Ours is there already (a previous agent): change it in place.
                Err(error) if is_exists(&error) => {
                    let link = SchedClassifierLink::attached(
                        iface,
                        hook.attach_type,
                        NETLINK_PRIORITY,
                        NETLINK_HANDLE,
                        None,
                    )
                    .map_err(|error| attach_error(TcError::IoError(error).into()))?;
                    program.attach_to_link(link).map_err(attach_error)?
                }
                Err(error) => return Err(attach_error(error)),
            };
            // The filter must outlive this process: drop aya's handle without detaching.
            let link = program.take_link(link_id).map_err(attach_error)?;
            std::mem::forget(link);
        }
        AttachMode::Tcx => {
            let pin = links_dir.join(link_pin_name(iface, hook)?);
            let updated = match PinnedLink::from_pin(&pin) {
                Ok(pinned) => update_pinned_link(program, pinned, iface, hook, &pin)?,
                Err(_) => None,
            };
            let link_id = match updated {
                Some(link_id) => link_id,
                None => program
                    .attach_with_options(
                        iface,
                        hook.attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .map_err(attach_error)?,
            };
            let link = program.take_link(link_id).map_err(attach_error)?;
            if !pin.exists() {
                std::fs::create_dir_all(links_dir).map_err(|source| EbpfError::Pin {
                    path: links_dir.to_owned(),
                    source,
                })?;
                let fd_link =
                    FdLink::try_from(link).map_err(|source| link_error(iface, hook, source))?;
                fd_link.pin(&pin).map_err(|error| EbpfError::Pin {
                    path: pin.clone(),
                    source: io::Error::other(error),
                })?;
            }
        }
    }
    Ok(())
}

/// Puts `program` into the pinned tcx link `pinned` (ours from an earlier agent). A link whose
/// interface is gone (the ifindex now belongs to a new interface, after a pod's network
/// namespace was rebuilt) cannot be updated: its pin is removed and `None` says "attach anew".
fn update_pinned_link(
    program: &mut SchedClassifier,
    pinned: PinnedLink,
    iface: &str,
    hook: Hook,
    pin: &Path,
) -> Result<Option<aya::programs::tc::SchedClassifierLinkId>, EbpfError> {
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
        .map_err(|source| link_error(iface, hook, source))?;
    match program.attach_to_link(link) {
        Ok(link_id) => Ok(Some(link_id)),
        Err(error) => {
            tracing::info!(
                iface,
                program = hook.program,
                pin = %pin.display(),
                error = &error as &dyn std::error::Error,
                "the pinned tcx link is stale (its interface is gone); replacing it"
            );
            remove_pin(pin)?;
            Ok(None)
        }
    }
}

fn remove_pin(pin: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Pin {
            path: pin.to_owned(),
            source,
        }),
    }
}

/// Removes the pins of tcx links whose interface index no interface has now (their interfaces
/// are gone, and the links with them); returns how many. Only names of the form
/// `<ifindex>_<program>` are considered.
pub(super) fn remove_orphaned_pins(links_dir: &Path) -> Result<usize, EbpfError> {
    let entries = match std::fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(EbpfError::Pin {
                path: links_dir.to_owned(),
                source,
            });
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|name| name.split_once('_'))
            .and_then(|(index, _)| index.parse::<u32>().ok())
        else {
            continue;
        };
        if !interface_exists(index) {
            remove_pin(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes our program from `hook` of `iface`; nothing to do if it is not there (or the
/// interface is gone, which took the program with it).
pub(super) fn detach(
    iface: &str,
    hook: Hook,
    mode: AttachMode,
    links_dir: &Path,
) -> Result<(), EbpfError> {
    let detach_error = |source| EbpfError::Attach {
        iface: iface.to_owned(),
        program: hook.program,
        source,
    };
    match mode {
        AttachMode::Netlink => {
            let link = match SchedClassifierLink::attached(
                iface,
                hook.attach_type,
                NETLINK_PRIORITY,
                NETLINK_HANDLE,
                None,
            ) {
                Ok(link) => link,
                // The interface is gone, and our filter with it.
                Err(_) => return Ok(()),
            };
            match aya::programs::Link::detach(link) {
                Ok(()) => Ok(()),
                Err(error) if is_missing(&error) => Ok(()),
                Err(error) => Err(detach_error(error)),
            }
        }
        AttachMode::Tcx => {
            let pin = match link_pin_name(iface, hook) {
                Ok(name) => links_dir.join(name),
                // Its pin, if any, is an orphan: `remove_orphaned_pins` takes it.
                Err(EbpfError::NoInterface { .. }) => return Ok(()),
                Err(error) => return Err(error),
            };
            match PinnedLink::from_pin(&pin) {
                // Unpinning and dropping the last reference detaches the link.
                Ok(pinned) => pinned
                    .unpin()
                    .map(drop)
                    .map_err(|source| EbpfError::Pin { path: pin, source }),
                Err(_) => Ok(()),
            }
        }
    }
}

fn link_error(iface: &str, hook: Hook, source: LinkError) -> EbpfError {
    EbpfError::Link {
        iface: iface.to_owned(),
        program: hook.program,
        source,
    }
}

/// The pin of a tcx link: by interface index, since names can be reused.
fn link_pin_name(iface: &str, hook: Hook) -> Result<String, EbpfError> {
    let index = nix_ifindex(iface).ok_or_else(|| EbpfError::NoInterface {
        iface: iface.to_owned(),
    })?;
    Ok(format!("{index}_{}", hook.program))
}

fn nix_ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Asked of the kernel now, not of a snapshot: an interface created since must keep its pin.
fn interface_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    !unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null()
}

fn is_exists(error: &aya::programs::ProgramError) -> bool {
    error_code(error) == Some(libc::EEXIST)
}

fn is_missing(error: &aya::programs::ProgramError) -> bool {
    matches!(
        error_code(error),
        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
    )
}

/// The errno inside a netlink or I/O error of a tc operation.
fn error_code(error: &aya::programs::ProgramError) -> Option<i32> {
    match error {
        aya::programs::ProgramError::NetlinkError(error) => error.raw_os_error(),
        aya::programs::ProgramError::TcError(TcError::NetlinkError(error)) => error.raw_os_error(),
        aya::programs::ProgramError::TcError(TcError::IoError(error)) => error.raw_os_error(),
        aya::programs::ProgramError::SyscallError(error) => error.io_error.raw_os_error(),
        _ => None,
    }
}
