# services.msp-mcp: the reference control-plane server (DESIGN §7) on the MSP's own host.
#
# What this module owns:
# - the server's unit: `msp-mcp serve`, an unprivileged system user, its SQLite database and keys
#   in the state directory (mode 0700), strict hardening;
# - first start: `msp-mcp init --existing-ok` creates the database, the order-signing key, a CA
#   and the server certificate in the state directory (once; later starts keep them);
# - the server's certificates may instead be given as files: the private key only through
#   systemd `LoadCredential` (never copied into the world-readable Nix store), the rest by path.
#   The order-signing key is never read by the server; only `msp-mcp order create` uses it.
#
# Operators then enroll hosts and create orders with the same binary, as the service user:
# `sudo -u msp-mcp msp-mcp --state-dir /var/lib/msp-mcp enroll --site S --host H --out DIR`.
#
# Like modules/msp-compliance.nix, it never touches nixpkgs at the top level, so it evaluates
# with `lib.evalModules` against the stand-in lib in CI (nix/tests/).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkPackageOption mkIf types;

  cfg = config.services.msp-mcp;
  opt = "services.msp-mcp";

  stateDir = "/var/lib/msp-mcp";
  user = "msp-mcp";
  group = "msp-mcp";
  credentialPath = name: "/run/credentials/msp-mcp.service/${name}";

  # A location outside the store: a string naming an absolute path (a Nix path would copy the
  # file into the store).
  absoluteFile = types.nullOr (types.strMatching "/.+" // {
    description = "absolute path of a file outside the Nix store";
  });

  # `address:port` or `[v6-address]:port`, as `msp-mcp serve --listen` takes it.
  listenMatch = builtins.match "(\\[[0-9A-Fa-f:.]+]|[A-Za-z0-9.-]+):([1-9][0-9]{0,4})" cfg.listen;
  listenPort = if listenMatch == null then null else builtins.fromJSON (builtins.elemAt listenMatch 1);

  tlsFiles = [ cfg.tls.certificateFile cfg.tls.keyFile cfg.tls.clientCaFile ];
  tlsGiven = builtins.all (it: it != null) tlsFiles;
  tlsNone = builtins.all (it: it == null) tlsFiles;

  mcp = "${cfg.package}/bin/msp-mcp";

  # systemd splits Exec lines on spaces; every argument here is a path, an address or a
  # validated name without spaces or quotes, so no quoting is needed (or done).
  execLine = builtins.concatStringsSep " ";

  serveArgs = [ mcp "--state-dir" stateDir "serve" "--listen" cfg.listen ]
    ++ lib.optionals tlsGiven [
    "--tls-certificate"
    cfg.tls.certificateFile
    "--tls-key"
    (credentialPath "tls-key")
    "--client-ca"
    cfg.tls.clientCaFile
  ];

  initArgs = [ mcp "--state-dir" stateDir "init" "--existing-ok" ]
    ++ lib.concatMap (name: [ "--server-name" name ]) cfg.serverNames;
in
{
  options.services.msp-mcp = {
    enable = mkEnableOption "the msp-compliance reference control-plane server";

    package = mkPackageOption pkgs "msp-mcp" { };

    listen = mkOption {
      type = types.strMatching "[^ ]+";
      default = "127.0.0.1:8443";
      example = "0.0.0.0:8443";
      description = ''
        Address and port the HTTPS API listens on (`address:port`, `[v6]:port`). Agents connect
        here with their client certificates; nothing else is served.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the listening port in the NixOS firewall.";
    };

    serverNames = mkOption {
      type = types.listOf (types.strMatching "[A-Za-z0-9][A-Za-z0-9.:-]{0,252}");
      default = [ "localhost" "127.0.0.1" ];
      example = [ "mcp.example-msp.net" ];
      description = ''
        DNS names and IP addresses of the server certificate that `msp-mcp init` makes on first
        start (used unless {option}`${opt}.tls` is given). Agents verify the server against them.
      '';
    };

    tls = {
      certificateFile = mkOption {
        type = absoluteFile;
        default = null;
        description = "Server certificate chain (PEM). With keyFile and clientCaFile, replaces the certificates `msp-mcp init` makes.";
      };
      keyFile = mkOption {
        type = absoluteFile;
        default = null;
        description = "Server private key (PEM), passed to the unit with `LoadCredential`.";
      };
      clientCaFile = mkOption {
        type = absoluteFile;
        default = null;
        description = "CA (PEM) whose certificates identify agents; `msp-mcp enroll` must sign with it.";
      };
    };

  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = listenMatch != null && listenPort != null && listenPort >= 1 && listenPort <= 65535;
        message = "${opt}.listen must be address:port (port 1-65535), e.g. 127.0.0.1:8443; found ${builtins.toJSON cfg.listen}.";
      }
      {
        assertion = tlsGiven || tlsNone;
        message = "${opt}.tls.certificateFile, keyFile and clientCaFile go together: set all three, or none (then `msp-mcp init` makes them).";
      }
      {
        assertion = cfg.serverNames != [ ];
        message = "${opt}.serverNames must name at least one DNS name or address for the server certificate.";
      }
    ];

    warnings = lib.optional (cfg.openFirewall && listenMatch != null && lib.hasPrefix "127." (builtins.head listenMatch))
      "${opt}.openFirewall is set but ${opt}.listen is a loopback address; agents on other hosts cannot reach it.";

    users.users.${user} = {
      isSystemUser = true;
      inherit group;
      description = "msp-compliance control plane";
    };
    users.groups.${group} = { };

    environment.systemPackages = [ cfg.package ];

    networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && listenPort != null) listenPort;

    systemd.services.msp-mcp = {
      description = "msp-compliance control plane";
      documentation = [ "https://example.invalid/msp-compliance" ];
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        Type = "simple";
        ExecStartPre = execLine initArgs;
        ExecStart = execLine serveArgs;
        # SIGTERM: stop accepting, finish requests in flight (bounded), exit.
        KillSignal = "SIGTERM";
        TimeoutStopSec = "30s";
        Restart = "on-failure";
        RestartSec = "5s";
        SyslogIdentifier = "msp-mcp";

        User = user;
        Group = group;
        StateDirectory = "msp-mcp";
        StateDirectoryMode = "0700";
        LoadCredential = lib.optional tlsGiven "tls-key:${cfg.tls.keyFile}";
        # Ports below 1024 need this one capability; nothing else does.
        AmbientCapabilities = lib.optional (listenPort != null && listenPort < 1024) "CAP_NET_BIND_SERVICE";
        CapabilityBoundingSet = if listenPort != null && listenPort < 1024 then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];

        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateMounts = true;
        PrivateTmp = true;
        # Not with a port below 1024: in a user namespace the capability would not reach the
        # host's network namespace.
        PrivateUsers = listenPort == null || listenPort >= 1024;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        ProtectSystem = "strict";
        RemoveIPC = true;
        # The API is TCP; AF_UNIX for the journal.
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
        DevicePolicy = "closed";
      };
    };
  };
}
