//! msp-compliance-agent: checks a site host against a HIPAA baseline and reports findings.
//!
//! # Layout
//!
//! Modules in reading order, data flowing one way (facts → findings):
//! - [`config`]: the agent's configuration file, parsed then validated into a `Config`;
//! - [`baseline`]: the policy (thresholds, waivers) and its digest;
//! - [`facts`]: how facts are read (root prefix, fixed commands, privileged probes, declared);
//! - [`checks`]: one file per check, each observing facts and judging them purely;
//! - [`phi`]: PHI scrubbing with keyed-hash tokens, applied to everything before it is sealed;
//! - [`outbox`]: ships evidence records to the configured sinks (directory, S3 Object Lock);
//! - [`cli`]: the command line, the only place that prints.
//!
//! Later issues add `healer`, `heal`, `evidence`, `outbox`, `mcp_client`, `winrm`, `runbooks`.

#![forbid(unsafe_code)]

pub mod baseline;
pub mod checks;
pub mod cli;
pub mod config;
pub mod evidence;
pub mod facts;
pub mod outbox;
pub mod phi;
