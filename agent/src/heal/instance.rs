//! The names of the root heal units' instances: the whole grammar of what the unprivileged
//! agent can ask the privileged side to do.
//!
//! Both sides parse the same text with [`Instance::parse`]: the agent builds an instance only
//! from a runbook and a name it found in the generation's declared.json, and the root helper
//! (`heal-unit`) refuses any instance that does not parse or whose unit or job is not declared.
//! A name is `[A-Za-z0-9_.-]`, at most 100 bytes, not starting with `.` or `-`, so it is
//! neither a path step nor an option, in a unit name or in an argument.

use std::fmt;

use crate::facts::probe::is_plain_name;

/// Largest generation number accepted (nine digits, as the polkit rule's pattern).
pub const MAX_GENERATION: u32 = 999_999_999;

/// One action of the root heal helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instance {
    /// `restart-<stem>`: restart `<stem>.service`.
    Restart(String),
    /// `rollback-restart-<stem>`: put `<stem>.service` back to the state before the restart.
    RollbackRestart(String),
    /// `restore-firewall`: snapshot the live ruleset, then reload the generation's firewall.
    RestoreFirewall,
    /// `rollback-firewall`: load the snapshot taken by `restore-firewall`.
    RollbackFirewall,
    /// `refresh-av`: start the declared signature update unit.
    RefreshAv,
    /// `backup-<job>`: start the declared unit of a backup job.
    Backup(String),
    /// `reactivate-generation`: run the current system profile's `switch-to-configuration switch`.
    ReactivateGeneration,
    /// `switch-generation-<n>`: point the system profile at generation `n` and switch to it.
    SwitchGeneration(u32),
    /// `boot-generation-<n>`: point the system profile at generation `n`, make it the boot
    /// default (`switch-to-configuration boot`) and reboot into it.
    BootGeneration(u32),
    /// `rollback-generation`: point the profile back at the generation before the last switch.
    RollbackGeneration,
}

/// An instance name outside the grammar. It is never quoted back (it may come from anywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a heal instance: expected restart-<unit>, rollback-restart-<unit>, restore-firewall, rollback-firewall, refresh-av, backup-<job>, reactivate-generation, switch-generation-<1..999999999> or rollback-generation"
)]
pub struct NotAnInstance;

impl Instance {
    /// Parses an instance name; the inverse of `Display`.
    pub fn parse(text: &str) -> Result<Instance, NotAnInstance> {
        let instance = match text {
            "restore-firewall" => Instance::RestoreFirewall,
            "rollback-firewall" => Instance::RollbackFirewall,
            "refresh-av" => Instance::RefreshAv,
            "reactivate-generation" => Instance::ReactivateGeneration,
            "rollback-generation" => Instance::RollbackGeneration,
            _ => {
                if let Some(stem) = text.strip_prefix("rollback-restart-") {
                    Instance::RollbackRestart(plain(stem)?)
                } else if let Some(stem) = text.strip_prefix("restart-") {
                    Instance::Restart(plain(stem)?)
                } else if let Some(job) = text.strip_prefix("backup-") {
                    Instance::Backup(plain(job)?)
                } else if let Some(number) = text.strip_prefix("switch-generation-") {
                    Instance::SwitchGeneration(generation(number)?)
                } else if let Some(number) = text.strip_prefix("boot-generation-") {
                    Instance::BootGeneration(generation(number)?)
                } else {
                    return Err(NotAnInstance);
                }
            }
        };
        Ok(instance)
    }

    /// The instance for restarting `unit`, which must be `<plain>.service`.
    pub fn restart(unit: &str) -> Result<Instance, NotAnInstance> {
        Ok(Instance::Restart(service_stem(unit)?.to_string()))
    }

    /// The root unit that performs this instance.
    pub fn unit_name(&self) -> String {
        format!("msp-compliance-heal@{self}.service")
    }

    /// The instance that undoes this one, if there is one.
    pub fn rollback(&self) -> Option<Instance> {
        match self {
            Instance::Restart(stem) => Some(Instance::RollbackRestart(stem.clone())),
            Instance::RestoreFirewall => Some(Instance::RollbackFirewall),
            Instance::SwitchGeneration(_)
            | Instance::BootGeneration(_)
            | Instance::ReactivateGeneration => Some(Instance::RollbackGeneration),
            _ => None,
        }
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instance::Restart(stem) => write!(f, "restart-{stem}"),
            Instance::RollbackRestart(stem) => write!(f, "rollback-restart-{stem}"),
            Instance::RestoreFirewall => f.write_str("restore-firewall"),
            Instance::RollbackFirewall => f.write_str("rollback-firewall"),
            Instance::RefreshAv => f.write_str("refresh-av"),
            Instance::Backup(job) => write!(f, "backup-{job}"),
            Instance::ReactivateGeneration => f.write_str("reactivate-generation"),
            Instance::SwitchGeneration(number) => write!(f, "switch-generation-{number}"),
            Instance::BootGeneration(number) => write!(f, "boot-generation-{number}"),
            Instance::RollbackGeneration => f.write_str("rollback-generation"),
        }
    }
}

/// `<stem>` of a `<stem>.service` unit with a plain stem (no template, no path).
pub fn service_stem(unit: &str) -> Result<&str, NotAnInstance> {
    let stem = unit.strip_suffix(".service").ok_or(NotAnInstance)?;
    if is_plain_name(stem) && !stem.starts_with("msp-compliance") {
        Ok(stem)
    } else {
        Err(NotAnInstance)
    }
}

fn plain(text: &str) -> Result<String, NotAnInstance> {
    if is_plain_name(text) {
        Ok(text.to_string())
    } else {
        Err(NotAnInstance)
    }
}

fn generation(text: &str) -> Result<u32, NotAnInstance> {
    // Decimal without sign or leading zero, so each generation has exactly one name (the
    // polkit rule matches the same pattern).
    if text.is_empty()
        || text.len() > 9
        || text.starts_with('0')
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(NotAnInstance);
    }
    text.parse().map_err(|_| NotAnInstance)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_instance_round_trips_and_names_its_unit() {
        let all = [
            Instance::Restart("chronyd".into()),
            Instance::RollbackRestart("chronyd".into()),
            Instance::RestoreFirewall,
            Instance::RollbackFirewall,
            Instance::RefreshAv,
            Instance::Backup("ehr".into()),
            Instance::ReactivateGeneration,
            Instance::SwitchGeneration(42),
            Instance::BootGeneration(7),
            Instance::RollbackGeneration,
        ];
        for instance in all {
            assert_eq!(Instance::parse(&instance.to_string()), Ok(instance.clone()));
        }
        assert_eq!(
            Instance::restart("pacs-bridge.service")
                .unwrap()
                .unit_name(),
            "msp-compliance-heal@restart-pacs-bridge.service"
        );
    }

    #[test]
    fn names_outside_the_grammar_are_refused() {
        for bad in [
            "",
            "restart-",
            "restart-../etc",
            "restart-a/b",
            "restart--x",
            "restart-.hidden",
            "backup-a b",
            "switch-generation-0",
            "switch-generation-012",
            "switch-generation-1x",
            "switch-generation-1234567890",
            "switch-generation--1",
            "boot-generation-0",
            "boot-generation-",
            "reboot",
            "restore-firewall ",
        ] {
            assert_eq!(Instance::parse(bad), Err(NotAnInstance), "{bad:?}");
        }
        for bad in [
            "sshd",
            "getty@tty1.service",
            "../x.service",
            "a/b.service",
            "msp-compliance.service",
            "-x.service",
            "x.socket",
        ] {
            assert!(Instance::restart(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever parses prints back to the same text, so the agent and the root helper can
        /// never disagree on what a name means.
        #[test]
        fn parse_is_the_inverse_of_display(text in "[a-z0-9./@ -]{0,40}") {
            if let Ok(instance) = Instance::parse(&text) {
                prop_assert_eq!(instance.to_string(), text);
            }
        }
    }
}
