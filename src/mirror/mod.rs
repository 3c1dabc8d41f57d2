//! The mirror: layout, staging, atomic publish, lock, state, ledger.
