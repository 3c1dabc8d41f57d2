//! The documented exit codes and the one mapping every library error goes
//! through to reach them. Modules own their error enums; each implements
//! [`Classify`] so the binary can pick the exit code in one place.

/// What kind of failure an error is, which decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitKind {
    /// 1: I/O, disk full, lock held, network.
    Operational,
    /// 2: the command line or its inputs make no sense.
    Usage,
    /// 3: the bundle is rejected (signature, integrity, unsafe or malformed content).
    Rejected,
    /// 4: the bundle is refused by policy (older, expired, wrong channel, threshold).
    Policy,
}

impl ExitKind {
    /// The process exit code documented in the README and `--help`.
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Operational => 1,
            ExitKind::Usage => 2,
            ExitKind::Rejected => 3,
            ExitKind::Policy => 4,
        }
    }
}

/// Errors that know which exit code they deserve.
pub trait Classify {
    fn exit_kind(&self) -> ExitKind;
}
