# %post ($1: 1 = install, 2 = upgrade). systemd creates the state directory
# too (StateDirectory=); this serves starts without systemd.
if [ ! -d /var/lib/mcp-gateway ]; then
    install -d -m 0750 -o mcp-gateway -g mcp-gateway /var/lib/mcp-gateway
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # As on Fedora, presets decide whether a new service is enabled.
    if [ "$1" -eq 1 ]; then
        systemctl --no-reload preset mcp-gateway.service >/dev/null 2>&1 || :
    fi
fi
exit 0
