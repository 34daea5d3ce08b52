# Allowed but insecure choices: each raises a warning naming the option (summary.json).
# No evidence signing key, a key file named directly in settings (the agent user must read it),
# S3 key files in settings instead of the *File options, a plain-http S3 endpoint, and a journald
# retention this module cannot read.
{
  services.journald.extraConfig = "MaxRetentionSec=forever";
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
