# The agent (or, with `crate = "msp-mcp"`, the control-plane server), for `callPackage` with any current nixpkgs (the flake's own pin, or the host's
# nixpkgs through the NixOS module or the overlay). Verified only where nixpkgs is available:
# these build machines have no nixpkgs and no binary cache (README, "What is verified where").
{ lib, rustPlatform, rustc, crate ? "msp-compliance-agent" }:

let
  workspace = lib.importTOML ./Cargo.toml;
  inherit (workspace.workspace.package) version rust-version;
  # Package name -> its member directory.
  memberDir = { msp-compliance-agent = "agent"; msp-mcp = "mcp"; }.${crate};
  manifest = lib.importTOML (./. + "/${memberDir}/Cargo.toml");

  # Only what cargo needs to build the workspace: the manifests, the lock file, each member's
  # sources and benches (declared as targets), and the embedded baseline. New workspace members
  # are picked up from Cargo.toml. Tests and fixtures stay out (the build runs no tests).
  member = name: [
    (./. + "/${name}/Cargo.toml")
    (./. + "/${name}/src")
    (lib.fileset.maybeMissing (./. + "/${name}/benches"))
    (lib.fileset.maybeMissing (./. + "/${name}/build.rs"))
  ];
  src = lib.fileset.toSource {
    root = ./.;
    fileset = lib.fileset.unions ([ ./Cargo.toml ./Cargo.lock ./baselines ]
      ++ lib.concatMap member workspace.workspace.members);
  };
in
# Cargo refuses a toolchain older than the workspace's rust-version; say so at evaluation time,
  # before any crate is fetched.
assert lib.assertMsg (lib.versionAtLeast rustc.version rust-version)
  "${crate} needs rustc >= ${rust-version} (Cargo.toml rust-version); this nixpkgs has ${rustc.version}. Use a newer nixpkgs (or override rustPlatform).";

rustPlatform.buildRustPackage {
  pname = crate;
  inherit version src;

  cargoLock.lockFile = ./Cargo.lock;
  cargoBuildFlags = [ "-p" crate ];

  # No tests in the Nix build. The suite's hermetic tests run in CI (`.ci/run`), together with
  # the real-tool tests that need root, network namespaces and installed tools, which a Nix
  # sandbox does not have; the sources given to this build carry no tests or fixtures.
  doCheck = false;

  meta = {
    inherit (manifest.package) description;
    license = lib.licenses.asl20;
    mainProgram = crate;
    platforms = lib.platforms.linux;
  };
}
