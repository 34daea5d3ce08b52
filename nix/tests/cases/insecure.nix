# Allowed but insecure choices: each raises a warning naming the option (summary.json).
# No evidence signing key, a key file named directly in settings (the agent user must read it),
# S3 key files in settings instead of the *File options, a plain-http S3 endpoint, a journald
# retention this module cannot read, and backup jobs a heal cannot name (a restic and a borg job
# of the same name, a name outside the heal grammar).
{
  services.journald.extraConfig = "MaxRetentionSec=forever";
  services.restic.backups.nas = { repository = "/mnt/nas/restic"; passwordFile = "/etc/restic/nas-password"; };
  services.restic.backups.".offsite" = { repository = "sftp:backup@offsite.example:/restic"; passwordFile = "/etc/restic/offsite-password"; };
  services.borgbackup.jobs.nas = { repo = "/mnt/nas/borg"; paths = [ "/srv/scans" ]; };
  services.msp-compliance = {
    enable = true;
    settings = {
      site_id = "clinic-042";
      host_id = "lab-pc";
      evidence.phi_token_key_file = "/var/lib/msp-compliance/phi-token-key";
      outbox.s3 = {
        endpoint = "http://minio.clinic.lan:9000";
        bucket = "evidence";
        access_key_id_file = "/var/lib/msp-compliance/s3-access-key-id";
        secret_access_key_file = "/var/lib/msp-compliance/s3-secret-access-key";
      };
    };
  };
}
