//! The encryption-at-rest check: do the paths that may hold ePHI, swap and `/tmp` sit on
//! LUKS (or encrypted ZFS), with a strong cipher (`research/checks.md` §6.1)?
//!
//! It owns the walk from a path to its storage: `/proc/self/mountinfo` gives the mount and its
//! `major:minor`, `/sys/dev/block/<major>:<minor>` the block device, and the device-mapper
//! `dm/uuid` files and `slaves/` links the stack below it (LVM on LUKS, LUKS on RAID, loop files),
//! down to a `CRYPT-LUKS*` layer or a plain disk. It also reads `/proc/swaps`, `zfs get` for ZFS
//! datasets, and the LUKS headers through the privileged `cryptsetup luksDump` probe. It must not
//! open, unlock or change any device, and it records no key material (only versions, cipher
//! names and key sizes). Storage it cannot see through (overlay, network file systems) is
//! `unknown`, never a pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use msp_compliance_protocol::finding::{SafetyClass, Status};
use msp_compliance_protocol::ids::{check, hipaa};
use serde_json::{Value, json};

use crate::baseline::{Baseline, EncryptionPolicy};
use crate::checks::{Check, Judgement};
use crate::facts::command::Invocation;
use crate::facts::declared::{DeclaredLuksDevice, DeclaredSwap};
use crate::facts::probe::Probe;
use crate::facts::{DeclaredState, FactError, Host};

/// The encryption-at-rest check.
///
/// Facts read (all unprivileged except the LUKS headers):
/// - `/proc/self/mountinfo`: for each baseline `phi_path` (canonicalised inside the root) the
///   mount with the longest matching mount point;
/// - `/sys/dev/block/<major>:<minor>` and `/sys/class/block/<name>`: `dm/uuid` (`CRYPT-LUKS2-…`,
///   `CRYPT-LUKS1-…`, `CRYPT-PLAIN-…`, `LVM-…`), `dm/name`, `slaves/*` walked recursively
///   (bounded), and `loop/backing_file` for loop devices;
/// - `zfs get -H -p -o name,property,value encryption,keystatus,encryptionroot <dataset>` for
///   ZFS mounts;
/// - `/proc/swaps`, and the mounts of `/tmp` and `/var/tmp`;
/// - `cryptsetup luksDump /dev/<device under the LUKS layer>` (privileged probe): version, data
///   cipher, volume key size;
/// - declared.json: `luks` (key files), `swap` (randomEncryption), `tmpOnTmpfs`.
///
/// Thresholds (`checks.encryption`): `phi_paths`, `swap_encrypted_required`,
/// `tmp_encrypted_required`, `min_xts_key_bits` (512 = AES-256-XTS; an encrypted ZFS dataset's
/// AES key counts double, because XTS splits its key into two AES keys).
///
/// Why an auditor accepts it: the device-mapper UUID is written by cryptsetup when it opens a
/// LUKS volume, so a `CRYPT-LUKS` ancestor proves the data passes through dm-crypt with a LUKS
/// header; the header then shows the cipher (NIST SP 800-111 names AES-XTS for storage). Plain
/// dm-crypt (no header, usually a random key) is accepted only for swap, where a fresh random
/// key per boot is the point. Anything not proven encrypted is a fail or unknown.
pub struct Encryption;

/// What the encryption check read.
pub struct EncryptionObservation {
    /// `/proc/self/mountinfo`, parsed.
    mounts: Result<Vec<Mount>, FactError>,
    /// One entry per baseline `phi_path`.
    phi_paths: Vec<PathFacts>,
    /// `/tmp` and `/var/tmp`.
    tmp_paths: Vec<PathFacts>,
    /// `/proc/swaps` entries with their storage.
    swaps: Result<Vec<SwapFacts>, FactError>,
    /// LUKS headers of every LUKS device found under the paths above.
    luks_headers: Vec<LuksHeaderFacts>,
    /// declared.json, as far as encryption is concerned.
    declared: DeclaredEncryption,
    /// Declared LUKS key files and where they are stored.
    key_files: Vec<KeyFileFacts>,
}

enum DeclaredEncryption {
    Absent,
    Invalid(String),
    Present {
        luks: Vec<(String, DeclaredLuksDevice)>,
        swap: Vec<DeclaredSwap>,
        tmp_on_tmpfs: bool,
    },
}

/// One mount of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    major: u32,
    minor: u32,
    mount_point: String,
    fstype: String,
    source: String,
}

/// A path and where it is stored. `Ok(None)` when the path does not exist.
struct PathFacts {
    path: String,
    located: Result<Option<Located>, FactError>,
}

/// A path resolved to its mount and storage.
struct Located {
    canonical: String,
    mount: Mount,
    storage: Storage,
    /// The devices walked, top down, for the evidence: `dm-1 (LVM vg-root)`, `dm-0 (CRYPT-LUKS2 …)`.
    chain: Vec<String>,
}

/// What a mount or block device is stored on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Storage {
    /// Every branch below ends in a LUKS layer.
    Luks(Vec<LuksLayer>),
    /// Plain dm-crypt (no header; NixOS randomEncryption swap); dm names.
    Plain(Vec<String>),
    /// Another dm-crypt type (BITLK, TCRYPT, …): encrypted, but not LUKS.
    OtherCrypt(String),
    /// A ZFS dataset with its encryption properties.
    Zfs {
        dataset: String,
        props: Result<ZfsProps, String>,
    },
    /// tmpfs/ramfs: memory, not at rest.
    Memory(String),
    /// A zram device: compressed RAM.
    Zram(String),
    /// A block device with no encryption layer; the leaf device.
    Unencrypted(String),
    /// Storage the check cannot see through; the reason.
    Unrecognised(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LuksLayer {
    version: u8,
    dm_name: String,
    /// The device holding the LUKS header (`/dev/<first slave>`), if sysfs lists it.
    device: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ZfsProps {
    encryption: String,
    keystatus: String,
    encryption_root: String,
}

struct SwapFacts {
    filename: String,
    kind: String,
    storage: Result<Storage, FactError>,
    chain: Vec<String>,
}

struct LuksHeaderFacts {
    device: String,
    /// The paths (or swap entries) it backs, for messages.
    backs: Vec<String>,
    header: Result<LuksHeader, FactError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LuksHeader {
    version: u8,
    /// Data ciphers (LUKS2 data segments; LUKS1 `name-mode`).
    ciphers: Vec<String>,
    /// Volume key size in bits (LUKS2 keyslot `Key:`; LUKS1 `MK bits:`), the smallest seen.
    key_bits: u32,
    /// Key derivation functions of the keyslots (evidence only).
    pbkdfs: Vec<String>,
}

struct KeyFileFacts {
    luks_name: String,
    key_file: String,
    located: Result<Option<Located>, FactError>,
}

impl Check for Encryption {
    type Observation = EncryptionObservation;

    fn id(&self) -> &'static str {
        check::ENCRYPTION
    }

    fn controls(&self) -> &'static [&'static str] {
        &[hipaa::ENCRYPTION_AT_REST]
    }

    fn observe(&self, host: &Host, baseline: &Baseline) -> EncryptionObservation {
        let policy = &baseline.policy().checks.encryption;
        let declared = match host.declared() {
            DeclaredState::Absent => DeclaredEncryption::Absent,
            DeclaredState::Invalid(reason) => DeclaredEncryption::Invalid(reason.clone()),
            DeclaredState::Present(it) => DeclaredEncryption::Present {
                luks: it
                    .luks
                    .iter()
                    .map(|(name, device)| (name.clone(), device.clone()))
                    .collect(),
                swap: it.swap.clone(),
                tmp_on_tmpfs: it.tmp_on_tmpfs,
            },
        };
        let mounts = read_mounts(host);
        // Without mountinfo no path can be placed; swap partitions still can (and a swap file
        // then fails to resolve, which is reported as unknown).
        let no_mounts = Vec::new();
        let resolver = Resolver {
            host,
            mounts: mounts.as_ref().unwrap_or(&no_mounts),
        };
        let locate = |path: &str| PathFacts {
            path: path.to_string(),
            located: resolver.locate(path, 0),
        };
        let (phi_paths, tmp_paths) = if mounts.is_ok() {
            (
                policy.phi_paths.iter().map(|it| locate(it)).collect(),
                ["/tmp", "/var/tmp"].iter().map(|it| locate(it)).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let swaps = resolver.swaps();
        let key_files = match (&declared, &mounts) {
            (DeclaredEncryption::Present { luks, .. }, Ok(_)) => luks
                .iter()
                .filter_map(|(name, device)| {
                    let key_file = device.key_file.clone()?;
                    let located = if key_file.starts_with("/dev/") || !key_file.starts_with('/') {
                        Ok(None)
                    } else {
                        resolver.locate(&key_file, 0)
                    };
                    Some(KeyFileFacts {
                        luks_name: name.clone(),
                        key_file,
                        located,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let luks_headers = read_luks_headers(host, &phi_paths, &tmp_paths, &swaps);
        EncryptionObservation {
            mounts,
            phi_paths,
            tmp_paths,
            swaps,
            luks_headers,
            declared,
            key_files,
        }
    }

    fn judge(
        &self,
        observation: &EncryptionObservation,
        baseline: &Baseline,
        _now: Timestamp,
    ) -> Judgement {
        let policy = &baseline.policy().checks.encryption;
        let mut judgement = Judgement::new(
            observed_json(observation),
            expected_json(observation, policy),
        );
        judge_phi_paths(observation, &mut judgement);
        judge_swap(observation, policy, &mut judgement);
        judge_tmp(observation, policy, &mut judgement);
        judge_cipher(observation, policy, &mut judgement);
        judge_key_files(observation, &mut judgement);
        judgement
    }
}

// ---------------------------------------------------------------------------------------------
// Judgement
// ---------------------------------------------------------------------------------------------

const RULE_PHI_PATHS: &str = "encryption.phi_paths";
const RULE_SWAP: &str = "encryption.swap";
const RULE_TMP: &str = "encryption.tmp";
const RULE_CIPHER: &str = "encryption.cipher";
const RULE_KEY_FILES: &str = "encryption.key_files";

const FIX_ENCRYPT_FS: &str = "move the data to a LUKS2 (aes-xts-plain64, 512-bit key) or encrypted ZFS file system, or encrypt it in place with cryptsetup reencrypt --encrypt (a human decides: data-loss risk)";
const FIX_REENCRYPT: &str = "re-encrypt the volume with aes-xts-plain64 and a 512-bit key (cryptsetup reencrypt; a human decides)";
const FIX_KEY_FILE: &str = "keep the LUKS key file on encrypted storage (or use a passphrase/TPM2 token) through a new generation (a human decides)";

/// Whether a storage counts as encrypted for a data path (swap is judged separately).
fn data_verdict(storage: &Storage) -> (Status, String) {
    match storage {
        Storage::Luks(layers) => (Status::Pass, format!("on {}", describe_luks(layers))),
        Storage::Zfs {
            dataset,
            props: Ok(props),
        } if props.encryption != "off" && props.keystatus == "available" => (
            Status::Pass,
            format!(
                "on ZFS dataset {dataset} encrypted with {} (root {})",
                props.encryption, props.encryption_root
            ),
        ),
        Storage::Zfs {
            dataset,
            props: Ok(props),
        } if props.encryption == "off" => (
            Status::Fail,
            format!("on ZFS dataset {dataset} without encryption"),
        ),
        Storage::Zfs {
            dataset,
            props: Ok(props),
        } => (
            Status::Fail,
            format!(
                "on ZFS dataset {dataset} ({}) whose key is {}",
                props.encryption, props.keystatus
            ),
        ),
        Storage::Zfs {
            dataset,
            props: Err(err),
        } => (
            Status::Unknown,
            format!("on ZFS dataset {dataset}, whose encryption could not be read: {err}"),
        ),
        Storage::Memory(fstype) => (Status::Pass, format!("on {fstype}: memory, not at rest")),
        Storage::Zram(name) => (
            Status::Pass,
            format!("on {name}: compressed memory, not at rest"),
        ),
        Storage::Plain(names) => (
            Status::Fail,
            format!(
                "on plain dm-crypt ({}), which has no header and counts only for swap",
                names.join(", ")
            ),
        ),
        Storage::OtherCrypt(kind) => (
            Status::Fail,
            format!("on {kind} dm-crypt, which is not LUKS; its cipher cannot be verified"),
        ),
        Storage::Unencrypted(leaf) => (Status::Fail, format!("on {leaf} with no encryption layer")),
        Storage::Unrecognised(reason) => (Status::Unknown, reason.clone()),
    }
}

fn describe_luks(layers: &[LuksLayer]) -> String {
    let parts: Vec<String> = layers
        .iter()
        .map(|layer| match &layer.device {
            Some(device) => format!("LUKS{} {} over {device}", layer.version, layer.dm_name),
            None => format!("LUKS{} {}", layer.version, layer.dm_name),
        })
        .collect();
    parts.join(" and ")
}

fn judge_phi_paths(observation: &EncryptionObservation, judgement: &mut Judgement) {
    if let Err(err) = &observation.mounts {
        judgement.unknown(RULE_PHI_PATHS, err);
        return;
    }
    if observation.phi_paths.is_empty() {
        judgement.rule(
            RULE_PHI_PATHS,
            Status::NotApplicable,
            "the baseline names no phi_paths",
        );
        return;
    }
    // One result per path, so each path's storage is its own evidence line.
    for facts in &observation.phi_paths {
        match &facts.located {
            Err(err) => {
                judgement.rule(
                    RULE_PHI_PATHS,
                    Status::Unknown,
                    format!("{}: {err}", facts.path),
                );
            }
            Ok(None) => {
                judgement.rule(
                    RULE_PHI_PATHS,
                    Status::NotApplicable,
                    format!("{}: does not exist on this host", facts.path),
                );
            }
            Ok(Some(located)) => {
                let (status, why) = data_verdict(&located.storage);
                let message = format!(
                    "{} ({} on {}): {why}",
                    facts.path, located.mount.fstype, located.mount.mount_point
                );
                if status == Status::Fail {
                    judgement.rule_with_fix(
                        RULE_PHI_PATHS,
                        status,
                        message,
                        FIX_ENCRYPT_FS,
                        SafetyClass::NeverAutomatic,
                    );
                } else {
                    judgement.rule(RULE_PHI_PATHS, status, message);
                }
            }
        }
    }
}

fn declared_random_swap(observation: &EncryptionObservation) -> Vec<String> {
    match &observation.declared {
        DeclaredEncryption::Present { swap, .. } => swap
            .iter()
            .filter(|it| it.random_encryption)
            .map(|it| it.device.clone())
            .collect(),
        _ => Vec::new(),
    }
}

fn judge_swap(
    observation: &EncryptionObservation,
    policy: &EncryptionPolicy,
    judgement: &mut Judgement,
) {
    if !policy.swap_encrypted_required {
        judgement.rule(
            RULE_SWAP,
            Status::NotApplicable,
            "the baseline does not require encrypted swap",
        );
        return;
    }
    let swaps = match &observation.swaps {
        Ok(it) => it,
        Err(err) => {
            judgement.unknown(RULE_SWAP, err);
            return;
        }
    };
    if swaps.is_empty() {
        judgement.rule(RULE_SWAP, Status::Pass, "no swap in use");
        return;
    }
    let mut unencrypted = Vec::new();
    let mut unknown = Vec::new();
    let mut encrypted = Vec::new();
    for swap in swaps {
        let label = format!("{} ({})", swap.filename, swap.kind);
        match &swap.storage {
            Err(err) => unknown.push(format!("{label}: {err}")),
            Ok(storage) => match storage {
                Storage::Luks(layers) => {
                    encrypted.push(format!("{label} on {}", describe_luks(layers)))
                }
                Storage::Plain(names) => {
                    encrypted.push(format!("{label} on plain dm-crypt {}", names.join(", ")))
                }
                Storage::Zram(_) | Storage::Memory(_) => {
                    encrypted.push(format!("{label} in memory"))
                }
                other => {
                    let (status, why) = data_verdict(other);
                    match status {
                        Status::Pass => encrypted.push(format!("{label} {why}")),
                        Status::Unknown => unknown.push(format!("{label}: {why}")),
                        _ => unencrypted.push(format!("{label} {why}")),
                    }
                }
            },
        }
    }
    if !unencrypted.is_empty() {
        let declared = declared_random_swap(observation);
        let (message, fix) = if declared.is_empty() {
            (
                format!("unencrypted swap: {}", unencrypted.join("; ")),
                match &observation.declared {
                    DeclaredEncryption::Present { .. } => {
                        "declare swapDevices.*.randomEncryption.enable in the pinned generation, switch to it and reboot in the maintenance window"
                    }
                    _ => {
                        "configure swap on dm-crypt with a random key per boot (crypttab), or zram, and reboot in the maintenance window"
                    }
                },
            )
        } else {
            (
                format!(
                    "unencrypted swap: {} (the generation declares randomEncryption for {}: the running system does not match it)",
                    unencrypted.join("; "),
                    declared.join(", ")
                ),
                "reboot into the current generation in the maintenance window so its encrypted swap is set up",
            )
        };
        let safety = match &observation.declared {
            DeclaredEncryption::Present { .. } => SafetyClass::Disruptive,
            _ => SafetyClass::NeverAutomatic,
        };
        judgement.rule_with_fix(RULE_SWAP, Status::Fail, message, fix, safety);
    } else if !unknown.is_empty() {
        judgement.rule(
            RULE_SWAP,
            Status::Unknown,
            format!("swap storage not determined: {}", unknown.join("; ")),
        );
    } else {
        judgement.rule(
            RULE_SWAP,
            Status::Pass,
            format!("swap is encrypted or in memory: {}", encrypted.join("; ")),
        );
    }
}

fn judge_tmp(
    observation: &EncryptionObservation,
    policy: &EncryptionPolicy,
    judgement: &mut Judgement,
) {
    if !policy.tmp_encrypted_required {
        judgement.rule(
            RULE_TMP,
            Status::NotApplicable,
            "the baseline does not require an encrypted /tmp",
        );
        return;
    }
    if let Err(err) = &observation.mounts {
        judgement.unknown(RULE_TMP, err);
        return;
    }
    let declared_tmpfs = match &observation.declared {
        DeclaredEncryption::Present { tmp_on_tmpfs, .. } => Some(*tmp_on_tmpfs),
        _ => None,
    };
    for facts in &observation.tmp_paths {
        let located = match &facts.located {
            Err(err) => {
                judgement.rule(RULE_TMP, Status::Unknown, format!("{}: {err}", facts.path));
                continue;
            }
            Ok(None) => {
                judgement.rule(
                    RULE_TMP,
                    Status::NotApplicable,
                    format!("{}: does not exist on this host", facts.path),
                );
                continue;
            }
            Ok(Some(it)) => it,
        };
        let (status, why) = data_verdict(&located.storage);
        let mut message = format!(
            "{} ({} on {}): {why}",
            facts.path, located.mount.fstype, located.mount.mount_point
        );
        if status != Status::Fail {
            judgement.rule(RULE_TMP, status, message);
            continue;
        }
        let is_tmp = facts.path == "/tmp";
        let (fix, safety) = match declared_tmpfs {
            Some(true) if is_tmp => {
                message.push_str(
                    " (the generation declares boot.tmp.useTmpfs, but /tmp is not tmpfs)",
                );
                (
                    "reboot into the current generation in the maintenance window so /tmp is mounted as tmpfs",
                    SafetyClass::Disruptive,
                )
            }
            Some(false) if is_tmp => (
                "declare boot.tmp.useTmpfs in the pinned generation, switch to it and reboot in the maintenance window",
                SafetyClass::Disruptive,
            ),
            _ => (FIX_ENCRYPT_FS, SafetyClass::NeverAutomatic),
        };
        judgement.rule_with_fix(RULE_TMP, Status::Fail, message, fix, safety);
    }
}

/// AES key bits of a ZFS encryption suite (`aes-256-gcm` → 256).
fn zfs_aes_bits(encryption: &str) -> Option<u32> {
    let rest = encryption.strip_prefix("aes-")?;
    let (bits, mode) = rest.split_once('-')?;
    matches!(mode, "gcm" | "ccm").then_some(())?;
    bits.parse().ok()
}

fn judge_cipher(
    observation: &EncryptionObservation,
    policy: &EncryptionPolicy,
    judgement: &mut Judgement,
) {
    let mut judged = 0;
    for facts in &observation.luks_headers {
        judged += 1;
        let backs = facts.backs.join(", ");
        match &facts.header {
            Err(err) => {
                judgement.rule(
                    RULE_CIPHER,
                    Status::Unknown,
                    format!("{} (backs {backs}): {err}", facts.device),
                );
            }
            Ok(header) => {
                let xts = !header.ciphers.is_empty()
                    && header.ciphers.iter().all(|it| it.starts_with("aes-xts-"));
                let summary = format!(
                    "{} (backs {backs}): LUKS{} {} with a {}-bit key",
                    facts.device,
                    header.version,
                    header.ciphers.join(", "),
                    header.key_bits
                );
                if xts && header.key_bits >= policy.min_xts_key_bits {
                    judgement.rule(RULE_CIPHER, Status::Pass, summary);
                } else {
                    judgement.rule_with_fix(
                        RULE_CIPHER,
                        Status::Fail,
                        format!(
                            "{summary}; the baseline requires AES-XTS with at least {} bits",
                            policy.min_xts_key_bits
                        ),
                        FIX_REENCRYPT,
                        SafetyClass::NeverAutomatic,
                    );
                }
            }
        }
    }
    let mut datasets = BTreeSet::new();
    for facts in observation
        .phi_paths
        .iter()
        .chain(observation.tmp_paths.iter())
    {
        if let Ok(Some(Located {
            storage:
                Storage::Zfs {
                    dataset,
                    props: Ok(props),
                },
            ..
        })) = &facts.located
            && props.encryption != "off"
            && datasets.insert(dataset.clone())
        {
            judged += 1;
            let needed = policy.min_xts_key_bits.div_ceil(2);
            match zfs_aes_bits(&props.encryption) {
                Some(bits) if bits >= needed => judgement.rule(
                    RULE_CIPHER,
                    Status::Pass,
                    format!("ZFS {dataset}: {} ({bits}-bit AES)", props.encryption),
                ),
                Some(bits) => judgement.rule_with_fix(
                    RULE_CIPHER,
                    Status::Fail,
                    format!("ZFS {dataset}: {} ({bits}-bit AES); the baseline requires {needed}-bit AES", props.encryption),
                    "create a dataset with encryption=aes-256-gcm and move the data (a human decides)",
                    SafetyClass::NeverAutomatic,
                ),
                None => judgement.rule(
                    RULE_CIPHER,
                    Status::Unknown,
                    format!("ZFS {dataset}: encryption suite {:?} not recognised", props.encryption),
                ),
            };
        }
    }
    if judged == 0 {
        if let Err(err) = &observation.mounts {
            judgement.unknown(RULE_CIPHER, err);
            return;
        }
        judgement.rule(
            RULE_CIPHER,
            Status::NotApplicable,
            "no LUKS device or encrypted ZFS dataset backs the checked paths",
        );
    }
}

fn judge_key_files(observation: &EncryptionObservation, judgement: &mut Judgement) {
    for facts in &observation.key_files {
        let label = format!(
            "LUKS device {} key file {}",
            facts.luks_name, facts.key_file
        );
        match &facts.located {
            Err(err) => {
                judgement.rule(RULE_KEY_FILES, Status::Unknown, format!("{label}: {err}"));
            }
            Ok(None) if facts.key_file.starts_with("/dev/") => {
                judgement.rule(
                    RULE_KEY_FILES,
                    Status::NotApplicable,
                    format!("{label}: a key device, not a file"),
                );
            }
            Ok(None) => {
                judgement.rule(
                    RULE_KEY_FILES,
                    Status::Unknown,
                    format!("{label}: not on the running system (an initrd secret on an unencrypted /boot would expose it)"),
                );
            }
            Ok(Some(located)) => {
                let (status, why) = data_verdict(&located.storage);
                let message = format!("{label}: {why}");
                if status == Status::Fail {
                    judgement.rule_with_fix(
                        RULE_KEY_FILES,
                        status,
                        message,
                        FIX_KEY_FILE,
                        SafetyClass::NeverAutomatic,
                    );
                } else {
                    judgement.rule(RULE_KEY_FILES, status, message);
                }
            }
        }
    }
}

fn storage_json(storage: &Storage) -> Value {
    match storage {
        Storage::Luks(layers) => json!({
            "kind": "luks",
            "layers": layers.iter().map(|it| json!({"version": it.version, "dm_name": it.dm_name, "device": it.device})).collect::<Vec<_>>(),
        }),
        Storage::Plain(names) => json!({"kind": "plain-dm-crypt", "dm_names": names}),
        Storage::OtherCrypt(kind) => json!({"kind": "other-dm-crypt", "type": kind}),
        Storage::Zfs { dataset, props } => json!({
            "kind": "zfs",
            "dataset": dataset,
            "encryption": props.as_ref().ok().map(|it| &it.encryption),
            "keystatus": props.as_ref().ok().map(|it| &it.keystatus),
            "encryptionroot": props.as_ref().ok().map(|it| &it.encryption_root),
            "error": props.as_ref().err(),
        }),
        Storage::Memory(fstype) => json!({"kind": "memory", "fstype": fstype}),
        Storage::Zram(name) => json!({"kind": "zram", "device": name}),
        Storage::Unencrypted(leaf) => json!({"kind": "unencrypted", "device": leaf}),
        Storage::Unrecognised(reason) => json!({"kind": "unrecognised", "reason": reason}),
    }
}

fn path_json(facts: &PathFacts) -> Value {
    match &facts.located {
        Ok(Some(located)) => json!({
            "path": facts.path,
            "canonical": located.canonical,
            "mount_point": located.mount.mount_point,
            "fstype": located.mount.fstype,
            "source": located.mount.source,
            "device": format!("{}:{}", located.mount.major, located.mount.minor),
            "chain": located.chain,
            "storage": storage_json(&located.storage),
        }),
        Ok(None) => json!({"path": facts.path, "exists": false}),
        Err(err) => json!({"path": facts.path, "error": err.to_string()}),
    }
}

fn observed_json(observation: &EncryptionObservation) -> Value {
    let swaps = match &observation.swaps {
        Ok(list) => json!(
            list.iter()
                .map(|it| json!({
                    "filename": it.filename,
                    "type": it.kind,
                    "chain": it.chain,
                    "storage": match &it.storage {
                        Ok(storage) => storage_json(storage),
                        Err(err) => json!({"error": err.to_string()}),
                    },
                }))
                .collect::<Vec<_>>()
        ),
        Err(err) => json!({"error": err.to_string()}),
    };
    let headers: Vec<Value> = observation
        .luks_headers
        .iter()
        .map(|it| match &it.header {
            Ok(header) => json!({
                "device": it.device,
                "backs": it.backs,
                "version": header.version,
                "ciphers": header.ciphers,
                "key_bits": header.key_bits,
                "pbkdf": header.pbkdfs,
            }),
            Err(err) => json!({"device": it.device, "backs": it.backs, "error": err.to_string()}),
        })
        .collect();
    let declared = match &observation.declared {
        DeclaredEncryption::Absent => Value::Null,
        DeclaredEncryption::Invalid(reason) => json!({"invalid": reason}),
        DeclaredEncryption::Present {
            luks,
            swap,
            tmp_on_tmpfs,
        } => json!({
            "luks": luks.iter().map(|(name, device)| json!({"name": name, "device": device.device, "keyFile": device.key_file})).collect::<Vec<_>>(),
            "swap": swap.iter().map(|it| json!({"device": it.device, "randomEncryption": it.random_encryption})).collect::<Vec<_>>(),
            "tmpOnTmpfs": tmp_on_tmpfs,
        }),
    };
    json!({
        "mounts": match &observation.mounts {
            Ok(list) => json!(list.len()),
            Err(err) => json!({"error": err.to_string()}),
        },
        "phi_paths": observation.phi_paths.iter().map(path_json).collect::<Vec<_>>(),
        "tmp": observation.tmp_paths.iter().map(path_json).collect::<Vec<_>>(),
        "swaps": swaps,
        "luks_headers": headers,
        "key_files": observation.key_files.iter().map(|it| json!({
            "luks": it.luks_name,
            "key_file": it.key_file,
            "storage": match &it.located {
                Ok(Some(located)) => storage_json(&located.storage),
                Ok(None) => Value::Null,
                Err(err) => json!({"error": err.to_string()}),
            },
        })).collect::<Vec<_>>(),
        "declared": declared,
    })
}

fn expected_json(observation: &EncryptionObservation, policy: &EncryptionPolicy) -> Value {
    json!({
        "phi_paths": policy.phi_paths,
        "phi_paths_on": "LUKS1/LUKS2 or encrypted ZFS (tmpfs accepted: not at rest)",
        "swap": if policy.swap_encrypted_required { "dm-crypt (plain or LUKS), zram, or none" } else { "not required" },
        "tmp": if policy.tmp_encrypted_required { "tmpfs, or LUKS/encrypted ZFS" } else { "not required" },
        "cipher": format!("aes-xts-* with at least {} key bits", policy.min_xts_key_bits),
        "declared_tmp_on_tmpfs": match &observation.declared {
            DeclaredEncryption::Present { tmp_on_tmpfs, .. } => json!(tmp_on_tmpfs),
            _ => Value::Null,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Observation: mounts, block devices, swaps, headers
// ---------------------------------------------------------------------------------------------

/// Deepest storage stack followed (dm on dm on md on loop on a file on …).
const MAX_STACK_DEPTH: usize = 8;
/// Most block devices visited for one path (wide RAID or LVM spans).
const MAX_NODES: usize = 64;

fn read_mounts(host: &Host) -> Result<Vec<Mount>, FactError> {
    let file = "/proc/self/mountinfo";
    let bytes = host.root.read_bounded(Path::new(file), 16 * 1024 * 1024)?;
    parse_mountinfo(&String::from_utf8_lossy(&bytes)).map_err(|err| FactError::parse(file, err))
}

/// Parses `/proc/self/mountinfo` (proc(5)): `id parent major:minor root mount-point options
/// [optional…] - fstype source super-options`, with `\040`-style octal escapes in paths.
fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, String> {
    let mut res = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let bad = |what: &str| format!("line {}: {what}", idx + 1);
        if fields.len() < 10 {
            return Err(bad("expected at least 10 fields"));
        }
        let (major, minor) = fields[2]
            .split_once(':')
            .ok_or_else(|| bad("bad major:minor"))?;
        let major = major.parse::<u32>().map_err(|_| bad("bad major"))?;
        let minor = minor.parse::<u32>().map_err(|_| bad("bad minor"))?;
        let separator = fields[6..]
            .iter()
            .position(|it| *it == "-")
            .ok_or_else(|| bad("no ` - ` separator"))?
            + 6;
        let fstype = fields.get(separator + 1).ok_or_else(|| bad("no fstype"))?;
        let source = fields.get(separator + 2).ok_or_else(|| bad("no source"))?;
        res.push(Mount {
            major,
            minor,
            mount_point: unescape_octal(fields[4]),
            fstype: unescape_octal(fstype),
            source: unescape_octal(source),
        });
    }
    Ok(res)
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash).
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut res = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'\\'
            && idx + 3 < bytes.len()
            && bytes[idx + 1..idx + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[idx + 1] - b'0') as u32 * 64
                + (bytes[idx + 2] - b'0') as u32 * 8
                + (bytes[idx + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(value) {
                res.push(byte);
                idx += 4;
                continue;
            }
        }
        res.push(bytes[idx]);
        idx += 1;
    }
    String::from_utf8_lossy(&res).into_owned()
}

/// The mount a canonical path is on: the longest mount point that is a prefix; among equal
/// mount points the last one (mounted on top) wins.
fn find_mount<'a>(mounts: &'a [Mount], canonical: &str) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for mount in mounts {
        let point = mount.mount_point.as_str();
        let under = point == "/"
            || canonical == point
            || (canonical.starts_with(point)
                && canonical.as_bytes().get(point.len()) == Some(&b'/'));
        if under && best.is_none_or(|it| point.len() >= it.mount_point.len()) {
            best = Some(mount);
        }
    }
    best
}

/// Parses `/proc/swaps`: a header, then `Filename Type Size Used Priority`, with the file name
/// octal-escaped like mountinfo paths.
fn parse_swaps(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut res = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if idx == 0 || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            return Err(format!(
                "line {}: expected `Filename Type Size Used Priority`",
                idx + 1
            ));
        }
        res.push((unescape_octal(fields[0]), fields[1].to_string()));
    }
    Ok(res)
}

/// Walks from paths to storage. Bounded: depth ([`MAX_STACK_DEPTH`]) and nodes ([`MAX_NODES`]).
struct Resolver<'a> {
    host: &'a Host,
    mounts: &'a [Mount],
}

impl Resolver<'_> {
    fn locate(&self, path: &str, depth: usize) -> Result<Option<Located>, FactError> {
        let canonical = match self.host.root.canonical(Path::new(path)) {
            Ok(it) => it.display().to_string(),
            Err(err) if err.is_absent() => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some(mount) = find_mount(self.mounts, &canonical) else {
            return Err(FactError::parse(
                "/proc/self/mountinfo",
                format!("no mount contains {canonical}"),
            ));
        };
        let mut chain = Vec::new();
        let storage = self.mount_storage(mount, depth, &mut chain)?;
        Ok(Some(Located {
            canonical,
            mount: mount.clone(),
            storage,
            chain,
        }))
    }

    fn mount_storage(
        &self,
        mount: &Mount,
        depth: usize,
        chain: &mut Vec<String>,
    ) -> Result<Storage, FactError> {
        match mount.fstype.as_str() {
            "zfs" => return Ok(self.zfs(&mount.source)),
            "tmpfs" | "ramfs" => return Ok(Storage::Memory(mount.fstype.clone())),
            _ => {}
        }
        let node = Path::new("/sys/dev/block").join(format!("{}:{}", mount.major, mount.minor));
        let mut nodes = 0;
        if mount.major != 0 {
            match self.host.root.canonical(&node) {
                Ok(canonical) => return self.block(&canonical, depth, &mut nodes, chain),
                Err(err) if !err.is_absent() => return Err(err),
                Err(_) => {}
            }
        }
        // btrfs (and others) report an anonymous device number; the source names the device.
        if mount.source.starts_with("/dev/") {
            let name = self.device_name(&mount.source)?;
            let node = self
                .host
                .root
                .canonical(&Path::new("/sys/class/block").join(&name))?;
            return self.block(&node, depth, &mut nodes, chain);
        }
        Ok(Storage::Unrecognised(format!(
            "{} is on {} from {:?}: not a local block device or ZFS dataset, so its storage is not visible from this host",
            mount.mount_point, mount.fstype, mount.source
        )))
    }

    /// Resolves `/dev/mapper/x`, `/dev/dm-3`, `/dev/sda2`, `/dev/disk/by-uuid/…` to a block
    /// device name as in `/sys/class/block`.
    fn device_name(&self, device: &str) -> Result<String, FactError> {
        if let Ok(canonical) = self.host.root.canonical(Path::new(device))
            && let Some(name) = canonical
                .file_name()
                .map(|it| it.to_string_lossy().into_owned())
            && canonical.parent() == Some(Path::new("/dev"))
        {
            return Ok(name);
        }
        if let Some(mapped) = device.strip_prefix("/dev/mapper/") {
            // Without /dev (a captured tree), find the dm device by its dm/name.
            for name in self.host.root.list_dir(Path::new("/sys/class/block"))? {
                if !name.starts_with("dm-") {
                    continue;
                }
                let dm_name = Path::new("/sys/class/block").join(&name).join("dm/name");
                if self
                    .host
                    .root
                    .read_text(&dm_name)
                    .is_ok_and(|it| it.trim() == mapped)
                {
                    return Ok(name);
                }
            }
            return Err(FactError::NotFound {
                path: PathBuf::from(device),
            });
        }
        Path::new(device)
            .file_name()
            .map(|it| it.to_string_lossy().into_owned())
            .ok_or_else(|| FactError::parse("device path", format!("{device:?} names no device")))
    }

    /// The storage of a block device, given its canonical sysfs directory.
    fn block(
        &self,
        node: &Path,
        depth: usize,
        nodes: &mut usize,
        chain: &mut Vec<String>,
    ) -> Result<Storage, FactError> {
        *nodes += 1;
        let name = node
            .file_name()
            .map(|it| it.to_string_lossy().into_owned())
            .unwrap_or_default();
        if depth > MAX_STACK_DEPTH || *nodes > MAX_NODES {
            return Ok(Storage::Unrecognised(format!(
                "the device stack under {name} is deeper or wider than {MAX_STACK_DEPTH}/{MAX_NODES} devices"
            )));
        }
        let root = &self.host.root;
        let uuid = match root.read_text(&node.join("dm/uuid")) {
            Ok(it) => Some(it.trim().to_string()),
            Err(err) if err.is_absent() => None,
            Err(err) => return Err(err),
        };
        let dm_name = root
            .read_text(&node.join("dm/name"))
            .map(|it| it.trim().to_string())
            .unwrap_or_default();
        let slaves = match root.list_dir(&node.join("slaves")) {
            Ok(it) => it,
            Err(err) if err.is_absent() => Vec::new(),
            Err(err) => return Err(err),
        };
        if let Some(uuid) = &uuid
            && let Some(rest) = uuid.strip_prefix("CRYPT-")
        {
            let kind = rest.split('-').next().unwrap_or_default().to_string();
            chain.push(format!("{name} ({dm_name}, CRYPT-{kind})"));
            let device = slaves.first().map(|it| format!("/dev/{it}"));
            if let Some(device) = &device {
                chain.push(device.trim_start_matches("/dev/").to_string());
            }
            return Ok(match kind.as_str() {
                "LUKS1" => Storage::Luks(vec![LuksLayer {
                    version: 1,
                    dm_name,
                    device,
                }]),
                "LUKS2" => Storage::Luks(vec![LuksLayer {
                    version: 2,
                    dm_name,
                    device,
                }]),
                "PLAIN" => Storage::Plain(vec![dm_name]),
                other => Storage::OtherCrypt(format!("{other} ({dm_name})")),
            });
        }
        match &uuid {
            Some(uuid) => {
                let kind = uuid.split('-').next().unwrap_or_default();
                chain.push(format!("{name} ({dm_name}, {kind})"));
            }
            None => chain.push(name.clone()),
        }
        if slaves.is_empty() {
            if name.starts_with("zram") {
                return Ok(Storage::Zram(name));
            }
            if name.starts_with("loop") {
                return self.loop_storage(node, &name, depth, chain);
            }
            if uuid.is_some() {
                // A device-mapper target with no lower device (zero, error, a snapshot of
                // nothing): nothing is stored unencrypted, but nothing is proven either.
                return Ok(Storage::Unrecognised(format!(
                    "device-mapper device {name} ({dm_name}) has no underlying device"
                )));
            }
            return Ok(Storage::Unencrypted(format!("/dev/{name}")));
        }
        let mut children = Vec::new();
        for slave in slaves {
            let link = node.join("slaves").join(&slave);
            let child = root.canonical(&link)?;
            children.push(self.block(&child, depth + 1, nodes, chain)?);
        }
        Ok(combine(children))
    }

    /// A loop device is as encrypted as the file system its backing file is on.
    fn loop_storage(
        &self,
        node: &Path,
        name: &str,
        depth: usize,
        chain: &mut Vec<String>,
    ) -> Result<Storage, FactError> {
        let backing = match self.host.root.read_text(&node.join("loop/backing_file")) {
            Ok(it) => it.trim().trim_end_matches(" (deleted)").to_string(),
            Err(err) if err.is_absent() => {
                return Ok(Storage::Unrecognised(format!(
                    "loop device {name} has no backing file"
                )));
            }
            Err(err) => return Err(err),
        };
        chain.push(format!("file {backing}"));
        match self.locate(&backing, depth + 1)? {
            Some(located) => {
                chain.extend(located.chain);
                Ok(match located.storage {
                    Storage::Unencrypted(leaf) => Storage::Unencrypted(format!(
                        "/dev/{name} (backing file {backing} on {leaf})"
                    )),
                    other => other,
                })
            }
            None => Ok(Storage::Unrecognised(format!(
                "loop device {name} is backed by {backing}, which is not visible"
            ))),
        }
    }

    fn zfs(&self, dataset: &str) -> Storage {
        let props = zfs_props(self.host, dataset).map_err(|err| err.to_string());
        Storage::Zfs {
            dataset: dataset.to_string(),
            props,
        }
    }

    fn swaps(&self) -> Result<Vec<SwapFacts>, FactError> {
        let file = "/proc/swaps";
        let text = self.host.root.read_text(Path::new(file))?;
        let entries = parse_swaps(&text).map_err(|err| FactError::parse(file, err))?;
        let mut res = Vec::new();
        for (filename, kind) in entries {
            let mut chain = Vec::new();
            let storage = if kind == "file" {
                match self.locate(&filename, 0) {
                    Ok(Some(located)) => {
                        chain = located.chain;
                        Ok(located.storage)
                    }
                    Ok(None) => Ok(Storage::Unrecognised(format!(
                        "swap file {filename} is not visible"
                    ))),
                    Err(err) => Err(err),
                }
            } else {
                self.swap_device(&filename, &mut chain)
            };
            res.push(SwapFacts {
                filename,
                kind,
                storage,
                chain,
            });
        }
        Ok(res)
    }

    fn swap_device(&self, device: &str, chain: &mut Vec<String>) -> Result<Storage, FactError> {
        let name = self.device_name(device)?;
        if name.starts_with("zram") {
            chain.push(name.clone());
            return Ok(Storage::Zram(name));
        }
        let node = self
            .host
            .root
            .canonical(&Path::new("/sys/class/block").join(&name))?;
        let mut nodes = 0;
        self.block(&node, 0, &mut nodes, chain)
    }
}

/// A device over several lower devices is only as encrypted as its least encrypted one.
fn combine(children: Vec<Storage>) -> Storage {
    let mut luks = Vec::new();
    let mut plain = Vec::new();
    let mut worst: Option<Storage> = None;
    let rank = |storage: &Storage| match storage {
        Storage::Unencrypted(_) => 4,
        Storage::Unrecognised(_) => 3,
        Storage::OtherCrypt(_) | Storage::Zfs { .. } | Storage::Memory(_) => 2,
        Storage::Plain(_) | Storage::Zram(_) => 1,
        Storage::Luks(_) => 0,
    };
    for child in children {
        match &child {
            Storage::Luks(layers) => luks.extend(layers.iter().cloned()),
            Storage::Plain(names) => plain.extend(names.iter().cloned()),
            _ => {}
        }
        if worst.as_ref().is_none_or(|it| rank(&child) > rank(it)) {
            worst = Some(child);
        }
    }
    match worst {
        Some(Storage::Luks(_)) | None => {
            luks.sort();
            luks.dedup();
            Storage::Luks(luks)
        }
        Some(Storage::Plain(_)) => {
            plain.sort();
            plain.dedup();
            Storage::Plain(plain)
        }
        Some(other) => other,
    }
}

/// `zfs get` of the encryption properties of one dataset.
fn zfs_props(host: &Host, dataset: &str) -> Result<ZfsProps, FactError> {
    // Dataset names come from mountinfo (any user can mount a file system named like an
    // option): refuse anything that could be read as one.
    if dataset.is_empty() || dataset.starts_with('-') || dataset.chars().any(char::is_control) {
        return Err(FactError::parse(
            "zfs dataset",
            format!("{dataset:?} is not a dataset name"),
        ));
    }
    let record: String = dataset
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':') => c,
            _ => '_',
        })
        .collect();
    let invocation = Invocation::new(
        format!("zfs-get.{record}"),
        "zfs",
        &[
            "get",
            "-H",
            "-p",
            "-o",
            "name,property,value",
            "encryption,keystatus,encryptionroot",
            dataset,
        ],
    );
    let out = host.run(&invocation)?.success(&invocation)?;
    parse_zfs_get(&out.stdout_text(), dataset)
        .map_err(|err| FactError::parse(invocation.display(), err))
}

/// Parses `zfs get -H -p -o name,property,value …`: tab-separated `name property value` lines.
fn parse_zfs_get(text: &str, dataset: &str) -> Result<ZfsProps, String> {
    let mut props = ZfsProps {
        encryption: String::new(),
        keystatus: String::new(),
        encryption_root: String::new(),
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 3 {
            return Err(format!(
                "expected `name<TAB>property<TAB>value`, found {line:?}"
            ));
        }
        if fields[0] != dataset {
            continue;
        }
        match fields[1] {
            "encryption" => props.encryption = fields[2].to_string(),
            "keystatus" => props.keystatus = fields[2].to_string(),
            "encryptionroot" => props.encryption_root = fields[2].to_string(),
            _ => {}
        }
    }
    if props.encryption.is_empty() {
        return Err(format!("no encryption property for {dataset}"));
    }
    Ok(props)
}

/// Reads the LUKS header of every distinct LUKS device found.
fn read_luks_headers(
    host: &Host,
    phi_paths: &[PathFacts],
    tmp_paths: &[PathFacts],
    swaps: &Result<Vec<SwapFacts>, FactError>,
) -> Vec<LuksHeaderFacts> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    let mut note = |layers: &[LuksLayer], what: &str| {
        for layer in layers {
            let device = layer
                .device
                .clone()
                .unwrap_or_else(|| format!("/dev/mapper/{}", layer.dm_name));
            match found.iter_mut().find(|(it, _)| *it == device) {
                Some((_, backs)) => {
                    if !backs.iter().any(|it| it == what) {
                        backs.push(what.to_string());
                    }
                }
                None => found.push((device, vec![what.to_string()])),
            }
        }
    };
    for facts in phi_paths.iter().chain(tmp_paths.iter()) {
        if let Ok(Some(Located {
            storage: Storage::Luks(layers),
            ..
        })) = &facts.located
        {
            note(layers, &facts.path);
        }
    }
    if let Ok(list) = swaps {
        for swap in list {
            if let Ok(Storage::Luks(layers)) = &swap.storage {
                note(layers, &format!("swap {}", swap.filename));
            }
        }
    }
    found
        .into_iter()
        .map(|(device, backs)| {
            let probe = Probe::LuksDump {
                device: PathBuf::from(&device),
            };
            let header = probe.invocation().and_then(|invocation| {
                let out = host.probe(&probe)?.success(&invocation)?;
                parse_luks_dump(&out.stdout_text())
                    .map_err(|err| FactError::parse(invocation.display(), err))
            });
            LuksHeaderFacts {
                device,
                backs,
                header,
            }
        })
        .collect()
}

/// Parses `cryptsetup luksDump` text (cryptsetup 2.x) into version, data ciphers and volume key
/// size. Salts, digests and key material are never kept.
///
/// LUKS2: `Version: 2`; under `Data segments:` each segment's `cipher: aes-xts-plain64`; under
/// `Keyslots:` each keyslot's `Key: 512 bits` (the volume key size; `Cipher key:` is the
/// keyslot area's own key) and `PBKDF: argon2id`.
/// LUKS1: `Version: 1`, `Cipher name: aes`, `Cipher mode: xts-plain64`, `MK bits: 512`.
fn parse_luks_dump(text: &str) -> Result<LuksHeader, String> {
    let mut version = None;
    let mut section = String::new();
    let mut ciphers = Vec::new();
    let mut key_bits: Option<u32> = None;
    let mut pbkdfs = Vec::new();
    let mut luks1_name = None;
    let mut luks1_mode = None;
    let bits = |value: &str| -> Result<u32, String> {
        value
            .trim()
            .strip_suffix("bits")
            .and_then(|it| it.trim().parse().ok())
            .ok_or_else(|| format!("bad key size {value:?}"))
    };
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) && line.trim_end().ends_with(':') {
            section = line.trim_end().trim_end_matches(':').to_string();
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match (section.as_str(), key) {
            (_, "Version") if !line.starts_with([' ', '\t']) => {
                version = Some(
                    value
                        .parse::<u8>()
                        .map_err(|_| format!("bad version {value:?}"))?,
                );
            }
            ("Data segments", "cipher") => ciphers.push(value.to_string()),
            ("Keyslots", "Key") | (_, "MK bits") => {
                let value = if key == "MK bits" {
                    format!("{value} bits")
                } else {
                    value.to_string()
                };
                let found = bits(&value)?;
                key_bits = Some(key_bits.map_or(found, |it| it.min(found)));
            }
            ("Keyslots", "PBKDF") if !pbkdfs.iter().any(|it| it == value) => {
                pbkdfs.push(value.to_string())
            }
            (_, "Cipher name") => luks1_name = Some(value.to_string()),
            (_, "Cipher mode") => luks1_mode = Some(value.to_string()),
            _ => {}
        }
    }
    let version = version.ok_or("no `Version:` line")?;
    if version == 1 {
        match (luks1_name, luks1_mode) {
            (Some(name), Some(mode)) => ciphers.push(format!("{name}-{mode}")),
            _ => return Err("LUKS1 header without `Cipher name:`/`Cipher mode:`".to_string()),
        }
        pbkdfs.push("pbkdf2".to_string());
    }
    if ciphers.is_empty() {
        return Err("no data segment cipher".to_string());
    }
    let key_bits = key_bits.ok_or("no volume key size")?;
    Ok(LuksHeader {
        version,
        ciphers,
        key_bits,
        pbkdfs,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::checks::testing::{check_fixture, default_paths, real_tools, rule, run_on, ts};
    use crate::facts::command::{CommandSource, DEFAULT_SEARCH_PATH, Limits};
    use crate::facts::fs::Root;
    use crate::facts::probe::ProbeSource;

    const NOW: &str = "2026-11-27T12:00:00Z";

    // Fixture formats (see tests/fixtures/encryption/README.md): mountinfo, /proc/swaps and the
    // sysfs links and dm/uuid files follow a real Linux 6.x host's shapes; `luks-dump.*` files
    // are real cryptsetup 2.6.1 luksDump outputs of loop devices (device name replaced);
    // `zfs-get.*` follow zfs-get(8)'s `-H -p -o name,property,value` format.

    #[test]
    fn luks_root_passes() {
        let finding = check_fixture(
            &Encryption,
            "luks-root",
            NOW,
            Status::Pass,
            &[
                (RULE_PHI_PATHS, Status::Pass),
                (RULE_SWAP, Status::Pass),
                (RULE_TMP, Status::Pass),
                (RULE_CIPHER, Status::Pass),
            ],
        );
        let cipher = rule(&finding, RULE_CIPHER);
        assert!(
            cipher
                .message
                .contains("LUKS2 aes-xts-plain64 with a 512-bit key"),
            "{}",
            cipher.message
        );
        // /srv does not exist on this host: not applicable, not a pass.
        assert!(
            finding
                .results
                .iter()
                .any(|it| it.rule == RULE_PHI_PATHS && it.status == Status::NotApplicable)
        );
    }

    #[test]
    fn lvm_on_luks1_passes_with_swap_on_the_same_volume_group() {
        let finding = check_fixture(
            &Encryption,
            "lvm-on-luks",
            NOW,
            Status::Pass,
            &[
                (RULE_PHI_PATHS, Status::Pass),
                (RULE_SWAP, Status::Pass),
                (RULE_CIPHER, Status::Pass),
            ],
        );
        let home = finding
            .results
            .iter()
            .find(|it| it.message.starts_with("/home"))
            .unwrap();
        assert!(
            home.message.contains("LUKS1 sda5_crypt over /dev/sda5"),
            "{}",
            home.message
        );
        assert_eq!(
            finding.observed["phi_paths"][3]["chain"],
            json!([
                "dm-2 (debian--vg-home, LVM)",
                "dm-0 (sda5_crypt, CRYPT-LUKS1)",
                "sda5"
            ])
        );
    }

    #[test]
    fn plain_disk_fails_everywhere() {
        let finding = check_fixture(
            &Encryption,
            "plain-disk",
            NOW,
            Status::Fail,
            &[
                (RULE_PHI_PATHS, Status::Fail),
                (RULE_SWAP, Status::Fail),
                (RULE_TMP, Status::Fail),
                (RULE_CIPHER, Status::NotApplicable),
            ],
        );
        let phi = rule(&finding, RULE_PHI_PATHS);
        assert_eq!(
            phi.fix.as_ref().unwrap().safety,
            SafetyClass::NeverAutomatic
        );
    }

    #[test]
    fn unencrypted_swap_partition_fails() {
        let finding = check_fixture(
            &Encryption,
            "swap-plain-partition",
            NOW,
            Status::Fail,
            &[(RULE_SWAP, Status::Fail), (RULE_PHI_PATHS, Status::Pass)],
        );
        let swap = rule(&finding, RULE_SWAP);
        assert!(swap.message.contains("/dev/sda3"), "{}", swap.message);
        assert_eq!(swap.fix.as_ref().unwrap().safety, SafetyClass::Disruptive);
    }

    #[test]
    fn random_encryption_swap_passes() {
        check_fixture(
            &Encryption,
            "swap-random-encryption",
            NOW,
            Status::Pass,
            &[(RULE_SWAP, Status::Pass)],
        );
    }

    #[test]
    fn encrypted_zfs_passes_and_an_unencrypted_dataset_fails() {
        let finding = check_fixture(
            &Encryption,
            "zfs-encrypted",
            NOW,
            Status::Fail,
            &[
                (RULE_PHI_PATHS, Status::Pass),
                (RULE_PHI_PATHS, Status::Fail),
                (RULE_CIPHER, Status::Pass),
            ],
        );
        let srv = finding
            .results
            .iter()
            .find(|it| it.message.starts_with("/srv"))
            .unwrap();
        assert!(
            srv.message.contains("rpool/srv without encryption"),
            "{}",
            srv.message
        );
        let home = finding
            .results
            .iter()
            .find(|it| it.message.starts_with("/home"))
            .unwrap();
        assert_eq!(home.status, Status::Pass, "{}", home.message);
    }

    #[test]
    fn overlay_root_is_unknown() {
        let finding = check_fixture(
            &Encryption,
            "overlay-root",
            NOW,
            Status::Unknown,
            &[
                (RULE_PHI_PATHS, Status::Unknown),
                (RULE_TMP, Status::Unknown),
                (RULE_SWAP, Status::Pass),
            ],
        );
        assert!(finding.results.iter().all(|it| it.status != Status::Fail));
    }

    #[test]
    fn tmp_not_tmpfs_fails_and_says_what_is_declared() {
        let finding = check_fixture(
            &Encryption,
            "tmp-not-tmpfs",
            NOW,
            Status::Fail,
            &[(RULE_TMP, Status::Fail), (RULE_PHI_PATHS, Status::Pass)],
        );
        let tmp = finding
            .results
            .iter()
            .find(|it| it.rule == RULE_TMP && it.status == Status::Fail)
            .unwrap();
        assert!(
            tmp.message.contains("declares boot.tmp.useTmpfs"),
            "{}",
            tmp.message
        );
        assert_eq!(tmp.fix.as_ref().unwrap().safety, SafetyClass::Disruptive);
    }

    #[test]
    fn weak_cipher_fails() {
        let finding = check_fixture(
            &Encryption,
            "weak-cipher",
            NOW,
            Status::Fail,
            &[(RULE_CIPHER, Status::Fail), (RULE_PHI_PATHS, Status::Pass)],
        );
        let cipher = rule(&finding, RULE_CIPHER);
        assert!(cipher.message.contains("256-bit key"), "{}", cipher.message);
    }

    #[test]
    fn unprivileged_header_read_is_unknown() {
        let finding = check_fixture(
            &Encryption,
            "not-privileged",
            NOW,
            Status::Unknown,
            &[
                (RULE_CIPHER, Status::Unknown),
                (RULE_PHI_PATHS, Status::Pass),
            ],
        );
        let cipher = rule(&finding, RULE_CIPHER);
        assert!(
            cipher.message.contains("access denied"),
            "{}",
            cipher.message
        );
    }

    #[test]
    fn key_file_on_unencrypted_boot_fails() {
        check_fixture(
            &Encryption,
            "key-file-on-boot",
            NOW,
            Status::Fail,
            &[
                (RULE_KEY_FILES, Status::Fail),
                (RULE_PHI_PATHS, Status::Pass),
            ],
        );
    }

    #[test]
    fn missing_mountinfo_is_unknown() {
        check_fixture(
            &Encryption,
            "no-proc",
            NOW,
            Status::Unknown,
            &[
                (RULE_PHI_PATHS, Status::Unknown),
                (RULE_SWAP, Status::Unknown),
                (RULE_TMP, Status::Unknown),
            ],
        );
    }

    #[test]
    fn mountinfo_parses_escapes_and_optional_fields() {
        let text = "27 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/mapper/crypt\\040root rw\n\
                    43 27 7:0 / /mnt/my\\040disk rw,relatime - ext4 /dev/loop0 rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mounts[0].source, "/dev/mapper/crypt root");
        assert_eq!(mounts[1].mount_point, "/mnt/my disk");
        assert_eq!((mounts[1].major, mounts[1].minor), (7, 0));
        assert_eq!(find_mount(&mounts, "/mnt/my disk/x").unwrap().major, 7);
        assert_eq!(find_mount(&mounts, "/mnt/my diskette").unwrap().major, 254);
        assert!(parse_mountinfo("1 2 3\n").is_err());
    }

    #[test]
    fn luks_dumps_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encryption");
        let read = |case: &str, name: &str| {
            std::fs::read_to_string(dir.join(case).join(".msp-compliance/commands").join(name))
                .unwrap()
        };
        let luks2 = parse_luks_dump(&read("luks-root", "luks-dump.dev-nvme0n1p2.stdout")).unwrap();
        assert_eq!(
            luks2,
            LuksHeader {
                version: 2,
                ciphers: vec!["aes-xts-plain64".into()],
                key_bits: 512,
                pbkdfs: vec!["pbkdf2".into()]
            }
        );
        let luks1 = parse_luks_dump(&read("lvm-on-luks", "luks-dump.dev-sda5.stdout")).unwrap();
        assert_eq!(
            (luks1.version, luks1.ciphers[0].as_str(), luks1.key_bits),
            (1, "aes-xts-plain64", 512)
        );
        let cbc = parse_luks_dump(
            &std::fs::read_to_string(dir.join("sources/luks2-cbc256.dump")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (cbc.ciphers[0].as_str(), cbc.key_bits),
            ("aes-cbc-essiv:sha256", 256)
        );
        assert!(parse_luks_dump("Version: 2\n").is_err());
    }

    #[test]
    fn zfs_get_parses() {
        let props = parse_zfs_get("rpool/home\tencryption\taes-256-gcm\nrpool/home\tkeystatus\tavailable\nrpool/home\tencryptionroot\trpool\n", "rpool/home").unwrap();
        assert_eq!(props.encryption_root, "rpool");
        assert!(parse_zfs_get("garbage", "rpool").is_err());
        assert_eq!(zfs_aes_bits("aes-256-gcm"), Some(256));
        assert_eq!(zfs_aes_bits("off"), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "[ -~\t\n\\\\]{0,400}") {
            let _ = parse_mountinfo(&text);
            let _ = parse_swaps(&text);
            let _ = parse_luks_dump(&text);
            let _ = parse_zfs_get(&text, "rpool");
            let _ = unescape_octal(&text);
        }

        #[test]
        fn luks_dump_lines_never_pass_without_a_cipher(lines in proptest::collection::vec("(Version: [0-9]|\tKey: +[0-9]{1,4} bits|MK bits: [0-9]{1,4}|Keyslots:|Data segments:|[ -~]{0,20})", 0..20)) {
            if let Ok(header) = parse_luks_dump(&lines.join("\n")) {
                prop_assert!(!header.ciphers.is_empty());
            }
        }
    }

    /// Runs the check with the live commands and probes of this machine over `root`.
    fn live_host(root: Root) -> Host {
        let limits = Limits {
            timeout: std::time::Duration::from_secs(30),
            max_output: 1024 * 1024,
            search_path: DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
        };
        Host::new(
            root,
            CommandSource::Live(limits),
            ProbeSource::Direct,
            Path::new("/etc/msp-compliance/declared.json"),
            default_paths(),
        )
    }

    fn baseline_with_phi_paths(paths: &[&str]) -> Baseline {
        let text =
            json!({"id": "test", "version": "1", "checks": {"encryption": {"phi_paths": paths}}})
                .to_string();
        Baseline::parse(Path::new("b.json"), text.as_bytes()).unwrap()
    }

    /// Loop devices, images and mounts created by the real-tool test; released on drop, in
    /// reverse order, even when an assertion fails.
    #[derive(Default)]
    struct Cleanup {
        mounts: Vec<PathBuf>,
        mappings: Vec<String>,
        loops: Vec<String>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let run = |program: &str, args: &[&str]| {
                let _ = std::process::Command::new(program)
                    .args(args)
                    .stderr(std::process::Stdio::null())
                    .status();
            };
            for mount in self.mounts.iter().rev() {
                run("umount", &[&mount.display().to_string()]);
            }
            for mapping in self.mappings.iter().rev() {
                run("cryptsetup", &["close", mapping]);
            }
            for device in self.loops.iter().rev() {
                run("losetup", &["-d", device]);
            }
        }
    }

    fn sh(program: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("{program}: {err}"))
    }

    fn sh_ok(program: &str, args: &[&str]) -> String {
        let out = sh(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn real_luks_on_a_loop_device() {
        if !real_tools("encryption::real_luks_on_a_loop_device") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cleanup = Cleanup::default();
        let image = dir.path().join("luks.img");
        let key = dir.path().join("key");
        std::fs::write(&key, b"msp-compliance test key, not secret").unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(40 * 1024 * 1024).unwrap();
        drop(file);
        let device = sh_ok("losetup", &["-f", "--show", &image.display().to_string()]);
        cleanup.loops.push(device.clone());
        sh_ok(
            "cryptsetup",
            &[
                "luksFormat",
                "--type",
                "luks2",
                "--batch-mode",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "512",
                "--key-file",
                &key.display().to_string(),
                &device,
            ],
        );
        let name = format!("msp-enc-{}", std::process::id());
        let opened = sh(
            "cryptsetup",
            &[
                "open",
                "--key-file",
                &key.display().to_string(),
                &device,
                &name,
            ],
        );
        let baseline_now = ts(NOW);
        if opened.status.success() {
            // The kernel has dm-crypt: the whole chain is real.
            cleanup.mappings.push(name.clone());
            let mapper = format!("/dev/mapper/{name}");
            sh_ok("mkfs.ext4", &["-q", &mapper]);
            let mount = dir.path().join("phi");
            std::fs::create_dir(&mount).unwrap();
            sh_ok("mount", &[&mapper, &mount.display().to_string()]);
            cleanup.mounts.push(mount.clone());
            let host = live_host(Root::live());
            let finding = run_on(
                &Encryption,
                &host,
                &baseline_with_phi_paths(&[&mount.display().to_string()]),
                baseline_now,
            );
            let pretty = serde_json::to_string_pretty(&finding).unwrap();
            let phi = rule(&finding, RULE_PHI_PATHS);
            assert_eq!(phi.status, Status::Pass, "{pretty}");
            let cipher = rule(&finding, RULE_CIPHER);
            assert_eq!(cipher.status, Status::Pass, "{pretty}");
            assert!(
                cipher
                    .message
                    .contains("aes-xts-plain64 with a 512-bit key"),
                "{pretty}"
            );
        } else {
            // No device-mapper in this kernel (containers, minimal VMs): the LUKS header and
            // `cryptsetup luksDump` are still real; the sysfs chain above the loop device is
            // built in the shape the kernel would show.
            eprintln!(
                "encryption::real_luks_on_a_loop_device: cryptsetup open failed ({}); using a sysfs-shaped tree over the real LUKS loop device {device}",
                String::from_utf8_lossy(&opened.stderr)
                    .trim()
                    .replace('\n', "; ")
            );
            let loop_name = device.trim_start_matches("/dev/");
            let root = dir.path().join("root");
            let dm = root.join("sys/devices/virtual/block/dm-0");
            std::fs::create_dir_all(dm.join("dm")).unwrap();
            std::fs::create_dir_all(dm.join("slaves")).unwrap();
            std::fs::create_dir_all(root.join(format!("sys/devices/virtual/block/{loop_name}")))
                .unwrap();
            std::fs::create_dir_all(root.join("sys/dev/block")).unwrap();
            std::fs::create_dir_all(root.join("proc/self")).unwrap();
            std::fs::create_dir_all(root.join("srv/phi")).unwrap();
            let uuid = sh_ok("cryptsetup", &["luksUUID", &device]).replace('-', "");
            std::fs::write(dm.join("dm/uuid"), format!("CRYPT-LUKS2-{uuid}-{name}\n")).unwrap();
            std::fs::write(dm.join("dm/name"), format!("{name}\n")).unwrap();
            std::os::unix::fs::symlink(
                format!("../../{loop_name}"),
                dm.join("slaves").join(loop_name),
            )
            .unwrap();
            std::os::unix::fs::symlink(
                "../../devices/virtual/block/dm-0",
                root.join("sys/dev/block/254:0"),
            )
            .unwrap();
            std::fs::write(
                root.join("proc/self/mountinfo"),
                format!("27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/{name} rw\n"),
            )
            .unwrap();
            std::fs::write(
                root.join("proc/swaps"),
                "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
            )
            .unwrap();
            let host = live_host(Root::new(&root));
            let finding = run_on(
                &Encryption,
                &host,
                &baseline_with_phi_paths(&["/srv/phi"]),
                baseline_now,
            );
            let pretty = serde_json::to_string_pretty(&finding).unwrap();
            let phi = rule(&finding, RULE_PHI_PATHS);
            assert_eq!(phi.status, Status::Pass, "{pretty}");
            let cipher = rule(&finding, RULE_CIPHER);
            assert_eq!(cipher.status, Status::Pass, "{pretty}");
            assert!(
                cipher.message.starts_with(&format!(
                    "{device} (backs /srv/phi): LUKS2 aes-xts-plain64 with a 512-bit key"
                )),
                "{pretty}"
            );
        }

        // Fully live: an unencrypted ext4 on another loop device, mounted, and the root file
        // system itself; both are found unencrypted through the real mountinfo and sysfs
        // (the loop device through its backing file).
        let plain_image = dir.path().join("plain.img");
        let file = std::fs::File::create(&plain_image).unwrap();
        file.set_len(32 * 1024 * 1024).unwrap();
        drop(file);
        let plain_device = sh_ok(
            "losetup",
            &["-f", "--show", &plain_image.display().to_string()],
        );
        cleanup.loops.push(plain_device.clone());
        sh_ok("mkfs.ext4", &["-q", &plain_device]);
        let plain_mount = dir.path().join("plain");
        std::fs::create_dir(&plain_mount).unwrap();
        sh_ok(
            "mount",
            &[&plain_device, &plain_mount.display().to_string()],
        );
        cleanup.mounts.push(plain_mount.clone());
        let host = live_host(Root::live());
        let finding = run_on(
            &Encryption,
            &host,
            &baseline_with_phi_paths(&[&plain_mount.display().to_string(), "/"]),
            baseline_now,
        );
        let pretty = serde_json::to_string_pretty(&finding).unwrap();
        let results: Vec<_> = finding
            .results
            .iter()
            .filter(|it| it.rule == RULE_PHI_PATHS)
            .collect();
        assert_eq!(results.len(), 2, "{pretty}");
        // The test machines' root file system is a plain virtual disk; the loop mount is as
        // unencrypted as that root, where its image lives.
        assert_eq!(results[0].status, Status::Fail, "{pretty}");
        assert!(
            results[0]
                .message
                .contains(&format!("on {plain_device} (backing file")),
            "{pretty}"
        );
        assert_eq!(results[1].status, Status::Fail, "{pretty}");
        drop(cleanup);
    }
}
