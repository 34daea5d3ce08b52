# Evaluates modules/msp-compliance.nix and modules/msp-mcp.nix with `lib.evalModules` and the NixOS stand-ins, and
# returns what the module renders as a flat set of file name -> text (the golden files'
# layout). Failed assertions throw, as NixOS does when building the system.
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix --argstr case full
#   nix-instantiate ... --arg lib 'import /path/to/nixpkgs.lib/lib'   # the real lib
#
# `case` names a file in ./cases (or is a module itself); `module` is the module under test
# (nix/check.sh also passes the flake's `nixosModules.default`, which wraps it).
{ lib ? import ../lib-stub.nix
, case
, pkgs ? import ./pkgs-stub.nix
, module ? ../../modules/msp-compliance.nix
}:

let
  caseModule = if builtins.isString case then ./cases + "/${case}.nix" else case;

  evaluated = lib.evalModules {
    modules = [
      ./nixos-stubs.nix
      module
      ../../modules/msp-mcp.nix
      caseModule
      { _module.args.pkgs = pkgs; }
    ];
  };
  inherit (evaluated) config;

  failed = map (it: it.message) (builtins.filter (it: !it.assertion) config.assertions);

  render = import ./render-unit.nix { inherit lib; };

  # Drop-ins (overrideStrategy = "asDropin") go where NixOS puts them.
  serviceFile = name: unit:
    if unit.overrideStrategy == "asDropin"
    then lib.nameValuePair "units/${name}.service.d/overrides.conf" (render.service unit)
    else lib.nameValuePair "units/${name}.service" (render.service unit);

  etc = lib.mapAttrs' (name: file: lib.nameValuePair "etc/${name}" file.text) config.environment.etc;
  services = lib.mapAttrs' serviceFile config.systemd.services;
  timers = lib.mapAttrs' (name: unit: lib.nameValuePair "units/${name}.timer" (render.timer unit)) config.systemd.timers;

  checks = builtins.listToAttrs (map
    (drv: lib.nameValuePair "system-checks/${drv.name}.sh" drv.script)
    config.system.checks);

  summary = {
    "polkit/10-nixos.rules" = config.security.polkit.extraConfig;
    "tmpfiles.conf" = lib.concatMapStrings (rule: rule + "\n") config.systemd.tmpfiles.rules;
    "summary.json" = builtins.toJSON {
      inherit (config) warnings;
      polkit = config.security.polkit.enable;
      users = builtins.mapAttrs (_: it: { inherit (it) isSystemUser group description; }) config.users.users;
      groups = builtins.attrNames config.users.groups;
      systemPackages = map (it: it.name) config.environment.systemPackages;
      timersWantedBy = builtins.mapAttrs (_: it: it.wantedBy) config.systemd.timers;
      servicesWantedBy = builtins.mapAttrs (_: it: it.wantedBy) (lib.filterAttrs (_: it: it.wantedBy != [ ]) config.systemd.services);
      reloadIfChanged = builtins.attrNames (lib.filterAttrs (_: it: it.reloadIfChanged) config.systemd.services);
    };
  };
in
if failed != [ ]
then throw "Failed assertions:\n${lib.concatMapStrings (it: "- ${it}\n") failed}"
else etc // services // timers // checks // summary
