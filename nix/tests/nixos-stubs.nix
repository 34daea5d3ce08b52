# Stand-ins for the NixOS options that modules/msp-compliance.nix reads and writes, declared
# with NixOS's names, types (close enough for this module) and defaults, so the module can be
# evaluated with `lib.evalModules` where no nixpkgs exists. Test harness only: nothing outside
# nix/tests imports this file. Where NixOS behaves in a way the module depends on (list-valued
# unit options concatenate, scalar ones must agree), the stand-in does the same.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-unit-options.nix: lists concatenate, anything else must be defined once
  # (or identically).
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      if builtins.any (def: builtins.isList def.value) defs
      then builtins.concatMap (def: lib.toList def.value) defs
      else lib.mergeEqualOption loc defs;
  };

  strList = mkOption { type = types.listOf types.str; default = [ ]; };
  portList = mkOption { type = types.listOf types.port; default = [ ]; };
  rangeList = mkOption { type = types.listOf (types.attrsOf types.port); default = [ ]; };
  enableOption = default: mkOption { type = types.bool; inherit default; };

  unitModule = {
    options = {
      description = mkOption { type = types.str; default = ""; };
      documentation = strList;
      after = strList;
      wants = strList;
      wantedBy = strList;
      unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
    };
  };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };

    environment.etc = mkOption {
      type = types.attrsOf (types.submodule {
        options.text = mkOption { type = types.nullOr types.lines; default = null; };
      });
      default = { };
    };
    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    system.checks = mkOption { type = types.listOf types.package; default = [ ]; };

    users.users = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          isSystemUser = enableOption false;
          group = mkOption { type = types.str; default = ""; };
          description = mkOption { type = types.str; default = ""; };
        };
      });
      default = { };
    };
    users.groups = mkOption { type = types.attrsOf (types.submodule { }); default = { }; };

    systemd.services = mkOption {
      type = types.attrsOf (types.submodule [
        unitModule
        {
          options = {
            serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
            overrideStrategy = mkOption { type = types.enum [ "asDropinIfExists" "asDropin" ]; default = "asDropinIfExists"; };
            restartIfChanged = enableOption true;
            reloadIfChanged = enableOption false;
          };
        }
      ]);
      default = { };
    };
    systemd.timers = mkOption {
      type = types.attrsOf (types.submodule [
        unitModule
        { options.timerConfig = mkOption { type = types.attrsOf unitOption; default = { }; }; }
      ]);
      default = { };
    };
    systemd.tmpfiles.rules = strList;

    security.polkit.enable = enableOption false;
    security.polkit.extraConfig = mkOption { type = types.lines; default = ""; };

    # What declared.json reads.
    networking.nftables.enable = enableOption false;
    networking.firewall = {
      enable = enableOption true;
      backend = mkOption {
        type = types.enum [ "iptables" "nftables" "firewalld" ];
        default = if config.networking.nftables.enable then "nftables" else "iptables";
      };
      package = mkOption { type = types.package; default = pkgs.iptables; };
      allowedTCPPorts = portList;
      allowedUDPPorts = portList;
      allowedTCPPortRanges = rangeList;
      allowedUDPPortRanges = rangeList;
      trustedInterfaces = strList;
      interfaces = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            allowedTCPPorts = portList;
            allowedUDPPorts = portList;
          };
        });
        default = { };
      };
    };
    services.journald = {
      storage = mkOption { type = types.enum [ "persistent" "volatile" "auto" "none" ]; default = "persistent"; };
      extraConfig = mkOption { type = types.lines; default = ""; };
      upload.enable = enableOption false;
    };
    security.auditd.enable = enableOption false;
    security.audit = {
      enable = mkOption { type = types.either types.bool (types.enum [ "lock" ]); default = false; };
      rules = strList;
    };
    services.restic.backups = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          repository = mkOption { type = types.nullOr types.str; default = null; };
          repositoryFile = mkOption { type = types.nullOr types.str; default = null; };
          passwordFile = mkOption { type = types.str; };
          paths = strList;
          timerConfig = mkOption {
            type = types.nullOr (types.attrsOf unitOption);
            default = { OnCalendar = "daily"; Persistent = true; };
          };
        };
      });
      default = { };
    };
    services.borgbackup.jobs = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          repo = mkOption { type = types.str; };
          paths = mkOption { type = types.nullOr (types.listOf types.str); default = null; };
          startAt = mkOption { type = types.either types.str (types.listOf types.str); default = "daily"; };
        };
      });
      default = { };
    };
    boot.initrd.luks.devices = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          device = mkOption { type = types.str; };
          keyFile = mkOption { type = types.nullOr types.str; default = null; };
        };
      });
      default = { };
    };
    swapDevices = mkOption {
      type = types.listOf (types.submodule {
        options = {
          device = mkOption { type = types.str; };
          randomEncryption.enable = enableOption false;
        };
      });
      default = [ ];
    };
    boot.tmp.useTmpfs = enableOption false;
    system.autoUpgrade = {
      enable = enableOption false;
      operation = mkOption { type = types.enum [ "switch" "boot" ]; default = "switch"; };
      flake = mkOption { type = types.nullOr types.str; default = null; };
      channel = mkOption { type = types.nullOr types.str; default = null; };
      dates = mkOption { type = types.str; default = "04:40"; };
      allowReboot = enableOption false;
    };
    services.clamav = {
      daemon.enable = enableOption false;
      updater.enable = enableOption false;
      scanner.enable = enableOption false;
    };
    services.timesyncd.enable = enableOption true;
    services.chrony.enable = enableOption false;
  };
}
