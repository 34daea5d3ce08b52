# A clinic site host with everything the module reads or writes in use: nftables firewall with
# per-interface ports, journald retention, locked audit rules, restic and borg jobs, LUKS, random
# swap encryption, tmpfs /tmp, flake autoUpgrade, ClamAV, chrony; the agent with every secret,
# the control plane with two order keys and a maintenance window, both outbox sinks, a changed threshold, a waiver, a free-form setting,
# and two of the clinic's own services that heals may restart (added to the module's daemons).
{ lib, ... }:
{
  networking.nftables.enable = true;
  networking.firewall = {
    allowedTCPPorts = [ 22 443 ];
    allowedUDPPortRanges = [{ from = 60000; to = 60010; }];
    interfaces.wg0.allowedTCPPorts = [ 5432 ];
  };
  services.journald.extraConfig = ''
    SystemMaxUse=8G
    MaxRetentionSec=1year
  '';
  services.journald.upload.enable = true;
  security.auditd.enable = true;
  security.audit = {
    enable = "lock";
    rules = [
      "-w /etc/passwd -p wa -k identity"
      "-a always,exit -F arch=b64 -S adjtimex,settimeofday,clock_settime -k time-change"
    ];
  };
  services.restic.backups.ehr = {
    repositoryFile = "/etc/restic/ehr-repository";
    passwordFile = "/etc/restic/ehr-password";
    paths = [ "/var/lib/ehr" ];
  };
  services.borgbackup.jobs.scans = {
    repo = "ssh://backup@nas.clinic.lan/./scans";
    paths = [ "/srv/scans" ];
    startAt = [ ];
  };
  boot.initrd.luks.devices.cryptroot.device = "/dev/disk/by-uuid/0b7d4c2e-6f10-4b8e-9c1a-2f3c4d5e6f70";
  boot.initrd.luks.devices.cryptdata = {
    device = "/dev/nvme0n1p3";
    keyFile = "/dev/disk/by-id/usb-token-part1";
  };
  swapDevices = [{ device = "/dev/nvme0n1p2"; randomEncryption.enable = true; }];
  boot.tmp.useTmpfs = true;
  system.autoUpgrade = {
    enable = true;
    flake = "git+https://git.msp.example/sites/clinic-042#frontdesk";
    operation = "boot";
    allowReboot = true;
  };
  services.clamav.daemon.enable = true;
  services.clamav.updater.enable = true;
  services.timesyncd.enable = false;
  services.chrony.enable = true;

  services.msp-compliance = {
    enable = true;
    settings = {
      site_id = "clinic-042";
      host_id = "frontdesk";
      poll_interval_secs = 900;
      commands.timeout_secs = 60;
      control_plane = {
        url = "https://mcp.example-msp.net:8443";
        server_ca_file = "/etc/msp-compliance/mcp/ca.pem";
        client_certificate_file = "/etc/msp-compliance/mcp/client.pem";
        request_timeout_secs = 20;
      };
      orders = {
        order_public_key_files = [
          "/etc/msp-compliance/mcp/order-signing.key.pub"
          "/etc/msp-compliance/mcp/order-signing-next.key.pub"
        ];
        maintenance_window = "22:00-04:00";
        timezone = "America/New_York";
        max_actions_per_hour = 4;
        cooldown_secs.run-checks = 120;
      };
      outbox = {
        directory.path = "/srv/evidence-outbox";
        s3 = {
          endpoint = "https://s3.eu-central-1.amazonaws.com";
          bucket = "msp-evidence-clinic-042";
          region = "eu-central-1";
        };
      };
    };
    evidenceSigningKeyFile = "/var/lib/msp-compliance-secrets/evidence-signing-key";
    phiTokenKeyFile = "/var/lib/msp-compliance-secrets/phi-token-key";
    s3AccessKeyIdFile = "/run/secrets/s3-access-key-id";
    s3SecretAccessKeyFile = "/run/secrets/s3-secret-access-key";
    mtlsClientKeyFile = "/var/lib/msp-compliance-secrets/client.key";
    heal.restartableUnits = [ "pacs-bridge.service" "hl7-listener.service" ];
    baseline = {
      version = "2026.11.0-clinic-042.1";
      checks.firewall.allowed_tcp_ports = [ 22 443 ];
      checks.backup.rpo_warn_hours = lib.mkForce 30;
      waivers = [{
        check = "encryption";
        justification = "Swap partition encrypted by the hypervisor datastore (vSphere VM encryption)";
        ticket = "SEC-1234";
        expires = "2027-03-31";
      }];
    };
  };
}
