//! The embedded engine: one redb file in the data directory, owned by one process
//! (a running `onetrip serve`, or the CLI when none runs). [`Store`] is the file and
//! its tables, one file here per table or concern; [`RedbBackend`] puts it behind
//! the state ports, on tokio's blocking pool. [`backup`] takes consistent snapshots
//! of a live store and verifies them.

mod audit;
mod backend;
pub mod backup;
mod heal;
mod otp;
mod replay_ids;
mod revocations;
mod second_factor;
mod server_keys;
mod store;
mod token_keys;

pub use backend::RedbBackend;
pub use store::{Store, MARKER_FILE, STORE_CACHE_BYTES, STORE_FILE};
