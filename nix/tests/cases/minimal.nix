# The README's minimum: enable, site and host ids, the evidence signing key. Everything else
# is the module's default (firewall and timesyncd as NixOS defaults them).
{
  services.msp-compliance = {
    enable = true;
    settings = {
      site_id = "clinic-042";
      host_id = "frontdesk";
    };
    evidenceSigningKeyFile = "/var/lib/msp-compliance-secrets/evidence-signing-key";
  };
}
