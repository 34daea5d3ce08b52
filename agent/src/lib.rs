//! msp-compliance-agent: checks a site host against a HIPAA baseline, records signed evidence,
//! and, as a daemon, takes signed orders from its control plane.
//!
//! # Layout
//!
//! Modules in reading order, data flowing one way (facts → findings):
//! - [`config`]: the agent's configuration file, parsed then validated into a `Config`;
//! - [`baseline`]: the policy (thresholds, waivers) and its digest;
//! - [`facts`]: how facts are read (root prefix, fixed commands, privileged probes, declared);
//! - [`checks`]: one file per check, each observing facts and judging them purely;
//! - [`runbooks`]: the whitelist of actions an order may name, with parameter schemas, as data;
//! - [`heal`]: heal runbooks turned into verified changes or escalations (root heal units,
//!   the heal journal, the engine's steps and their evidence);
//! - [`orders`]: signed orders through verification and every guardrail (sans-I/O except the
//!   durable order memory), into an admission and its evidence;
//! - [`phi`]: PHI scrubbing with keyed-hash tokens, applied to everything before it is sealed;
//! - [`evidence`]: the signed, hash-chained evidence store, keys and chain verification;
//! - [`durable`]: how the agent's SQLite files are opened (WAL, `synchronous=FULL`, schema);
//! - [`outbox`]: ships evidence records to the configured sinks (directory, S3 Object Lock,
//!   the control plane);
//! - [`mcp_client`]: the HTTPS + mTLS client of the control plane (pull-only);
//! - [`daemon`]: `run`, the cycle of DESIGN §2 (checks, check-in, orders, results, outbox);
//! - [`cli`]: the command line, the only place that prints.
//!
//! Later issues add `healer` (L1/L2 decisions) and `winrm` (and the Windows runbooks).

#![forbid(unsafe_code)]

pub mod baseline;
pub mod checks;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod evidence;
pub mod facts;
pub mod heal;
pub mod mcp_client;
pub mod orders;
pub mod outbox;
pub mod phi;
pub mod runbooks;
