//! The mirror's view of the filesystem: the "what to do about it" hint every
//! I/O error message ends with, the time stamp its records carry, and the
//! durable operations of [`crate::durable`] re-exported under the names the
//! mirror modules use. It must never grow its own fsync, rename or
//! temp-file code: that lives in [`crate::durable`] alone.

use std::io;

pub(crate) use crate::durable::{
    create_dir, create_new_file, ensure_dir_all, ensure_private_dir, open_append, sync_dir,
    NotOurs, DIR_MODE, FILE_MODE, PRIVATE_FILE_MODE,
};

/// Atomic small-file replacement ([`crate::durable::write_atomic`], replacing).
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    crate::durable::write_atomic(path, bytes, mode, crate::durable::Clobber::Replace)
}

/// The fix an operator can apply for a raw I/O error, appended to messages.
pub(crate) fn fix(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => {
            " (the filesystem is full: free space, then run the command again)"
        }
        Some(code) if code == rustix::io::Errno::DQUOT.raw_os_error() => {
            " (disk quota exceeded: raise the quota or free space, then run again)"
        }
        Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => {
            " (the filesystem is read-only: remount it read-write)"
        }
        _ => match e.kind() {
            io::ErrorKind::PermissionDenied => {
                " (permission denied: run as the user that owns this folder, or fix its permissions)"
            }
            _ => "",
        },
    }
}

/// The current time as RFC 3339 UTC with seconds, e.g. `2024-05-01T12:00:00Z`.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
