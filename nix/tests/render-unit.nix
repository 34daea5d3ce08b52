# Unit files as NixOS writes them (nixos/lib/systemd-lib.nix: `attrsToSection`, `serviceToUnit`,
# `timerToUnit`), for the test harness: the same key order (sorted), one `Key=value` line per
# list element, booleans as true/false, dependency lists joined by spaces, the default PATH and
# locale environment. NixOS's exact whitespace and its [Install]-less symlinks are not copied.
{ lib }:

let
  toOption = value:
    if value == true then "true"
    else if value == false then "false"
    else toString value;

  section = attrs: lib.concatStrings (lib.concatLists (lib.mapAttrsToList
    (name: value: map (it: "${name}=${toOption it}\n") (lib.toList value))
    attrs));

  unitSection = unit: section ({ }
    // lib.optionalAttrs (unit.wants != [ ]) { Wants = toString unit.wants; }
    // lib.optionalAttrs (unit.after != [ ]) { After = toString unit.after; }
    // lib.optionalAttrs (unit.description != "") { Description = unit.description; }
    // lib.optionalAttrs (unit.documentation != [ ]) { Documentation = toString unit.documentation; }
    // unit.unitConfig);

  # What NixOS puts into every service's environment (the default `path` and the global
  # environment), with the stand-in store paths.
  defaultEnvironment = {
    LOCALE_ARCHIVE = "/nix/store/00000000000000000000000000000000-glibc-locales/lib/locale/locale-archive";
    PATH = "/nix/store/00000000000000000000000000000000-coreutils-9.5/bin:/nix/store/00000000000000000000000000000000-systemd/bin";
    TZDIR = "/nix/store/00000000000000000000000000000000-tzdata/share/zoneinfo";
  };
  environmentLines = lib.concatStrings (lib.mapAttrsToList
    (name: value: "Environment=${builtins.toJSON "${name}=${value}"}\n")
    defaultEnvironment);
in
{
  service = unit: ''
    [Unit]
    ${unitSection unit}
    [Service]
    ${environmentLines}${lib.optionalString (!unit.restartIfChanged) "X-RestartIfChanged=false\n"}${section unit.serviceConfig}'';

  timer = unit: ''
    [Unit]
    ${unitSection unit}
    [Timer]
    ${section unit.timerConfig}'';
}
