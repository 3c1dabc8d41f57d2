//! Progress reporting without a terminal: long operations take an
//! [`Observer`]; the binary adapts it to indicatif, tests use [`NoProgress`].

/// Receives progress of a long operation. Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// A phase starts; `total` bytes are expected (0 when unknown).
    fn start(&self, _label: &str, _total: u64) {}
    /// `n` more bytes are done.
    fn advance(&self, _n: u64) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Observer for NoProgress {}
