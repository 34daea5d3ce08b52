//! How far the host's clock can be trusted, for the guardrails (`orders::ClockState`): whether
//! the host's time synchronization says it is synchronized, and how far the server's clock is
//! from ours at the last check-in.
//!
//! Synchronization is read the way the logging check reads it, with the same fixed command
//! (`timedatectl show --property=NTPSynchronized --value`, so a fixture root replays the same
//! recording); anything but a clear `yes` or `no` is unknown (`None`), never "synchronized".
//! This module reads; it decides nothing.

use crate::facts::Host;
use crate::facts::command::Invocation;

/// The name (and recording) of the synchronization query, shared with the logging check.
pub const TIMEDATECTL_SYNCHRONIZED: &str = "timedatectl-ntp-synchronized";

/// Whether the host's clock is synchronized: `Some(true)` for `yes`, `Some(false)` for `no`,
/// `None` when the state cannot be read.
pub fn synchronized(host: &Host) -> Option<bool> {
    let invocation = Invocation::new(
        TIMEDATECTL_SYNCHRONIZED,
        "timedatectl",
        &["show", "--property=NTPSynchronized", "--value"],
    );
    let output = host.run(&invocation).ok()?.success(&invocation).ok()?;
    parse_synchronized(&output.stdout_text())
}

/// `yes`/`no` as systemd prints booleans; anything else is unknown.
pub fn parse_synchronized(text: &str) -> Option<bool> {
    match text.trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clear_answers_count() {
        assert_eq!(parse_synchronized("yes\n"), Some(true));
        assert_eq!(parse_synchronized("no"), Some(false));
        for unknown in ["", "1", "true", "yes no", "Failed to connect to bus"] {
            assert_eq!(parse_synchronized(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn the_fixture_host_replays_the_logging_check_recording() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts/nixos-site");
        let host =
            crate::checks::testing::host_at(&fixture, crate::checks::testing::default_paths());
        assert_eq!(synchronized(&host), Some(true));
    }
}
