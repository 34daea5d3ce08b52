# services.msp-compliance: the compliance agent on a NixOS site host.
#
# What this module owns (DESIGN §8, research/checks.md §0.3–0.4):
# - the agent's configuration file, /etc/msp-compliance/config.json, rendered from the RFC 42
#   `settings` option (keys exactly as `msp-compliance-agent config schema` names them);
# - the baseline, /etc/msp-compliance/baseline.json, rendered from typed options whose defaults
#   are read from baselines/hipaa.json (the file the agent embeds: one source of truth);
# - /etc/msp-compliance/declared.json: what this generation declares (firewall, journald, audit,
#   backups, LUKS, swap, /tmp, autoUpgrade, ClamAV, time sync), in exactly the shape of
#   `msp-compliance-agent declared schema`, so checks compare declared with live state without
#   evaluating Nix at run time;
# - the agent's unit: an unprivileged system user under strict hardening, secrets only through
#   systemd `LoadCredential`, running the daemon (`msp-compliance-agent run`: checks, check-in,
#   signed orders, outbox) with SIGHUP for a new generation's configuration;
# - least privilege for the root-only reads: fixed root oneshot units `msp-compliance-probe@<name>`;
# - least privilege for healing: the root oneshot template `msp-compliance-heal@<instance>`, which
#   runs `msp-compliance-agent heal-unit <instance>` and acts only on what declared.json's `heal`
#   section names;
# - a polkit rule that lets the agent user start exactly those probe and heal units and nothing
#   else.
#
# The module never touches nixpkgs at the top level: `pkgs` is used only inside `config`, lazily,
# so `lib.evalModules` evaluates it against a small stand-in lib in CI (nix/tests/).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkPackageOption mkIf types;

  cfg = config.services.msp-compliance;

  # One source of truth: the baseline the agent embeds.
  hipaa = builtins.fromJSON (builtins.readFile ../baselines/hipaa.json);

  # Fixed paths. The agent reads its configuration from here; the other files are named in it.
  etcDir = "/etc/msp-compliance";
  configPath = "${etcDir}/config.json";
  baselinePath = "${etcDir}/baseline.json";
  declaredPath = "${etcDir}/declared.json";
  stateDir = "/var/lib/msp-compliance";
  probeDir = "/run/msp-compliance/probe";
  healDir = "/run/msp-compliance/heal";
  user = "msp-compliance";
  group = "msp-compliance";

  # systemd puts the credentials of a unit here (`$CREDENTIALS_DIRECTORY`); the agent's config
  # file must name files by path, and this path is stable for the unit's name.
  credentialPath = name: "/run/credentials/msp-compliance.service/${name}";

  # The JSON value type of RFC 42, the same as `(pkgs.formats.json { }).type`, written with
  # `lib.types` only so the module evaluates where no nixpkgs exists (STYLE §7.18).
  jsonValue =
    let
      valueType = types.nullOr
        (types.oneOf [
          types.bool
          types.int
          types.float
          types.str
          types.path
          (types.attrsOf valueType)
          (types.listOf valueType)
        ]) // {
        description = "JSON value";
      };
    in
    valueType;

  # As the agent's `is_identifier`: 1 to 64 of letters, digits, `.`, `_`, `-`, not starting with
  # `.` or `-`.
  identifier = types.strMatching "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}";

  # A secret's location: a string (never a Nix path, which would copy the secret into the
  # world-readable store) naming an absolute path.
  secretFile = types.nullOr (types.strMatching "/.+" // {
    description = "absolute path of a file outside the Nix store";
  });

  severity = types.enum [ "low" "medium" "high" "critical" ];
  isoDate = types.strMatching "[0-9]{4}-[0-9]{2}-[0-9]{2}";

  # Baseline options are generated from baselines/hipaa.json, so a threshold added there is an
  # option here without a second edit. The type follows the agent's field type (`baseline schema`):
  # u32 for counts, days and hours; u64 (any unsigned Nix int) for `_ms` and `_bytes`; u16 for
  # ports. nix/check.sh compares these types with the schema.
  thresholdType = path: name: default:
    if name == "severity" then severity
    else if name == "release_eol" then types.attrsOf isoDate
    else if builtins.isBool default then types.bool
    else if builtins.isInt default then
      (if lib.hasSuffix "_ms" name || lib.hasSuffix "_bytes" name then types.ints.unsigned else types.ints.u32)
    else if builtins.isList default then
      types.listOf (if lib.hasSuffix "_ports" name then types.port else types.str)
    else throw "baselines/hipaa.json: ${path}: no option type for this value";

  thresholdOptions = prefix: defaults: builtins.mapAttrs
    (name: default:
      let path = "${prefix}.${name}"; in
      mkOption {
        type = thresholdType path name default;
        inherit default;
        description = ''
          Baseline threshold `${path}` (default from `baselines/hipaa.json`).
          Its meaning is in `msp-compliance-agent baseline schema` and `docs/defaults.md`.
        '';
      })
    defaults;

  waiverModule = {
    options = {
      check = mkOption {
        type = types.enum (builtins.attrNames hipaa.checks);
        description = "Check id the waiver covers.";
        example = "encryption";
      };
      justification = mkOption {
        type = types.str;
        description = "Why the fail is accepted: the compensating control.";
        example = "VM disk encrypted at the datastore (vSphere VM encryption, KMS cluster kms-1)";
      };
      ticket = mkOption {
        type = types.str;
        description = "Ticket that tracks the exception.";
        example = "SEC-1234";
      };
      expires = mkOption {
        type = types.nullOr isoDate;
        default = null;
        description = ''
          Last day (UTC, `YYYY-MM-DD`) on which the waiver applies; from the next day the
          check fails again. Required: a waiver without an end is a permanent hole.
        '';
        example = "2027-03-31";
      };
    };
  };

  # The baseline file: the typed options rendered into the agent's format.
  baselineFile = {
    inherit (cfg.baseline) id version description checks windows;
    waivers = map (waiver: { inherit (waiver) check justification ticket expires; }) cfg.baseline.waivers;
  };

  # Calendar check for `YYYY-MM-DD` (the agent parses waiver dates as civil dates).
  validDate = date:
    let
      parts = builtins.match "([0-9]{4})-([0-9]{2})-([0-9]{2})" date;
      year = lib.toIntBase10 (builtins.elemAt parts 0);
      month = lib.toIntBase10 (builtins.elemAt parts 1);
      day = lib.toIntBase10 (builtins.elemAt parts 2);
      leap = (lib.mod year 4 == 0 && lib.mod year 100 != 0) || lib.mod year 400 == 0;
      monthDays = [ 31 (if leap then 29 else 28) 31 30 31 30 31 31 30 31 30 31 ];
    in
    parts != null && month >= 1 && month <= 12 && day >= 1
    && day <= builtins.elemAt monthDays (month - 1);

  # --- declared.json ---------------------------------------------------------------------------

  fw = config.networking.firewall;
  firewallBackend = fw.backend or (if config.networking.nftables.enable then "nftables" else "iptables");

  journaldExtra = config.services.journald.extraConfig or "";
  # The last `Key=value` line of journald's extraConfig (later lines win in journald.conf).
  journaldValue = key:
    let
      matches = lib.filter (it: it != null)
        (map (line: builtins.match "[[:space:]]*${key}[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*" line)
          (lib.splitString "\n" journaldExtra));
    in
    if matches == [ ] then null else builtins.head (lib.last matches);

  # systemd.time(7) time spans ("1year", "12month", "90d", "2h 30min", "1.5h"), in seconds.
  # Returns null for text it does not read; the caller warns.
  timeUnits = {
    "" = 1;
    s = 1;
    sec = 1;
    second = 1;
    seconds = 1;
    m = 60;
    min = 60;
    minute = 60;
    minutes = 60;
    h = 3600;
    hr = 3600;
    hour = 3600;
    hours = 3600;
    d = 86400;
    day = 86400;
    days = 86400;
    w = 604800;
    week = 604800;
    weeks = 604800;
    M = 2629800;
    month = 2629800;
    months = 2629800;
    y = 31557600;
    year = 31557600;
    years = 31557600;
  };
  parseTimeSpan = text:
    let
      go = rest: acc:
        if rest == "" then acc
        else
          let m = builtins.match "[[:space:]]*([0-9]+)(\\.[0-9]+)?[[:space:]]*([A-Za-z]*)(.*)" rest; in
          if m == null || !(timeUnits ? ${builtins.elemAt m 2}) then null
          else
            let
              unit = timeUnits.${builtins.elemAt m 2};
              whole = lib.toIntBase10 (builtins.elemAt m 0) * unit;
              fraction = builtins.elemAt m 1;
              part = if fraction == null then whole else builtins.floor (builtins.fromJSON "0${fraction}" * unit) + whole;
            in
            go (builtins.elemAt m 3) (acc + part);
    in
    if builtins.match "[[:space:]]*" text != null then null else go text 0;

  maxRetentionText = journaldValue "MaxRetentionSec";
  maxRetentionSec = if maxRetentionText == null then null else parseTimeSpan maxRetentionText;

  auditEnable = config.security.audit.enable;

  resticJobs = lib.mapAttrsToList
    (name: job: {
      inherit name;
      tool = "restic";
      repository = job.repository or null;
      repositoryFile = if (job.repositoryFile or null) == null then null else toString job.repositoryFile;
      passwordFile = if (job.passwordFile or null) == null then null else toString job.passwordFile;
      timer = (job.timerConfig or null) != null;
      paths = job.paths or [ ];
    })
    (config.services.restic.backups or { });

  borgJobs = lib.mapAttrsToList
    (name: job: {
      inherit name;
      tool = "borg";
      repository = job.repo or null;
      repositoryFile = null;
      # borg takes its passphrase from a command (`encryption.passCommand`), not a file.
      passwordFile = null;
      timer = (job.startAt or [ ]) != [ ];
      paths = lib.toList (job.paths or [ ]);
    })
    (config.services.borgbackup.jobs or { });

  # What the heal units may act on (the `heal` section; the root helper reads nothing else).
  # A name is healable when it fits the heal instance grammar (`[A-Za-z0-9_][A-Za-z0-9_.-]*`) and
  # the longest heal unit made from it, `msp-compliance-heal@rollback-restart-<stem>.service`,
  # stays within systemd's 255 characters for a unit name (hence 210 characters for a name).
  healableName = name: builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]*" name != null && builtins.stringLength name <= 210;
  unitStem = unit: builtins.substring 0 (builtins.stringLength unit - builtins.stringLength ".service") unit;
  restartableProblems = unit:
    lib.optional (builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]*[.]service" unit == null)
      "is not a plain unit name `<name>.service` (letters, digits, `_`, `.`, `-`; no template `@`, no `/`)"
    ++ lib.optional (lib.hasPrefix "msp-compliance" unit)
      "names one of the agent's own units (`msp-compliance*`), which a heal must not restart"
    ++ lib.optional (builtins.stringLength unit > 218)
      "is longer than 218 characters, so `msp-compliance-heal@rollback-restart-<name>.service` would exceed systemd's 255";
  # Sorted and without duplicates: the entries come from several modules (this one's defaults,
  # the user's own), and the file must not depend on their order.
  restartableUnits = lib.unique (builtins.sort builtins.lessThan cfg.heal.restartableUnits);
  # The units that run each backup job now, under the names NixOS gives them. A name that is
  # both a restic and a borg job, or that does not fit the grammar, cannot name one heal and is
  # left out (with a warning).
  backupJobUnits =
    map (name: { inherit name; unit = "restic-backups-${name}.service"; }) (builtins.attrNames (config.services.restic.backups or { }))
    ++ map (name: { inherit name; unit = "borgbackup-job-${name}.service"; }) (builtins.attrNames (config.services.borgbackup.jobs or { }));
  backupJobCount = name: builtins.length (lib.filter (it: it.name == name) backupJobUnits);
  unhealableBackupJobs = lib.unique (map (it: it.name)
    (lib.filter (it: !healableName it.name || backupJobCount it.name > 1) backupJobUnits));
  heal = {
    inherit restartableUnits;
    firewallUnit =
      if !fw.enable then null
      else if firewallBackend == "nftables" then "nftables.service"
      else "firewall.service";
    avUpdateUnit = if config.services.clamav.updater.enable then "clamav-freshclam.service" else null;
    backupUnits = builtins.listToAttrs (map (it: lib.nameValuePair it.name it.unit)
      (lib.filter (it: !builtins.elem it.name unhealableBackupJobs) backupJobUnits));
  };

  declared = {
    version = 1;
    firewall = {
      inherit (fw) enable allowedTCPPorts allowedUDPPorts allowedTCPPortRanges allowedUDPPortRanges trustedInterfaces;
      backend = firewallBackend;
      interfaces = builtins.mapAttrs
        (_: iface: {
          allowedTCPPorts = iface.allowedTCPPorts or [ ];
          allowedUDPPorts = iface.allowedUDPPorts or [ ];
        })
        (fw.interfaces or { });
    };
    journald = {
      inherit (config.services.journald) storage;
      maxRetentionSec = maxRetentionSec;
      systemMaxUse = journaldValue "SystemMaxUse";
      forwarding = builtins.any (it: it) [
        (config.services.journald.upload.enable or false)
        (config.services.rsyslogd.enable or false)
        (config.services.syslog-ng.enable or false)
        (config.services.vector.enable or false)
        (config.services.fluent-bit.enable or false)
      ];
    };
    audit = {
      auditd = config.security.auditd.enable;
      enable = if auditEnable == "lock" then "lock" else if auditEnable then "true" else "false";
      rules = config.security.audit.rules or [ ];
    };
    backups = resticJobs ++ borgJobs;
    luks = builtins.mapAttrs
      (_: device: {
        inherit (device) device;
        keyFile = device.keyFile or null;
      })
      config.boot.initrd.luks.devices;
    swap = map
      (swap: {
        inherit (swap) device;
        randomEncryption = swap.randomEncryption.enable or false;
      })
      config.swapDevices;
    tmpOnTmpfs = config.boot.tmp.useTmpfs;
    autoUpgrade = {
      inherit (config.system.autoUpgrade) enable operation flake channel dates allowReboot;
    };
    clamav = {
      daemon = config.services.clamav.daemon.enable;
      updater = config.services.clamav.updater.enable;
      scanner = config.services.clamav.scanner.enable or false;
    };
    timeSync = {
      timesyncd = config.services.timesyncd.enable;
      chrony = config.services.chrony.enable or false;
    };
    inherit heal;
  };

  # --- privileged probes -----------------------------------------------------------------------

  # The root-only reads, one fixed command each. Names and commands match the agent's probe
  # records (agent/src/facts/probe.rs), and the output is written in the agent's recorded-command
  # format (`<name>.stdout`, `<name>.stderr`, `<name>.exit`), so the agent's units source can
  # replay it with the reader it already has for recordings.
  iptablesPackage = if firewallBackend == "iptables" then fw.package else pkgs.iptables;
  probes = {
    nft-ruleset = {
      command = [ "${pkgs.nftables}/bin/nft" "-j" "list" "ruleset" ];
      capabilities = [ "CAP_NET_ADMIN" ];
    };
    iptables-save = {
      command = [ "${iptablesPackage}/bin/iptables-save" ];
      capabilities = [ "CAP_NET_ADMIN" "CAP_NET_RAW" ];
    };
    ip6tables-save = {
      command = [ "${iptablesPackage}/bin/ip6tables-save" ];
      capabilities = [ "CAP_NET_ADMIN" "CAP_NET_RAW" ];
    };
    auditctl-status = {
      command = [ "${pkgs.audit}/bin/auditctl" "-s" ];
      capabilities = [ "CAP_AUDIT_CONTROL" ];
    };
    auditctl-rules = {
      command = [ "${pkgs.audit}/bin/auditctl" "-l" ];
      capabilities = [ "CAP_AUDIT_CONTROL" ];
    };
  };

  # Runs one probe command and records its output for the agent. The instance name is passed
  # by the unit (a fixed literal per instance, never the agent's input), and the command is the
  # instance's fixed argument vector. Files are written under temporary names and renamed, the
  # exit status last, so a reader never sees a half-written result. The probe's own exit status
  # is recorded, not returned: a failing probe is a fact for the agent to judge (`unknown`).
  probeRunner = pkgs.writeShellScript "msp-compliance-probe" ''
    set -eu
    name=$1
    shift
    tmp=$(${pkgs.coreutils}/bin/mktemp -d ${probeDir}/.run.XXXXXXXX)
    status=0
    "$@" >"$tmp/stdout" 2>"$tmp/stderr" || status=$?
    printf '%s\n' "$status" >"$tmp/exit"
    for part in stdout stderr exit; do
      ${pkgs.coreutils}/bin/mv -f "$tmp/$part" "${probeDir}/$name.$part"
    done
    ${pkgs.coreutils}/bin/rmdir "$tmp"
  '';

  probeUnitName = name: "msp-compliance-probe@${name}.service";
  healUnitName = instance: "msp-compliance-heal@${instance}.service";

  # The heal instances this generation allows, exactly those the heal helper accepts against
  # declared.json (the heal contract): a unit restart and its rollback per restartable unit, the
  # firewall and AV heals when there is a unit for them, one backup run per job, and the
  # generation heals, which every NixOS host has.
  healInstances =
    lib.concatMap (unit: [ "restart-${unitStem unit}" "rollback-restart-${unitStem unit}" ]) heal.restartableUnits
    ++ lib.optionals (heal.firewallUnit != null) [ "restore-firewall" "rollback-firewall" ]
    ++ lib.optional (heal.avUpdateUnit != null) "refresh-av"
    ++ map (job: "backup-${job}") (builtins.attrNames heal.backupUnits)
    ++ [ "reactivate-generation" "rollback-generation" ];

  # Every unit the agent user may start (verb `start` only), by name ...
  startableUnits = map probeUnitName (builtins.attrNames probes) ++ map healUnitName healInstances;
  # ... and by pattern, for the heals whose argument is a number: a generation that exists
  # when the heal runs (the helper checks the profile link), 1 to 999999999 without a leading
  # zero, switched to live or made the boot default and rebooted into. JavaScript regular
  # expressions: `$` is the end of the name, not a line's.
  startablePatterns = [ "^msp-compliance-heal@(switch|boot)-generation-[1-9][0-9]{0,8}\\.service$" ];

  # The agent user may `start` exactly the units in `startableUnits` or matching
  # `startablePatterns`; every other systemd action (stop, restart, other units, daemon-reload,
  # unit files) is refused for it outright, so no later rule can grant more. Other users are not
  # handled here.
  polkitRule = ''
    // msp-compliance: least privilege for the agent user (modules/msp-compliance.nix).
    polkit.addRule(function (action, subject) {
      if (subject.user != ${builtins.toJSON user} || action.id.indexOf("org.freedesktop.systemd1.") != 0) {
        return null;
      }
      var startable = ${builtins.toJSON startableUnits};
      var startablePatterns = ${builtins.toJSON startablePatterns};
      var unit = action.lookup("unit");
      if (action.id == "org.freedesktop.systemd1.manage-units"
          && action.lookup("verb") == "start"
          && typeof unit == "string"
          && (startable.indexOf(unit) >= 0
              || startablePatterns.some(function (pattern) { return new RegExp(pattern).test(unit); }))) {
        return polkit.Result.YES;
      }
      return polkit.Result.NO;
    });
  '';

  # --- agent unit ------------------------------------------------------------------------------

  credentials =
    lib.optional (cfg.evidenceSigningKeyFile != null) "evidence-signing-key:${cfg.evidenceSigningKeyFile}"
    ++ lib.optional (cfg.phiTokenKeyFile != null) "phi-token-key:${cfg.phiTokenKeyFile}"
    ++ lib.optional (cfg.s3AccessKeyIdFile != null) "s3-access-key-id:${cfg.s3AccessKeyIdFile}"
    ++ lib.optional (cfg.s3SecretAccessKeyFile != null) "s3-secret-access-key:${cfg.s3SecretAccessKeyFile}"
    ++ lib.optional (cfg.mtlsClientKeyFile != null) "mtls-client-key:${cfg.mtlsClientKeyFile}";

  outbox = cfg.settings.outbox or { };
  s3Sink = outbox.s3 or null;
  directorySink = outbox.directory or null;
  controlPlane = cfg.settings.control_plane or null;
  # The daemon talks to the network only for the control plane and the S3 sink.
  needsNetwork = controlPlane != null || s3Sink != null;
  chrony = config.services.chrony.enable or false;

  agent = "${cfg.package}/bin/msp-compliance-agent";

  # Module-owned option paths, for messages.
  opt = "services.msp-compliance";

  indexed = list: lib.imap0 (index: value: { inherit index value; }) list;
  waiverAt = index: "${opt}.baseline.waivers.${toString index}";

  # Mirrors of the agent's baseline rules (agent/src/baseline.rs `validate`), so a bad value
  # fails evaluation with the option's name instead of failing the agent at run time. The agent
  # itself validates the rendered files at build time (system.checks) and in CI.
  orderedThresholds =
    let c = cfg.baseline.checks; in
    [
      { warn = "checks.patching.nixpkgs_age_warn_days"; fail = "checks.patching.nixpkgs_age_fail_days"; ok = c.patching.nixpkgs_age_warn_days <= c.patching.nixpkgs_age_fail_days; }
      { warn = "checks.patching.package_lists_warn_hours"; fail = "checks.patching.package_lists_fail_days (x 24)"; ok = c.patching.package_lists_warn_hours <= c.patching.package_lists_fail_days * 24; }
      { warn = "checks.av_edr.signature_warn_hours"; fail = "checks.av_edr.signature_fail_days (x 24)"; ok = c.av_edr.signature_warn_hours <= c.av_edr.signature_fail_days * 24; }
      { warn = "checks.backup.rpo_warn_hours"; fail = "checks.backup.rpo_fail_hours"; ok = c.backup.rpo_warn_hours <= c.backup.rpo_fail_hours; }
      { warn = "checks.logging.time_offset_warn_ms"; fail = "checks.logging.time_offset_fail_ms"; ok = c.logging.time_offset_warn_ms <= c.logging.time_offset_fail_ms; }
      { warn = "windows.defender_signature_warn_days"; fail = "windows.defender_signature_fail_days"; ok = cfg.baseline.windows.defender_signature_warn_days <= cfg.baseline.windows.defender_signature_fail_days; }
    ];
  absoluteLists = [
    { path = "checks.encryption.phi_paths"; values = cfg.baseline.checks.encryption.phi_paths; }
    { path = "checks.logging.required_audit_watches"; values = cfg.baseline.checks.logging.required_audit_watches; }
  ];

  # Key files named in settings directly (not through the *File options).
  keyFileSettings = [
    { section = "evidence"; key = "signing_key_file"; option = "evidenceSigningKeyFile"; }
    { section = "evidence"; key = "phi_token_key_file"; option = "phiTokenKeyFile"; }
    { section = "outbox.s3"; key = "access_key_id_file"; option = "s3AccessKeyIdFile"; }
    { section = "outbox.s3"; key = "secret_access_key_file"; option = "s3SecretAccessKeyFile"; }
    { section = "control_plane"; key = "client_key_file"; option = "mtlsClientKeyFile"; }
  ];
  directKeyFile = section: key:
    (lib.attrByPath (lib.splitString "." section ++ [ key ]) null cfg.settings);

  storeFile = file: file != null && lib.hasPrefix "${builtins.storeDir}/" file;
  secretOptions = [ "evidenceSigningKeyFile" "phiTokenKeyFile" "s3AccessKeyIdFile" "s3SecretAccessKeyFile" "mtlsClientKeyFile" ];
in
{
  options.services.msp-compliance = {
    enable = mkEnableOption "the msp-compliance agent, which checks this host against a HIPAA baseline and records signed evidence";

    package = mkPackageOption pkgs "msp-compliance-agent" { };

    settings = mkOption {
      description = ''
        The agent's configuration, rendered to `${configPath}`. Keys are exactly those of
        `msp-compliance-agent config schema` (snake_case); keys not declared here are passed
        through and checked by the agent (at build time with {option}`services.msp-compliance.checkConfig`).
        Secrets never go here: use the `*File` options of this module.
      '';
      default = { };
      example = lib.literalExpression ''
        {
          site_id = "clinic-042";
          host_id = "nixos-frontdesk";
          poll_interval_secs = 900;
          outbox.directory.path = "/srv/evidence-outbox";
        }
      '';
      type = types.submodule {
        freeformType = jsonValue;
        options = {
          site_id = mkOption {
            type = types.nullOr identifier;
            default = null;
            description = "Site (clinic) identifier, as enrolled at the control plane. Required.";
            example = "clinic-042";
          };
          host_id = mkOption {
            type = types.nullOr identifier;
            default = null;
            description = "Host identifier within the site. Required.";
            example = "nixos-frontdesk";
          };
          poll_interval_secs = mkOption {
            type = types.ints.between 10 86400;
            default = 300;
            description = "Seconds between the daemon's cycles (checks, check-in, orders, outbox), jittered by ±10 %.";
          };
          baseline_file = mkOption {
            type = types.str;
            description = "Set by the module to the baseline rendered from {option}`services.msp-compliance.baseline`.";
          };
          declared_file = mkOption {
            type = types.str;
            description = "Set by the module to the declared state of this generation.";
          };
          state_dir = mkOption {
            type = types.str;
            description = "Set by the module to the unit's `StateDirectory`.";
          };
        };
      };
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Validate the rendered configuration, baseline and declared state with the agent itself
        when the system is built (`system.checks`), so a value the agent would reject fails the
        build instead of the service. Turn off only when the build machine cannot run the
        agent's binary (cross-compilation).
      '';
    };

    evidenceSigningKeyFile = mkOption {
      type = secretFile;
      default = null;
      description = ''
        Ed25519 evidence signing key written by `msp-compliance-agent keygen` (root-owned, mode
        0600). Handed to the agent with systemd `LoadCredential` as `evidence-signing-key`; the
        agent user never reads the file itself and it never enters the Nix store.
        Without it the agent prints findings but records no evidence.
      '';
      example = "/var/lib/msp-compliance-secrets/evidence-signing-key";
    };

    phiTokenKeyFile = mkOption {
      type = secretFile;
      default = null;
      description = ''
        Secret for the keyed-hash tokens that replace PHI in evidence (`LoadCredential` name
        `phi-token-key`). Without it a key derived from the signing key is used.
      '';
      example = "/var/lib/msp-compliance-secrets/phi-token-key";
    };

    s3AccessKeyIdFile = mkOption {
      type = secretFile;
      default = null;
      description = ''
        File holding the access key id of the S3 Object Lock sink configured in
        {option}`services.msp-compliance.settings.outbox.s3` (`LoadCredential` name `s3-access-key-id`).
      '';
      example = "/run/secrets/msp-compliance-s3-access-key-id";
    };

    s3SecretAccessKeyFile = mkOption {
      type = secretFile;
      default = null;
      description = ''
        File holding the secret access key of the S3 sink (`LoadCredential` name
        `s3-secret-access-key`).
      '';
      example = "/run/secrets/msp-compliance-s3-secret-access-key";
    };

    mtlsClientKeyFile = mkOption {
      type = secretFile;
      default = null;
      description = ''
        Private key (PEM) of this host's client certificate for the control plane
        ({option}`services.msp-compliance.settings.control_plane`), as written by
        `msp-mcp enroll`. Handed over with `LoadCredential` as `mtls-client-key`, which the agent
        reads when `control_plane.client_key_file` is not set.
      '';
      example = "/var/lib/msp-compliance-secrets/client.key";
    };

    baseline = {
      id = mkOption {
        type = identifier;
        default = hipaa.id;
        description = "Baseline id, recorded in every finding.";
      };
      version = mkOption {
        type = types.strMatching ".*[^[:space:]].*";
        default = hipaa.version;
        description = "Baseline version, recorded in every finding. Change it when you change a threshold.";
      };
      description = mkOption {
        type = types.str;
        default = hipaa.description;
        description = "What the baseline is for.";
      };
      checks = builtins.mapAttrs (check: thresholdOptions "checks.${check}") hipaa.checks;
      windows = thresholdOptions "windows" hipaa.windows;
      waivers = mkOption {
        type = types.listOf (types.submodule waiverModule);
        default = [ ];
        description = ''
          Accepted exceptions: a `fail` of the check becomes `exception` through the expiry day,
          and fails again from the next day. At most one waiver per check.
        '';
        example = lib.literalExpression ''
          [{
            check = "encryption";
            justification = "VM disk encrypted at the datastore (vSphere VM encryption)";
            ticket = "SEC-1234";
            expires = "2027-03-31";
          }]
        '';
      };
    };

    heal.restartableUnits = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        Units the agent may restart to heal this host (`msp-compliance-heal@restart-<name>`, as
        root, started through polkit), rendered into the `heal` section of
        `${declaredPath}`: plain `<name>.service` units, no templates, none of the agent's own.
        The module adds the daemons the checks look at when this generation runs them
        (`auditd.service`, `clamav-daemon.service`, `chronyd.service`,
        `systemd-timesyncd.service`); entries set here are added to those, and `lib.mkForce`
        replaces the whole list.
      '';
      example = [ "pacs-bridge.service" "hl7-listener.service" ];
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [{
    assertions = [
      {
        assertion = cfg.settings.site_id != null;
        message = "${opt}.settings.site_id must be set: the site (clinic) identifier enrolled at the control plane.";
      }
      {
        assertion = cfg.settings.host_id != null;
        message = "${opt}.settings.host_id must be set: this host's identifier within the site (e.g. its host name).";
      }
      {
        assertion = controlPlane != null || directorySink != null || s3Sink != null;
        message = "${opt}.settings.control_plane.url must be set (the control plane the agent checks in with), or, for an air-gapped site, ${opt}.settings.outbox.directory or .s3: otherwise evidence never leaves this host.";
      }
      {
        assertion = controlPlane == null || builtins.match "https://[^/@?#]+(/.*)?" (controlPlane.url or "") != null;
        message = "${opt}.settings.control_plane.url must be an https:// URL without credentials; found ${builtins.toJSON (controlPlane.url or null)}.";
      }
      {
        assertion = controlPlane == null || (controlPlane ? server_ca_file && controlPlane ? client_certificate_file);
        message = "${opt}.settings.control_plane.server_ca_file and .client_certificate_file must be set (the files `msp-mcp enroll` writes).";
      }
      {
        assertion = controlPlane == null || cfg.mtlsClientKeyFile != null || (controlPlane.client_key_file or null) != null;
        message = "${opt}.mtlsClientKeyFile must be set when ${opt}.settings.control_plane is configured.";
      }
      {
        assertion = controlPlane == null || (cfg.settings.orders.order_public_key_files or [ ]) != [ ];
        message = "${opt}.settings.orders.order_public_key_files must name the control plane's order public key(s) (`msp-mcp init` prints its path); without it every order is refused.";
      }
      {
        assertion = (cfg.settings.orders.maintenance_window or null) == null
          || builtins.match "([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]" cfg.settings.orders.maintenance_window != null;
        message = "${opt}.settings.orders.maintenance_window must be \"HH:MM-HH:MM\" (24-hour, may cross midnight); found ${builtins.toJSON (cfg.settings.orders.maintenance_window or null)}.";
      }
      {
        assertion = firewallBackend == "iptables" || firewallBackend == "nftables";
        message = "${opt}: networking.firewall.backend = \"${firewallBackend}\" is not supported by the firewall check (iptables or nftables).";
      }
      # The module fills in the key file paths of the S3 sink from the *File options, so the
      # sink is complete when both paths and the user's endpoint and bucket are there.
      {
        assertion = s3Sink == null || (s3Sink.access_key_id_file or null) != null;
        message = "${opt}.s3AccessKeyIdFile must be set when ${opt}.settings.outbox.s3 is configured.";
      }
      {
        assertion = s3Sink == null || (s3Sink.secret_access_key_file or null) != null;
        message = "${opt}.s3SecretAccessKeyFile must be set when ${opt}.settings.outbox.s3 is configured.";
      }
      {
        assertion = s3Sink == null || (s3Sink ? endpoint && s3Sink ? bucket);
        message = "${opt}.settings.outbox.s3.endpoint and .bucket must be set: the S3 sink is configured (${opt}.s3AccessKeyIdFile/s3SecretAccessKeyFile or settings.outbox.s3).";
      }
    ]
    ++ lib.concatMap
      (unit: map
        (problem: {
          assertion = false;
          message = "${opt}.heal.restartableUnits: ${builtins.toJSON unit} ${problem}.";
        })
        (restartableProblems unit))
      cfg.heal.restartableUnits
    ++ map
      (name: {
        assertion = !storeFile cfg.${name};
        message = "${opt}.${name} points into the Nix store (${toString cfg.${name}}), which every local user can read; keep secrets outside the store.";
      })
      secretOptions
    ++ lib.concatMap
      (it:
        let at = waiverAt it.index; waiver = it.value; in [
          {
            assertion = waiver.expires != null;
            message = "${at}.expires must be set (YYYY-MM-DD): a waiver for check \"${waiver.check}\" (ticket ${waiver.ticket}) needs an end date.";
          }
          {
            assertion = waiver.expires == null || validDate waiver.expires;
            message = "${at}.expires = \"${toString waiver.expires}\" is not a calendar date (YYYY-MM-DD).";
          }
          {
            assertion = builtins.match "[[:space:]]*" waiver.justification == null;
            message = "${at}.justification must not be empty: name the compensating control.";
          }
          {
            assertion = builtins.match "[[:space:]]*" waiver.ticket == null;
            message = "${at}.ticket must not be empty: name the ticket that tracks the exception.";
          }
          {
            assertion = builtins.length (lib.filter (other: other.check == waiver.check) cfg.baseline.waivers) == 1;
            message = "${at}.check: a second waiver for \"${waiver.check}\"; keep one per check.";
          }
        ])
      (indexed cfg.baseline.waivers)
    ++ map
      (it: {
        assertion = it.ok;
        message = "${opt}.baseline.${it.warn} must be at most ${opt}.baseline.${it.fail}.";
      })
      orderedThresholds
    ++ lib.concatMap
      (list: lib.imap0
        (index: value: {
          assertion = lib.hasPrefix "/" value;
          message = "${opt}.baseline.${list.path}.${toString index} = \"${value}\" must be an absolute path.";
        })
        list.values)
      absoluteLists;

    warnings =
      lib.optional (cfg.evidenceSigningKeyFile == null && directKeyFile "evidence" "signing_key_file" == null)
        "${opt}.evidenceSigningKeyFile is not set: the agent prints findings to the journal but records no signed evidence."
      ++ lib.concatMap
        (it: lib.optional (cfg.${it.option} == null && directKeyFile it.section it.key != null)
          "${opt}.settings.${it.section}.${it.key} is set directly: the agent user must be able to read that file, and it is not handed over with LoadCredential. Prefer ${opt}.${it.option}.")
        keyFileSettings
      ++ lib.optional (s3Sink != null && lib.hasPrefix "http://" (s3Sink.endpoint or ""))
        "${opt}.settings.outbox.s3.endpoint uses plain http://: evidence and S3 signatures travel unencrypted."
      ++ lib.optional (maxRetentionText != null && maxRetentionSec == null)
        "${opt}: services.journald.extraConfig has MaxRetentionSec=${maxRetentionText}, which this module cannot read as a time span; declared.json reports no retention limit."
      ++ map
        (name: "${opt}: backup job ${builtins.toJSON name} cannot be run by a heal: "
        + (if healableName name then "a restic job and a borg job share the name"
        else "the name is not 1 to 210 of letters, digits, `_`, `.`, `-` (not starting with `.` or `-`)") + ".")
        unhealableBackupJobs;

    services.msp-compliance.settings = {
      # The module relies on these (the unit's paths), so they are set without mkDefault.
      baseline_file = baselinePath;
      declared_file = declaredPath;
      state_dir = stateDir;
      # Root-only facts come from the probe units below, started through the polkit rule.
      privileged_facts = "units";
    } // lib.optionalAttrs (cfg.phiTokenKeyFile != null) {
      evidence.phi_token_key_file = credentialPath "phi-token-key";
    } // lib.optionalAttrs (cfg.s3AccessKeyIdFile != null || cfg.s3SecretAccessKeyFile != null) {
      outbox.s3 = lib.optionalAttrs (cfg.s3AccessKeyIdFile != null)
        {
          access_key_id_file = credentialPath "s3-access-key-id";
        } // lib.optionalAttrs (cfg.s3SecretAccessKeyFile != null) {
        secret_access_key_file = credentialPath "s3-secret-access-key";
      };
    };

    # The daemons the checks look at, when this generation runs them: a definition rather than
    # the option's default, so the user's own entries add to it instead of replacing it.
    services.msp-compliance.heal.restartableUnits =
      lib.optional config.security.auditd.enable "auditd.service"
      ++ lib.optional config.services.clamav.daemon.enable "clamav-daemon.service"
      ++ lib.optional chrony "chronyd.service"
      ++ lib.optional config.services.timesyncd.enable "systemd-timesyncd.service";

    environment.etc."msp-compliance/config.json".text = builtins.toJSON cfg.settings;
    environment.etc."msp-compliance/baseline.json".text = builtins.toJSON baselineFile;
    environment.etc."msp-compliance/declared.json".text = builtins.toJSON declared;

    environment.systemPackages = [ cfg.package ];

    # The agent validates what the module rendered, at build time.
    system.checks = lib.optional cfg.checkConfig (pkgs.runCommand "msp-compliance-check-config"
      {
        configJson = builtins.toJSON cfg.settings;
        baselineJson = builtins.toJSON baselineFile;
        declaredJson = builtins.toJSON declared;
        passAsFile = [ "configJson" "baselineJson" "declaredJson" ];
      } ''
      ${agent} config validate "$configJsonPath"
      ${agent} baseline validate "$baselineJsonPath"
      ${agent} declared validate "$declaredJsonPath"
      touch "$out"
    '');

    users.users.${user} = {
      isSystemUser = true;
      inherit group;
      description = "msp-compliance agent";
    };
    users.groups.${group} = { };

    # Probe and heal results: written by root, readable by the agent's group only. The setgid
    # bit gives new files the directory's group.
    systemd.tmpfiles.rules = [
      "d /run/msp-compliance 0750 root ${group} - -"
      "d ${probeDir} 2750 root ${group} - -"
      "d ${healDir} 2750 root ${group} - -"
    ]
    # The directory sink must exist (ReadWritePaths) and be the agent's.
    ++ lib.optional (directorySink != null) "d ${directorySink.path} 0750 ${user} ${group} - -";

    systemd.services.msp-compliance = {
      description = "msp-compliance: check, heal and prove this host against the HIPAA baseline";
      documentation = [ "https://example.invalid/msp-compliance" ];
      wantedBy = [ "multi-user.target" ];
      # The control plane and the S3 sink need the network (NixOS warns about an ordering
      # without the want). Offline the agent keeps working and queues.
      after = [ "systemd-tmpfiles-setup.service" ] ++ lib.optional needsNetwork "network-online.target";
      wants = lib.optional needsNetwork "network-online.target";
      # A new generation's config is picked up by SIGHUP (the daemon re-reads and validates it,
      # keeping the old one when the new one is bad); a restart would only cut a cycle short.
      reloadIfChanged = true;
      serviceConfig = {
        # The daemon: a cycle every poll_interval_secs (checks, check-in, signed orders, outbox).
        Type = "exec";
        ExecStart = "${agent} run --config ${configPath}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        # SIGTERM: the daemon finishes the step it is in (every write is a transaction) and
        # exits 0; a restart resumes where it stopped.
        TimeoutStopSec = "2min";
        # A configuration error exits 2 and is not retried (fix the config, then restart);
        # anything else (a crash) is retried.
        Restart = "on-failure";
        RestartSec = "30s";
        RestartPreventExitStatus = [ 2 ];
        SyslogIdentifier = "msp-compliance";

        User = user;
        Group = group;
        # journalctl (logging check: boots, coverage) reads the system journal.
        SupplementaryGroups = [ "systemd-journal" ];
        StateDirectory = "msp-compliance";
        StateDirectoryMode = "0700";
        LoadCredential = credentials;
        ReadWritePaths = lib.optional (directorySink != null) directorySink.path;

        # Hardening: the prometheus exporters' block (STYLE §5), with each loosening explained.
        CapabilityBoundingSet = [ "" ];
        NoNewPrivileges = true;
        # The encryption check places mounts through /sys (dm names, slaves), which stays
        # visible; block devices are only opened by root probes.
        PrivateDevices = true;
        PrivateTmp = true;
        # Not PrivateNetwork: the firewall check reads the host's listening sockets from
        # /proc/net, which a private network namespace would replace with its own.
        ProtectClock = true;
        ProtectControlGroups = true;
        # Loosened from `true`: the encryption check reads /proc/self/mountinfo of this unit's
        # mount namespace, where `true` would cover /home with an empty mount and hide its device.
        ProtectHome = "read-only";
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        # Not ProcSubset=pid: patching, encryption, firewall and logging read /proc/stat,
        # /proc/cmdline, /proc/swaps, /proc/net and /proc/sys.
        ProcSubset = "all";
        ProtectSystem = "strict";
        RemoveIPC = true;
        # AF_UNIX: systemd over D-Bus, clamd's socket, the journal. AF_INET/AF_INET6: chronyc
        # asks chronyd over UDP on localhost when not run as root (logging check, time sync),
        # the control plane (HTTPS, outgoing only: the agent listens on no socket) and the S3
        # sink.
        RestrictAddressFamilies = [ "AF_UNIX" ] ++ lib.optionals (chrony || needsNetwork) [ "AF_INET" "AF_INET6" ];
        IPAddressDeny = lib.optional (!needsNetwork) "any";
        IPAddressAllow = lib.optional (!needsNetwork && chrony) "localhost";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
      };
    };

    # The probe template: shared settings, and no ExecStart, so an instance name without its
    # own drop-in below does not load ("has no ExecStart"): only the listed probes can run.
    systemd.services."msp-compliance-probe@" = {
      description = "msp-compliance privileged probe %i";
      after = [ "systemd-tmpfiles-setup.service" ];
      serviceConfig = {
        Type = "oneshot";
        # Each probe's result is for the agent group (the directory is setgid).
        UMask = "0027";
        ProtectSystem = "strict";
        ReadWritePaths = [ probeDir ];
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        # Probes read netfilter and audit state over netlink (iptables-save also via
        # AF_INET/AF_INET6 getsockopt); they must see the host's network namespace.
        RestrictAddressFamilies = [ "AF_UNIX" "AF_NETLINK" "AF_INET" "AF_INET6" ];
        IPAddressDeny = "any";
        SystemCallFilter = [ "@system-service" ];
        SystemCallErrorNumber = "EPERM";
        CapabilityBoundingSet = [ "" ];
      };
    };

    # The heal template: one fixed command for every instance. `heal-unit` accepts only the
    # instance grammar of the heal contract checked against declared.json (anything else exits 2
    # and does nothing), and polkit lets the agent start only the instances this generation
    # declares. It restarts units over D-Bus, loads nft rulesets and switches generations, and
    # switch-to-configuration runs the target generation's activation script and boot loader
    # installer inside this unit, so the hardening is what those still work under. It is root
    # and may talk to systemd, so the hardening limits mistakes of the helper's own file
    # handling rather than what a subverted helper could ask systemd for; the limit on that is
    # the instance grammar and declared.json.
    systemd.services."msp-compliance-heal@" = {
      description = "msp-compliance heal %i";
      after = [ "systemd-tmpfiles-setup.service" ];
      # A heal that switches generations must outlive the switch: switch-to-configuration
      # would otherwise restart this running unit when its definition changed, or stop it when
      # the target generation has none, killing the heal half-way.
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${agent} heal-unit %i";
        # A generation switch restarts many units; a hung heal must still end.
        TimeoutStartSec = "5min";
        # Results are for the agent group (the directory is setgid), snapshots for root only.
        UMask = "0027";
        StateDirectory = "msp-compliance-heal";
        StateDirectoryMode = "0700";
        SyslogIdentifier = "msp-compliance-heal";

        # Root with the capabilities a switch needs. Not ProtectSystem: a switch writes
        # /nix/var/nix/profiles, /etc (the activation script) and /boot (the boot loader).
        NoNewPrivileges = true;
        # PrivateTmp and the Protect* settings below give the unit its own mount namespace:
        # mounts the activation script makes (an overlay /etc, `system.etc.overlay.enable`)
        # stay inside it, so on such hosts switch-to-configuration must run outside this unit.
        PrivateTmp = true;
        # Read-only rather than hidden: nothing here writes a home, and the activation script
        # must still see them. A switch to a generation that adds a user with `createHome`
        # cannot create that home from here.
        ProtectHome = "read-only";
        ProtectControlGroups = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        # Not PrivateDevices, not ProtectClock (which implies a device allow-list): the boot
        # loader installer opens the disk and the ESP's block device. Not ProtectKernelTunables:
        # it writes EFI variables under /sys/firmware/efi/efivars. Not ProtectHostname: the
        # activation script sets the host name, which a private UTS namespace would swallow.
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        # Not MemoryDenyWriteExecute: the target generation's activation snippets (any module's)
        # run here and may start an interpreter with a JIT.
        # AF_UNIX: systemd and the system bus; AF_NETLINK: nft. No IP traffic is needed.
        RestrictAddressFamilies = [ "AF_UNIX" "AF_NETLINK" ];
        IPAddressDeny = "any";
        # A deny list, not @system-service: the activation script remounts special file
        # systems (@mount) and sets the host name. What no heal needs is refused.
        SystemCallFilter = [ "~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @swap" ];
        SystemCallErrorNumber = "EPERM";
        # A deny list as well: root keeps what a switch needs (ownership, modes, mounts, nft's
        # CAP_NET_ADMIN) and loses what neither a heal nor an activation script uses. One line,
        # since systemd merges separate lines into one set by OR.
        CapabilityBoundingSet = "~CAP_SYS_MODULE CAP_SYS_BOOT CAP_SYS_TIME CAP_WAKE_ALARM CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_TTY_CONFIG CAP_BLOCK_SUSPEND CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_SYSLOG CAP_BPF CAP_PERFMON CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_RAW CAP_IPC_LOCK CAP_LEASE";
      };
    };
    security.polkit.enable = true;
    security.polkit.extraConfig = polkitRule;
  }
    {
      # One drop-in per probe: its fixed command and the one capability it needs.
      systemd.services = lib.mapAttrs'
        (name: probe: lib.nameValuePair "msp-compliance-probe@${name}" {
          overrideStrategy = "asDropin";
          serviceConfig = {
            ExecStart = "${probeRunner} ${name} ${lib.concatStringsSep " " probe.command}";
            CapabilityBoundingSet = probe.capabilities;
          };
        })
        probes;
    }]);
}
