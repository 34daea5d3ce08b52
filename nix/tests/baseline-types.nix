# The type of every generated baseline option, by its path in the baseline file
# (`checks.firewall.allowed_tcp_ports` -> "list of 16 bit unsigned integer; ..."), for
# nix/check.sh to compare with the agent's `baseline schema`.
{ lib ? import ../lib-stub.nix }:

let
  evaluated = lib.evalModules {
    modules = [
      ./nixos-stubs.nix
      ../../modules/msp-compliance.nix
      { _module.args.pkgs = import ./pkgs-stub.nix; }
    ];
  };
  baseline = evaluated.options.services.msp-compliance.baseline;
  describe = prefix: options: lib.mapAttrs' (name: option: lib.nameValuePair "${prefix}.${name}" option.type.description) options;
in
lib.foldl' (acc: check: acc // describe "checks.${check}" baseline.checks.${check}) (describe "windows" baseline.windows)
  (builtins.attrNames baseline.checks)
