//! The server's durable state. Handlers, services and admin commands see only the
//! [`ports`]: async traits split the way the data is used, held as one [`Backend`].
//! Two engines implement them:
//!
//! | module | engine |
//! |---|---|
//! | [`redb`] | the embedded default: one file in the data directory, one process |
//! | [`postgres`] | PostgreSQL, shared by several replicas, with a change feed |
//!
//! What both engines share sits here: the stored records and how their secrets are
//! sealed ([`records`]), the errors ([`StoreError`]), the first contents of a new
//! store (`genesis`) and the handshake key lifecycle ([`plan_server_keys`]). One
//! conformance suite (`conformance`, tests only) runs against both engines.

#[cfg(test)]
mod conformance;
mod error;
mod genesis;
pub mod measured;
pub mod ports;
pub mod postgres;
pub mod records;
pub mod redb;
mod server_keys;

pub use self::redb::{backup, RedbBackend, Store, MARKER_FILE, STORE_CACHE_BYTES, STORE_FILE};
pub use error::StoreError;
pub use ports::{Backend, CheckView, KeyFilter, KeyRotation, StateStore, StepUpStart, TotpEnrolment};
pub(crate) use records::{hex_array, open_bound, server_key_slot, token_key_slot, totp_slot, FORMAT};
pub use records::{ApiKeyRecord, AuditEntry, ServerKeyRecord, ServerSecrets, TokenKeyRecord, TotpRecord};
pub use server_keys::{
    plan as plan_server_keys, KeyChanges, KeyPolicy, KeyValidity, DEFAULT_SERVER_KEY_LIFETIME_SECS,
    DEFAULT_SERVER_KEY_OVERLAP_SECS,
};
