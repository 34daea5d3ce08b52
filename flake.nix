{
  description = "msp-compliance: a pull-only HIPAA compliance agent for NixOS site hosts";

  # nixpkgs only, pinned in flake.lock (written by hand from public lock files; see README).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      pkgsFor = system: nixpkgs.legacyPackages.${system};
    in
    {
      # Nothing below touches `nixpkgs` until a package, shell or nixpkgs-lib check is evaluated:
      # the modules and the module-eval checks evaluate offline.
      overlays.default = final: _prev: {
        msp-compliance-agent = final.callPackage ./package.nix { };
        msp-mcp = final.callPackage ./package.nix { crate = "msp-mcp"; };
      };

      nixosModules = {
        # The module, with the agent built from the host's own nixpkgs.
        msp-compliance = { lib, pkgs, ... }: {
          _file = "${toString ./flake.nix}#nixosModules.msp-compliance";
          imports = [ ./modules/msp-compliance.nix ];
          services.msp-compliance.package = lib.mkDefault (pkgs.callPackage ./package.nix { });
        };
        # The control-plane server, built the same way.
        msp-mcp = { lib, pkgs, ... }: {
          _file = "${toString ./flake.nix}#nixosModules.msp-mcp";
          imports = [ ./modules/msp-mcp.nix ];
          services.msp-mcp.package = lib.mkDefault (pkgs.callPackage ./package.nix { crate = "msp-mcp"; });
        };
        default = self.nixosModules.msp-compliance;
      };

      packages = forAllSystems (system:
        let
          pkgs = pkgsFor system;
          agent = pkgs.callPackage ./package.nix { };
        in
        {
          default = agent;
          msp-compliance-agent = agent;
          msp-mcp = pkgs.callPackage ./package.nix { crate = "msp-mcp"; };
        });

      apps = forAllSystems (system:
        let
          app = {
            type = "app";
            program = "${self.packages.${system}.default}/bin/msp-compliance-agent";
            meta.description = "msp-compliance-agent: check this host, validate configuration, verify evidence";
          };
        in
        {
          default = app;
          msp-compliance-agent = app;
          msp-mcp = {
            type = "app";
            program = "${self.packages.${system}.msp-mcp}/bin/msp-mcp";
            meta.description = "msp-mcp: the reference control plane (serve, enroll hosts, sign orders)";
          };
        });

      checks = forAllSystems (system: {
        # Golden and negative cases with the repository's stand-in lib: builtins only.
        module-eval = import ./nix/tests/flake-check.nix { inherit system; lib = import ./nix/lib-stub.nix; };
        # The same cases with the real nixpkgs lib of the pinned nixpkgs.
        module-eval-nixpkgs-lib = import ./nix/tests/flake-check.nix { inherit system; inherit (nixpkgs) lib; };
        package = self.packages.${system}.default;
        package-msp-mcp = self.packages.${system}.msp-mcp;
      });

      devShells = forAllSystems (system:
        let pkgs = pkgsFor system; in
        {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.default ];
            packages = [
              pkgs.cargo
              pkgs.clippy
              pkgs.rustfmt
              pkgs.nixpkgs-fmt
              pkgs.deadnix
              pkgs.jq
              pkgs.duktape
              pkgs.python3
              pkgs.systemd
            ];
          };
        });

      formatter = forAllSystems (system: (pkgsFor system).nixpkgs-fmt);
    };
}
