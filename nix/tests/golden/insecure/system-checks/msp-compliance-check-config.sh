/nix/store/00000000000000000000000000000000-msp-compliance-agent-0.1.0/bin/msp-compliance-agent config validate "$configJsonPath"
/nix/store/00000000000000000000000000000000-msp-compliance-agent-0.1.0/bin/msp-compliance-agent baseline validate "$baselineJsonPath"
/nix/store/00000000000000000000000000000000-msp-compliance-agent-0.1.0/bin/msp-compliance-agent declared validate "$declaredJsonPath"
touch "$out"
