//! The one home for durable file operations: fsync of folders, folders and
//! files created with fixed modes whatever the umask, atomic file writes
//! with and without clobbering, large files synced as they are written, and
//! the folder exchange (with its two-rename fallback) that publishing is
//! built on. Every module that must survive a power loss goes through here
//! instead of calling `rename`/`persist`/`sync_all` itself. Where other
//! users may write the folder, the same writes go through the folder's
//! descriptor instead of a path ([`write_new_at`]).
//!
//! It owns mechanisms, never policy: it must never decide what a folder or
//! file means, where it goes, or whether a caller may replace it (the
//! journal that makes a folder swap crash-safe is `mirror::publish`'s; this
//! module only gives it the primitives).

use std::fs::File;
use std::io;
use std::path::Path;

mod at;
mod dirs;
mod exchange;
mod files;
mod syncing;

pub use at::{write_new_at, AtError};
pub use dirs::{create_dir, ensure_dir_all, ensure_private_dir, NotOurs};
pub use exchange::{exchange, rename, swap_in, MoveError, SwapMethod};
pub use files::{
    create_new_file, open_append, persist, persist_path, write_atomic, write_new_synced, Clobber,
};
pub use syncing::{SyncingWriter, SYNC_EVERY};

/// Mode of every folder an endpoint or HTTP server must read.
pub const DIR_MODE: u32 = 0o755;
/// Mode of every file an endpoint or HTTP server must read.
pub const FILE_MODE: u32 = 0o644;
/// Mode of a private folder (the state directory): only its owner may enter.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every private file (state, ledger, receipts, locks, secret keys).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Opens a folder and fsyncs it, so that entries created, renamed or removed
/// in it survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder a file `path` lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
