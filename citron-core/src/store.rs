//! What the lab's state stores share: the error they give and the rules of when they are called.
//!
//! The gateway's state lives behind traits, one per piece, each next to the piece it serves:
//! [`DutStore`](crate::gateway::DutStore) (the DUTs), [`JobStore`](crate::gateway::JobStore)
//! (every DUT's job as it was set), [`LifetimeStore`](crate::gateway::LifetimeStore) (reads
//! counted against `access_count`, when the last `boot`/`job_start`/`job_end` happened),
//! [`EventLog`](crate::gateway::EventLog) (the DUTs' events),
//! [`AccessStore`](crate::access::AccessStore) (the access log) and
//! [`DiskRecordStore`](crate::block::DiskRecordStore) (job disks' lifetimes and last use). Today's implementations keep
//! everything in memory ([`Stores::memory`](crate::gateway::Stores::memory)); a durable lab
//! (SQLite, PostgreSQL) implements the same traits in the lab crate.
//!
//! # Synchronous, on purpose
//! Every store method is a plain `fn`. The serving path is synchronous:
//! [`Catalog::open`](crate::serve::Catalog::open) decides and answers in one call, and a counted
//! read must be in the store **before** its bytes leave, so the write cannot be deferred to a
//! task. An `async` trait would not help there (the caller could not `.await`) and would force
//! every other caller to carry futures for what are, in memory, map operations. So:
//! - A durable implementation does its own blocking (a local SQLite write in WAL mode costs tens of
//!   microseconds; a remote database should keep a local write-ahead journal or pool of
//!   connections). Writes that **must** be durable before the answer are called synchronously:
//!   [`LifetimeStore::count_read`](crate::gateway::LifetimeStore::count_read),
//!   [`JobStore::put`](crate::gateway::JobStore::put), [`DutStore::add`](crate::gateway::DutStore::add).
//! - Writes whose order with the answer does not matter (an access record written when a transfer
//!   ends, an event appended to the history) may be buffered by the implementation and written by a
//!   background task; their methods say so.
//! - Reads on the serving path ([`DutStore::by_addr`](crate::gateway::DutStore::by_addr)) are
//!   expected to be answered from memory: an implementation keeps an index and writes through.
//!
//! An error from a store that must be durable refuses what was asked (a counted read that could
//! not be recorded is not served: the lab fails closed).

/// Why a state store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The DUT cannot be registered (duplicate id or address, unusable id).
    #[error(transparent)]
    Registry(#[from] crate::namespace::RegistryError),
    /// The storage itself failed (disk full, database gone); what was asked did not happen.
    #[error("the lab's state store failed: {0}; check the store's disk or database")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// A failure of the storage itself.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::Backend(e.into())
    }
}
