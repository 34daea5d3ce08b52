# The README's minimum: enable, site and host ids, the control plane (URL, the files
# `msp-mcp enroll` wrote, the order key `msp-mcp init` printed), the evidence signing key.
# Everything else is the module's default (firewall and timesyncd as NixOS defaults them).
{
  services.msp-compliance = {
    enable = true;
    settings = {
      site_id = "clinic-042";
      host_id = "frontdesk";
      control_plane = {
        url = "https://mcp.example-msp.net:8443";
        server_ca_file = "/etc/msp-compliance/mcp/ca.pem";
        client_certificate_file = "/etc/msp-compliance/mcp/client.pem";
      };
      orders.order_public_key_files = [ "/etc/msp-compliance/mcp/order-signing.key.pub" ];
    };
    mtlsClientKeyFile = "/var/lib/msp-compliance-secrets/client.key";
    evidenceSigningKeyFile = "/var/lib/msp-compliance-secrets/evidence-signing-key";
  };
}
