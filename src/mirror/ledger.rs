//! The import ledger (in progress).
