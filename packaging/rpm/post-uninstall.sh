# %postun ($1: 0 = erase, 1 = upgrade): restart a running gateway on
# upgrade (SIGTERM drains it first). Erase keeps /var/lib/mcp-gateway (the
# database and the decision log) and the user: remove them by hand once the
# data is no longer needed.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart mcp-gateway.service >/dev/null 2>&1 || :
    fi
fi
if [ "$1" -eq 0 ]; then
    # The package's configuration directories (cargo-generate-rpm cannot
    # list directories); kept when they hold .rpmsave files or your own.
    rmdir /etc/mcp-gateway/policies /etc/mcp-gateway/sandbox-profiles /etc/mcp-gateway 2>/dev/null || :
fi
exit 0
