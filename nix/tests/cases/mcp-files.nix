# The control plane on a privileged port with its certificates given as files, the port opened
# in the firewall.
{
  services.msp-mcp = {
    enable = true;
    listen = "0.0.0.0:443";
    openFirewall = true;
    tls = {
      certificateFile = "/etc/msp-mcp/server.pem";
      keyFile = "/var/lib/msp-mcp-secrets/server.key";
      clientCaFile = "/etc/msp-mcp/agents-ca.pem";
    };
  };
}
