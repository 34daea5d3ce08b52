# A stand-in for the few nixpkgs attributes modules/msp-compliance.nix uses, for evaluation
# without nixpkgs (test harness only). Derivations are fake: a name and a fixed store path, so
# golden files are stable. Scripts are real store files (their content decides their path);
# runCommand keeps its arguments so tests can inspect them.
let
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
in
{
  msp-compliance-agent = fake "msp-compliance-agent-0.1.0";
  msp-mcp = fake "msp-mcp-0.1.0";
  audit = fake "audit-4.0";
  coreutils = fake "coreutils-9.5";
  iptables = fake "iptables-1.8.11";
  nftables = fake "nftables-1.1.1";
  # A real file in the store (builtins.toFile), so nix/check.sh can run the script it names.
  writeShellScript = name: text: builtins.toFile name ''
    #!/bin/sh
    ${text}'';
  runCommand = name: env: script: fake name // { inherit env script; };
  # The flake's module builds the agent with `callPackage ./package.nix`, which needs nixpkgs;
  # here it gives the same fake package as `pkgs.msp-compliance-agent`.
  callPackage = _path: _args: fake "msp-compliance-agent-0.1.0";
}
