//! Wire types shared by the msp-compliance agent and its control plane.
//!
//! # Overview
//!
//! This crate is the contract between the two ends: what a finding looks like when the agent
//! prints it (`check --format json`), stores it as evidence, or sends it to the server.
//! It does no I/O: no files, no sockets, no clocks.
//! Callers pass time in and take values out, which keeps every type here testable and fuzzable.
//!
//! Design decisions:
//! - Everything that is serialized here is a compatibility promise, so only wire types live here.
//!   Internal types of the agent convert into these by hand at the boundary.
//! - Statuses are a closed vocabulary (`pass | warn | fail | unknown | not_applicable |
//!   exception`); `unknown` is never a pass (see [`finding::Status::is_acceptable`]).
//! - Identifiers that both ends must agree on (check ids, HIPAA citations) are constants defined
//!   once, in [`ids`].
//!
//! - Signed things are DSSE envelopes ([`dsse`]) verified over the exact bytes received; only
//!   the verifier can produce a [`dsse::Verified`], so unverified bytes cannot reach a parser
//!   that expects verified ones.
//! - Payloads and digests use RFC 8785 canonical JSON ([`jcs`]), so a digest does not depend
//!   on whitespace, key order or number spelling.
//! - Evidence records are in-toto Statement v1 payloads chained by `seq` and `prev`
//!   ([`evidence`]); [`evidence::ChainVerifier`] is the one chain verifier of agent and server.
//!
//! - Orders and their results ([`order`]) are DSSE envelopes too; [`api`] is the agent↔server
//!   API v1 (every request made by the agent).
//!
//! Rule bundles come with the healer.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
mod batch;
pub mod dsse;
pub mod evidence;
pub mod finding;
pub mod ids;
pub mod jcs;
pub mod keys;
pub mod order;
