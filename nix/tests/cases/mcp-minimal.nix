# The control plane with defaults: loopback listener, certificates made by `msp-mcp init`.
{
  services.msp-mcp.enable = true;
}
