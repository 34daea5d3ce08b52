# Bad option values: each must fail evaluation with a message that names the option.
# Shape: name = { module = <NixOS module>; expect = [ substrings of the error ]; }.
# nix/check.sh evaluates each through eval.nix (with every lib it runs) and requires a failure
# whose message contains every `expect` string; the flake's module-eval check requires the
# failure.
let
  base = settings: {
    services.msp-compliance = {
      enable = true;
      evidenceSigningKeyFile = "/var/lib/msp-compliance-secrets/evidence-signing-key";
      settings = { site_id = "clinic-042"; host_id = "frontdesk"; outbox.directory.path = "/srv/evidence"; } // settings;
    };
  };
  withAgent = agent: {
    imports = [ (base { }) ];
    services.msp-compliance = agent;
  };
  waiver = fields: withAgent {
    baseline.waivers = [
      ({ check = "encryption"; justification = "datastore encryption"; ticket = "SEC-1"; expires = "2027-03-31"; } // fields)
    ];
  };
  opt = "services.msp-compliance";
in
{
  no-site-id = {
    module.services.msp-compliance = { enable = true; settings.host_id = "frontdesk"; };
    expect = [ "${opt}.settings.site_id must be set" ];
  };
  no-host-id = {
    module.services.msp-compliance = { enable = true; settings.site_id = "clinic-042"; };
    expect = [ "${opt}.settings.host_id must be set" ];
  };
  bad-site-id = {
    module = base { site_id = "-clinic 42"; };
    expect = [ "`${opt}.settings.site_id' is not of type" ];
  };
  poll-interval-too-short = {
    module = base { poll_interval_secs = 5; };
    expect = [ "`${opt}.settings.poll_interval_secs' is not of type `integer between 10 and 86400" ];
  };
  settings-not-json = {
    module = base { commands = _: null; };
    expect = [ "`${opt}.settings.commands' is not of type `JSON value'" ];
  };
  module-owned-setting = {
    module = base { state_dir = "/srv/msp"; };
    expect = [ "`${opt}.settings.state_dir' has conflicting definition values" ];
  };
  unknown-option = {
    module = withAgent { siteId = "clinic-042"; };
    expect = [ "`${opt}.siteId' does not exist" ];
  };
  enable-not-bool = {
    module.services.msp-compliance.enable = "yes";
    expect = [ "`${opt}.enable' is not of type `boolean'" ];
  };
  waiver-without-expiry = {
    module = waiver { expires = null; };
    expect = [ "${opt}.baseline.waivers.0.expires must be set" ];
  };
  waiver-malformed-date = {
    module = waiver { expires = "31.03.2027"; };
    expect = [ "${opt}.baseline.waivers" ".expires' is not of type" ];
  };
  waiver-impossible-date = {
    module = waiver { expires = "2027-02-29"; };
    expect = [ "${opt}.baseline.waivers.0.expires = \"2027-02-29\" is not a calendar date" ];
  };
  waiver-unknown-check = {
    module = waiver { check = "encryptoin"; };
    expect = [ "${opt}.baseline.waivers" ".check' is not of type `one of" ];
  };
  waiver-empty-ticket = {
    module = waiver { ticket = " "; };
    expect = [ "${opt}.baseline.waivers.0.ticket must not be empty" ];
  };
  waiver-twice = {
    module = withAgent {
      baseline.waivers = [
        { check = "backup"; justification = "offsite copy by the MSP"; ticket = "SEC-2"; expires = "2027-01-31"; }
        { check = "backup"; justification = "second"; ticket = "SEC-3"; expires = "2027-02-28"; }
      ];
    };
    expect = [ "${opt}.baseline.waivers.0.check: a second waiver for \"backup\"" ];
  };
  threshold-order = {
    module = withAgent { baseline.checks.backup.rpo_warn_hours = 50; };
    expect = [ "${opt}.baseline.checks.backup.rpo_warn_hours must be at most ${opt}.baseline.checks.backup.rpo_fail_hours" ];
  };
  threshold-negative = {
    module = withAgent { baseline.checks.encryption.min_xts_key_bits = -1; };
    expect = [ "`${opt}.baseline.checks.encryption.min_xts_key_bits' is not of type `32 bit unsigned integer" ];
  };
  threshold-port-range = {
    module = withAgent { baseline.checks.firewall.allowed_tcp_ports = [ 22 70000 ]; };
    expect = [ "${opt}.baseline.checks.firewall.allowed_tcp_ports" "is not of type `16 bit unsigned integer" ];
  };
  severity-unknown = {
    module = withAgent { baseline.checks.encryption.severity = "urgent"; };
    expect = [ "`${opt}.baseline.checks.encryption.severity' is not of type `one of \"low\"" ];
  };
  phi-path-relative = {
    module = withAgent { baseline.checks.encryption.phi_paths = [ "/" "var/lib" ]; };
    expect = [ "${opt}.baseline.checks.encryption.phi_paths.1 = \"var/lib\" must be an absolute path" ];
  };
  baseline-id = {
    module = withAgent { baseline.id = "hipaa 2"; };
    expect = [ "`${opt}.baseline.id' is not of type" ];
  };
  secret-in-store = {
    module = withAgent { phiTokenKeyFile = "/nix/store/00000000000000000000000000000000-phi-token-key"; };
    expect = [ "${opt}.phiTokenKeyFile points into the Nix store" ];
  };
  secret-as-nix-path = {
    module = withAgent { phiTokenKeyFile = ./negative.nix; };
    expect = [ "`${opt}.phiTokenKeyFile' is not of type `null or absolute path of a file outside the Nix store'" ];
  };
  secret-relative = {
    module = withAgent { phiTokenKeyFile = "secrets/phi-token-key"; };
    expect = [ "`${opt}.phiTokenKeyFile' is not of type" ];
  };
  s3-without-key-files = {
    module = base { outbox.s3 = { endpoint = "https://s3.example"; bucket = "evidence"; }; };
    expect = [ "${opt}.s3AccessKeyIdFile must be set when ${opt}.settings.outbox.s3 is configured" ];
  };
  s3-key-files-without-sink = {
    module = withAgent { s3AccessKeyIdFile = "/run/secrets/a"; s3SecretAccessKeyFile = "/run/secrets/b"; };
    expect = [ "${opt}.settings.outbox.s3.endpoint and .bucket must be set" ];
  };
  s3-key-file-twice = {
    module = {
      imports = [ (base { outbox.s3 = { endpoint = "https://s3.example"; bucket = "evidence"; access_key_id_file = "/run/secrets/a"; }; }) ];
      services.msp-compliance = { s3AccessKeyIdFile = "/run/secrets/a2"; s3SecretAccessKeyFile = "/run/secrets/b"; };
    };
    expect = [ "`${opt}.settings.outbox.s3.access_key_id_file' has conflicting definition values" ];
  };
  firewalld = {
    module = { imports = [ (base { }) ]; networking.firewall.backend = "firewalld"; };
    expect = [ "${opt}: networking.firewall.backend = \"firewalld\" is not supported" ];
  };
  mcp-bad-listen = {
    module.services.msp-mcp = { enable = true; listen = "localhost"; };
    expect = [ "services.msp-mcp.listen must be address:port" ];
  };
  mcp-port-zero = {
    module.services.msp-mcp = { enable = true; listen = "127.0.0.1:0"; };
    expect = [ "services.msp-mcp.listen must be address:port" ];
  };
  mcp-partial-tls = {
    module.services.msp-mcp = { enable = true; tls.certificateFile = "/etc/msp-mcp/server.pem"; };
    expect = [ "services.msp-mcp.tls.certificateFile, keyFile and clientCaFile go together" ];
  };
  mcp-relative-key = {
    module.services.msp-mcp = { enable = true; tls.keyFile = "relative/key"; };
    expect = [ "services.msp-mcp.tls.keyFile" "is not of type" ];
  };
  mcp-server-name-with-space = {
    module.services.msp-mcp = { enable = true; serverNames = [ "a b" ]; };
    expect = [ "services.msp-mcp.serverNames" ];
  };
  no-server-url = {
    module.services.msp-compliance = {
      enable = true;
      settings = { site_id = "clinic-042"; host_id = "frontdesk"; };
    };
    expect = [ "services.msp-compliance.settings.control_plane.url must be set" ];
  };
  plain-http-control-plane = {
    module = base {
      control_plane = { url = "http://mcp.example-msp.net"; server_ca_file = "/etc/ca.pem"; client_certificate_file = "/etc/client.pem"; };
      orders.order_public_key_files = [ "/etc/order.pub" ];
    };
    expect = [ "services.msp-compliance.settings.control_plane.url must be an https:// URL" ];
  };
  control-plane-without-key = {
    module = base {
      control_plane = { url = "https://mcp.example-msp.net"; server_ca_file = "/etc/ca.pem"; client_certificate_file = "/etc/client.pem"; };
      orders.order_public_key_files = [ "/etc/order.pub" ];
    };
    expect = [ "services.msp-compliance.mtlsClientKeyFile must be set" ];
  };
  control-plane-without-order-keys = {
    module = {
      imports = [ (base { control_plane = { url = "https://mcp.example-msp.net"; server_ca_file = "/etc/ca.pem"; client_certificate_file = "/etc/client.pem"; }; }) ];
      services.msp-compliance.mtlsClientKeyFile = "/var/lib/secrets/client.key";
    };
    expect = [ "services.msp-compliance.settings.orders.order_public_key_files must name" ];
  };
  malformed-maintenance-window = {
    module = base { orders.maintenance_window = "10pm-4am"; };
    expect = [ "services.msp-compliance.settings.orders.maintenance_window must be \"HH:MM-HH:MM\"" ];
  };
  heal-unit-with-slash = {
    module = withAgent { heal.restartableUnits = [ "pacs-bridge.service" "../etc/sshd.service" ]; };
    expect = [ "${opt}.heal.restartableUnits: \"../etc/sshd.service\" is not a plain unit name" ];
  };
  heal-unit-template = {
    module = withAgent { heal.restartableUnits = [ "getty@tty1.service" ]; };
    expect = [ "${opt}.heal.restartableUnits: \"getty@tty1.service\" is not a plain unit name" ];
  };
  heal-unit-not-service = {
    module = withAgent { heal.restartableUnits = [ "pacs-bridge.socket" ]; };
    expect = [ "${opt}.heal.restartableUnits: \"pacs-bridge.socket\" is not a plain unit name" ];
  };
  heal-unit-agent-own = {
    module = withAgent { heal.restartableUnits = [ "msp-compliance-probe.service" ]; };
    expect = [ "${opt}.heal.restartableUnits: \"msp-compliance-probe.service\" names one of the agent's own units" ];
  };
  heal-unit-too-long = {
    module = withAgent { heal.restartableUnits = [ "${builtins.concatStringsSep "" (builtins.genList (_: "a") 211)}.service" ]; };
    expect = [ "${opt}.heal.restartableUnits: " "is longer than 218 characters" ];
  };
  heal-units-not-a-list = {
    module = withAgent { heal.restartableUnits = "pacs-bridge.service"; };
    expect = [ "`${opt}.heal.restartableUnits' is not of type `list of string'" ];
  };
  mtls-key-in-store = {
    module = withAgent { mtlsClientKeyFile = "/nix/store/00000000000000000000000000000000-client.key"; };
    expect = [ "services.msp-compliance.mtlsClientKeyFile points into the Nix store" ];
  };
}
