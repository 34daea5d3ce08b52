//! msp-mcp: the reference control plane for msp-compliance agents.
//!
//! The roles: the **operator** runs the CLI (`init`, `enroll`, `order create`, `orders`,
//! `hosts`, `evidence verify|export`) against a state directory; the **agents** talk to
//! `serve` over HTTPS with a client certificate, always as the one who asks (pull-only):
//! they check in (and receive their pending signed orders), upload evidence, report order
//! results and send chain checkpoints (API v1, `msp_compliance_protocol::api`).
//!
//! Trust, in one paragraph: the server knows a host by the SHA-256 fingerprint of the client
//! certificate it enrolled, never by a name in a request; it pins the agent's evidence key at
//! enrollment or first check-in and never replaces it silently; it stores an evidence record
//! only if the pinned key signed it, it names this host, and it continues the stored chain,
//! and it stores the record's canonical bytes exactly as verified. Orders are signed by the
//! operator's CLI with a key `serve` never reads.
//!
//! Modules, in reading order: [`state`] (the directory and `init`), [`files`], [`keys`],
//! [`pki`], [`db`] (schema, migrations, SQL), [`enroll`], [`order`], [`ingest`] (sans-I/O
//! verification of what agents send), [`pool`] (SQLite from async code, group commit),
//! [`api`] (handlers), [`server`] (TLS, connections, limits, shutdown), `cli`.

#![forbid(unsafe_code)]
// Hostile input (requests, stored rows, files) ends in an error, never a panic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod state;

pub mod files;
pub mod keys;
pub mod pki;

pub mod db;

pub mod enroll;
pub mod order;

pub mod ingest;

pub mod pool;

pub mod api;
pub mod server;

pub mod cli;
