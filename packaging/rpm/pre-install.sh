# %pre: the service user. The gateway and every sandbox it starts run as
# this user (bwrap through unprivileged user namespaces).
getent group mcp-gateway >/dev/null || groupadd -r mcp-gateway
getent passwd mcp-gateway >/dev/null || \
    useradd -r -g mcp-gateway -d /var/lib/mcp-gateway -M -s /sbin/nologin \
        -c "MCP security gateway" mcp-gateway
exit 0
