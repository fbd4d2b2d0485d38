#!/usr/bin/env bash
# Packaging checks, the last step of the gate (scripts/test.sh). Runs as root
# on a Debian machine prepared by scripts/bootstrap.sh:
#
#   1. one release build, packed by `cargo xtask dist` (.deb, .rpm) and
#      `cargo xtask image` (distroless OCI archive) from the same binary;
#   2. lintian and rpmlint, clean (overrides carry their reasons);
#   3. the .rpm: its file list, then an install into an `rpm --root`;
#   4. the .deb for real: dpkg -i, systemd-analyze on the unit, the installed
#      gateway started as its service user with the installed config,
#      `mcp-gateway exec -- echo ok` through it, stop, dpkg -r, dpkg --purge,
#      and what is left; then the unit under a real systemd, in a
#      systemd-nspawn container of Debian 12;
#   5. the image under podman with runc: --version, then one sandboxed
#      command through the gateway inside it;
#   6. the Helm chart: helm lint --strict, helm template for the default and
#      the production-like values, kubernetes-validate on every manifest,
#      and the rendered config.toml checked by the gateway itself.
#
# Every step prints its duration; a failing check prints what it saw.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$ROOT/.tools"
START=$SECONDS
STEP_START=$SECONDS
STEP_NAME=""

step() {
  if [ -n "$STEP_NAME" ]; then
    printf '    (%s: %ss)\n' "$STEP_NAME" "$((SECONDS - STEP_START))" >&2
  fi
  STEP_NAME="$*"
  STEP_START=$SECONDS
  printf '\n--> %s\n' "$*" >&2
}
fail() {
  printf 'package-check: FAIL: %s\n' "$*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null || fail "$1 is missing: run scripts/bootstrap.sh"
}

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs the .deb, creates a system user and runs containers"
for t in lintian rpmlint rpm dpkg-deb umoci podman runc setpriv systemd-analyze systemd-nspawn mmdebstrap \
  nsenter curl python3; do need "$t"; done
[ -x "$TOOLS/bin/helm" ] || fail "$TOOLS/bin/helm is missing: run scripts/bootstrap.sh"
[ -x "$TOOLS/venv/bin/kubernetes-validate" ] || fail "kubernetes-validate is missing: run scripts/bootstrap.sh"

WORK="$(mktemp -d /tmp/package-check.XXXXXX)"
chmod 755 "$WORK"
GW_PID=""
NSPAWN_PID=""
CG_DIRS=()
CTR=""
IMAGE_ID=""
podman_() { podman --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"; }
cleanup() {
  set +e
  [ -n "$GW_PID" ] && kill -KILL "$GW_PID" 2>/dev/null
  if [ -n "$NSPAWN_PID" ]; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null
  fi
  [ -n "$CTR" ] && podman_ rm -f "$CTR" >/dev/null 2>&1
  [ -n "$IMAGE_ID" ] && podman_ rmi -f "$IMAGE_ID" >/dev/null 2>&1
  for d in "${CG_DIRS[@]}"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  if dpkg-query -W -f='${Status}' mcp-gateway 2>/dev/null | grep -q 'installed\|config-files'; then
    dpkg --purge mcp-gateway >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------
step "cargo xtask dist (one release build; .deb and .rpm)"
# PACKAGE_CHECK_NO_BUILD=1 reuses target/release/mcp-gateway (local reruns).
DIST_FLAGS=()
[ "${PACKAGE_CHECK_NO_BUILD:-}" = 1 ] && DIST_FLAGS=(--no-build)
cargo xtask dist "${DIST_FLAGS[@]}" | tee "$WORK/dist.out"
DEB="$(grep '\.deb$' "$WORK/dist.out" | tail -1)"
RPM="$(grep '\.rpm$' "$WORK/dist.out" | tail -1)"
[ -f "$DEB" ] && [ -f "$RPM" ] || fail "cargo xtask dist did not name a .deb and an .rpm"
VERSION="$(dpkg-deb -f "$DEB" Version)"
UPSTREAM_VERSION="${VERSION%-*}"
TARGET_DIR="$(dirname "$(dirname "$DEB")")"
STAGE="$TARGET_DIR/release/mcp-gateway-dist"
[ -x "$STAGE/mcp-gateway" ] || fail "no staged binary in $STAGE"

step "cargo xtask image --no-build (the same binary)"
cargo xtask image --no-build | tee "$WORK/image.out"
ARCHIVE="$(grep '\.oci\.tar$' "$WORK/image.out" | tail -1)"
[ -f "$ARCHIVE" ] || fail "cargo xtask image did not name an OCI archive"

# ---------------------------------------------------------------------------
step "lintian $(basename "$DEB")"
lintian --fail-on error,warning --no-tag-display-limit "$DEB" | tee "$WORK/lintian.out"
if grep -E '^[EW]: ' "$WORK/lintian.out"; then fail "lintian reported the above"; fi

step "rpmlint $(basename "$RPM")"
rpmlint -c packaging/rpm/rpmlint.toml "$RPM" | tee "$WORK/rpmlint.out" || true
grep -q ' 0 errors, 0 warnings' "$WORK/rpmlint.out" || fail "rpmlint is not clean (above)"

# ---------------------------------------------------------------------------
step "rpm -qlp and rpm --root install"
rpm -qlp "$RPM" >"$WORK/rpm-files"
cat "$WORK/rpm-files"
for f in /usr/bin/mcp-gateway /etc/mcp-gateway/config.toml /etc/mcp-gateway/policies/main.rego \
  /etc/mcp-gateway/sandbox-profiles/default.toml /usr/lib/systemd/system/mcp-gateway.service \
  /usr/share/man/man1/mcp-gateway.1.gz /usr/share/bash-completion/completions/mcp-gateway \
  /usr/share/zsh/site-functions/_mcp-gateway /usr/share/fish/vendor_completions.d/mcp-gateway.fish \
  /usr/share/licenses/mcp-gateway/LICENSE; do
  grep -qx "$f" "$WORK/rpm-files" || fail "$f is not in the .rpm"
done
rpm -qp --requires "$RPM" >"$WORK/rpm-requires"
for r in bubblewrap libseccomp; do
  grep -q "^$r" "$WORK/rpm-requires" || fail "the .rpm does not require $r"
done
rpm -qp --configfiles "$RPM" >"$WORK/rpm-config"
grep -qx /etc/mcp-gateway/config.toml "$WORK/rpm-config" || fail "config.toml is not %config in the .rpm"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" | grep ' /etc/mcp-gateway/config.toml$' \
  | grep -q n || fail "config.toml is not %config(noreplace)"
n="$(rpm -qp --scripts "$RPM" | grep -c 'scriptlet' || true)"
[ "$n" -eq 4 ] || fail "expected 4 scriptlets (pre, post, preun, postun) in the .rpm, found $n"
RPMROOT="$WORK/rpmroot"
mkdir -p "$RPMROOT"
# The database where RPM distributions keep it (Debian's rpm uses ~/.rpmdb).
rpmr() { rpm --root "$RPMROOT" --dbpath /var/lib/rpm "$@"; }
rpmr --initdb
# The scriptlets would run inside the (empty) root and need a shell there;
# rpmlint checked them, the .deb below exercises the same steps for real.
rpmr -i --nodeps --noscripts "$RPM"
rpmr -q mcp-gateway
[ -x "$RPMROOT/usr/bin/mcp-gateway" ] || fail "rpm --root: no /usr/bin/mcp-gateway"
"$RPMROOT/usr/bin/mcp-gateway" --version | grep -q "$UPSTREAM_VERSION" || fail "rpm --root: wrong --version"
cmp "$RPMROOT/etc/mcp-gateway/config.toml" packaging/config.toml || fail "rpm --root: config.toml differs"
rpmr -V --nodeps --nouser --nogroup mcp-gateway || fail "rpm --root -V found changed files"
rpmr -e --nodeps --noscripts mcp-gateway
left="$(find "$RPMROOT" -mindepth 1 -not -path "$RPMROOT/var/lib/rpm/*" -not -type d | head -20)"
[ -z "$left" ] || fail "rpm -e left files behind: $left"

# ---------------------------------------------------------------------------
step "dpkg -i $(basename "$DEB")"
if dpkg-query -W -f='${Status}' mcp-gateway 2>/dev/null | grep -q 'installed\|config-files'; then
  dpkg --purge mcp-gateway
fi
# The user is created by the package: start without one (a previous run's
# user is kept by purge, as Debian does).
if getent passwd mcp-gateway >/dev/null; then
  ps -u mcp-gateway -o stat= | grep -qv '^Z' && fail "processes of user mcp-gateway are running; stop them first"
  userdel mcp-gateway
fi
getent group mcp-gateway >/dev/null && groupdel mcp-gateway
dpkg -i "$DEB"
dpkg-query -W -f='${Status}\n' mcp-gateway | grep -qx 'install ok installed' || fail "not installed"
IFS=: read -r _ _ gw_uid gw_gid _ gw_home gw_shell < <(getent passwd mcp-gateway) \
  || fail "dpkg -i did not create the user mcp-gateway"
[ "$gw_uid" -lt 1000 ] || fail "mcp-gateway is not a system user (uid $gw_uid)"
[ "$gw_home" = /var/lib/mcp-gateway ] || fail "home of mcp-gateway is $gw_home"
case "$gw_shell" in */nologin|/bin/false) ;; *) fail "mcp-gateway has a login shell: $gw_shell" ;; esac
[ "$(stat -c '%U:%G %a' /var/lib/mcp-gateway)" = "mcp-gateway:mcp-gateway 750" ] \
  || fail "/var/lib/mcp-gateway is $(stat -c '%U:%G %a' /var/lib/mcp-gateway)"
dpkg-query -W -f='${Conffiles}\n' mcp-gateway >"$WORK/conffiles"
for f in /etc/mcp-gateway/config.toml /etc/mcp-gateway/policies/main.rego /etc/mcp-gateway/policies/data.json \
  /etc/mcp-gateway/sandbox-profiles/default.toml; do
  grep -q " $f " "$WORK/conffiles" || fail "$f is not a conffile"
done
for f in /usr/share/man/man1/mcp-gateway.1.gz /usr/share/bash-completion/completions/mcp-gateway \
  /usr/share/zsh/vendor-completions/_mcp-gateway /usr/share/fish/vendor_completions.d/mcp-gateway.fish \
  /usr/share/doc/mcp-gateway/copyright /usr/share/doc/mcp-gateway/changelog.Debian.gz \
  /usr/share/doc/mcp-gateway/changelog.gz /usr/lib/systemd/system/mcp-gateway.service; do
  [ -f "$f" ] || fail "$f is missing after dpkg -i"
done
/usr/bin/mcp-gateway --version | grep -q "$UPSTREAM_VERSION" || fail "wrong --version"
for dep in bubblewrap libseccomp2 adduser; do
  dpkg-deb -f "$DEB" Depends | grep -q "$dep" || fail "the .deb does not depend on $dep"
done

step "systemd-analyze verify and security on the installed unit"
UNIT=/usr/lib/systemd/system/mcp-gateway.service
systemd-analyze verify "$UNIT" >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "systemd-analyze verify"; }
[ ! -s "$WORK/verify.out" ] || { cat "$WORK/verify.out"; fail "systemd-analyze verify printed warnings"; }
systemd-analyze security --offline=true --no-pager "$UNIT" >"$WORK/security.out" 2>&1 || true
tail -1 "$WORK/security.out"
# bwrap needs user namespaces and a fresh /proc, which keeps the score from
# the best band; it is 3.0 offline ("OK"): fail on a regression past 3.5.
systemd-analyze security --offline=true --threshold=35 "$UNIT" >/dev/null 2>&1 \
  || fail "systemd-analyze security: exposure $(tail -1 "$WORK/security.out")"

step "start the installed gateway as mcp-gateway, exec -- echo ok, stop"
# What systemd's Delegate=yes gives the unit: a cgroup subtree of its own in
# every hierarchy the sandboxes use (memory, pids, cpu, and io or blkio).
CG_NAME="mcp-gateway-package-check-$$"
while IFS=: read -r _ controllers path; do
  if [ -z "$controllers" ]; then
    mnt="$(findmnt -n -t cgroup2 -o TARGET | head -1)"
  else
    case ",$controllers," in
      *,memory,*|*,pids,*|*,cpu,*|*,blkio,*|*,io,*|*,cpuacct,*) ;;
      *) continue ;;
    esac
    mnt="$(findmnt -n -t cgroup -o TARGET,OPTIONS | awk -v c="$controllers" '
      { n = split($2, o, ","); k = 0; m = split(c, w, ",")
        for (i = 1; i <= m; i++) for (j = 1; j <= n; j++) if (o[j] == w[i]) k++
        if (k == m) { print $1; exit } }')"
  fi
  [ -n "$mnt" ] || continue
  dir="$mnt${path%/}/$CG_NAME"
  mkdir "$dir"
  CG_DIRS+=("$dir")
  chown mcp-gateway:mcp-gateway "$dir" "$dir/cgroup.procs"
  for f in cgroup.subtree_control cgroup.threads tasks; do
    [ -e "$dir/$f" ] && chown mcp-gateway:mcp-gateway "$dir/$f"
  done
  if [ -z "$controllers" ]; then
    # cgroup v2: offer the controllers to the subtree, as systemd does.
    for c in memory pids cpu io; do
      grep -qw "$c" "$dir/../cgroup.subtree_control" 2>/dev/null || echo "+$c" >"$dir/../cgroup.subtree_control" 2>/dev/null || true
    done
  fi
done </proc/self/cgroup
# As the unit runs it: the service user, no capabilities (also none in the
# bounding set), no new privileges, a clean environment, the state directory
# as working directory, in the delegated cgroups. The listen port is moved
# off 8081 (as a drop-in would) so that the check never collides.
PORT="$(free_port)"
as_service() {
  for d in "${CG_DIRS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
  cd /var/lib/mcp-gateway
  exec env -i PATH=/usr/bin:/bin LANG=C.UTF-8 MCP_GATEWAY_SERVER__LISTEN="127.0.0.1:$PORT" \
    setpriv --reuid=mcp-gateway --regid=mcp-gateway --init-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all "$@"
}
# The operator's check of the host, as DEPLOY.md tells it.
(as_service /usr/bin/mcp-gateway sandbox check --config /etc/mcp-gateway/config.toml) \
  || fail "mcp-gateway sandbox check: the installed profiles cannot be enforced as mcp-gateway"
: >"$WORK/gateway.log"
(as_service /usr/bin/mcp-gateway serve --config /etc/mcp-gateway/config.toml) >>"$WORK/gateway.log" 2>&1 &
GW_PID=$!
ENDPOINT="http://127.0.0.1:$PORT"
for _ in $(seq 1 60); do
  curl -fsS "$ENDPOINT/health" >/dev/null 2>&1 && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log"; fail "the gateway exited at start-up"; }
  sleep 0.5
done
curl -fsS "$ENDPOINT/ready" || { cat "$WORK/gateway.log"; fail "GET /ready is not 200"; }
echo
[ "$(stat -c %U "/proc/$GW_PID")" = mcp-gateway ] || fail "the gateway does not run as mcp-gateway"
out="$(/usr/bin/mcp-gateway exec --endpoint "$ENDPOINT" -- echo ok 2>"$WORK/exec.err")" \
  || { cat "$WORK/exec.err" "$WORK/gateway.log"; fail "mcp-gateway exec -- echo ok failed"; }
[ "$out" = ok ] || { cat "$WORK/exec.err" "$WORK/gateway.log"; fail "exec printed '$out', not 'ok'"; }
echo "exec -- echo ok: $out"
/usr/bin/mcp-gateway exec --endpoint "$ENDPOINT" -- rm -rf / 2>/dev/null && fail "rm -rf / was not denied"
[ -s /var/lib/mcp-gateway/gateway.db ] || fail "no database in /var/lib/mcp-gateway"
[ "$(stat -c %U /var/lib/mcp-gateway/gateway.db)" = mcp-gateway ] || fail "gateway.db does not belong to mcp-gateway"
kill -TERM "$GW_PID"
for _ in $(seq 1 60); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.5; done
kill -0 "$GW_PID" 2>/dev/null && fail "the gateway did not stop within 30 s of SIGTERM"
gw_rc=0
wait "$GW_PID" || gw_rc=$?
GW_PID=""
[ "$gw_rc" -eq 0 ] || { cat "$WORK/gateway.log"; fail "the gateway exited with $gw_rc after SIGTERM"; }
# Nothing of the service user may still run. Zombies do not run: a
# sandbox's inner bwrap that outlived its parent is reparented to PID 1, and
# this machine's PID 1 reaps lazily (systemd reaps at once).
alive() { ps -u mcp-gateway -o stat=,pid=,args= 2>/dev/null | grep -v '^Z' || true; }
for _ in $(seq 1 20); do [ -z "$(alive)" ] && break; sleep 0.5; done
[ -z "$(alive)" ] || { alive; fail "processes of mcp-gateway survived the stop"; }
for d in "${CG_DIRS[@]}"; do find "$d" -depth -type d -exec rmdir {} +; done
CG_DIRS=()

step "dpkg -r, dpkg --purge, and what is left"
dpkg -r mcp-gateway
[ ! -e /usr/bin/mcp-gateway ] || fail "dpkg -r left /usr/bin/mcp-gateway"
[ ! -e /usr/lib/systemd/system/mcp-gateway.service ] || fail "dpkg -r left the unit"
[ -f /etc/mcp-gateway/config.toml ] || fail "dpkg -r removed the configuration (it keeps conffiles)"
[ -d /var/lib/mcp-gateway ] || fail "dpkg -r removed the data (only purge does)"
dpkg-query -W -f='${Status}\n' mcp-gateway | grep -qx 'deinstall ok config-files' || fail "unexpected state after dpkg -r"
dpkg --purge mcp-gateway
dpkg-query -W mcp-gateway >/dev/null 2>&1 && fail "dpkg still knows mcp-gateway after purge"
left="$(find /etc /usr /var /lib -xdev \( -path /var/lib/containers -o -path /var/cache \
  -o -path /var/tmp -o -path /var/log \) -prune -o -name '*mcp-gateway*' -print 2>/dev/null || true)"
[ -z "$left" ] || fail "dpkg --purge left: $left"
[ -z "$(alive)" ] || { alive; fail "processes of mcp-gateway are still running"; }
# What is left on purpose: the system user and group (Debian keeps them so
# that their uid is never reused for files the gateway wrote elsewhere).
getent passwd mcp-gateway >/dev/null || fail "purge removed the system user (it should stay)"
echo "left after purge: user and group mcp-gateway (by design); nothing else"
userdel mcp-gateway
getent group mcp-gateway >/dev/null && groupdel mcp-gateway

# ---------------------------------------------------------------------------
step "the unit under systemd: the .deb in a systemd-nspawn container"
# A minimal Debian 12 with systemd (mmdebstrap, cached in the target
# directory), the .deb installed into it, booted with systemd-nspawn: the
# real unit, hardening included, started by systemd.
NSPAWN_CACHE="$TARGET_DIR/package-check/debian12-systemd.tar"
if [ ! -f "$NSPAWN_CACHE" ]; then
  mkdir -p "$(dirname "$NSPAWN_CACHE")"
  mmdebstrap --quiet --variant=minbase \
    --include=systemd,systemd-sysv,dbus,bubblewrap,libseccomp2,adduser,curl,ca-certificates \
    bookworm "${NSPAWN_CACHE%.tar}.partial.tar" http://deb.debian.org/debian
  mv "${NSPAWN_CACHE%.tar}.partial.tar" "$NSPAWN_CACHE"
fi
NSROOT="$WORK/nspawn-root"
mkdir -p "$NSROOT"
tar -C "$NSROOT" -xpf "$NSPAWN_CACHE"
cp "$DEB" "$NSROOT/tmp/mcp-gateway.deb"
chroot "$NSROOT" dpkg -i /tmp/mcp-gateway.deb >/dev/null
# This machine's cgroup v1 controllers are read-only inside nspawn, so the
# container's copy of the profiles accepts rlimits only; per-task cgroups
# were exercised above. Everything else is the package as shipped.
for f in "$NSROOT"/etc/mcp-gateway/sandbox-profiles/*.toml; do
  sed -i 's/^\[limits\]$/[limits]\nrequire_cgroup = false/' "$f"
done
# /proc/sys must be writable as on a host (bwrap --disable-userns writes
# user.max_user_namespaces in the sandbox's user namespace).
SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 systemd-nspawn --quiet -D "$NSROOT" --private-network \
  -M "mcp-pc-$$" --register=no --keep-unit --console=passive -b >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!
LEADER=""
for _ in $(seq 1 60); do
  LEADER="$(pgrep -P "$NSPAWN_PID" -x systemd || true)"
  [ -n "$LEADER" ] && break
  sleep 0.5
done
[ -n "$LEADER" ] || { cat "$WORK/nspawn.log"; fail "systemd did not start in the nspawn container"; }
in_ct() { nsenter -t "$LEADER" -a "$@"; }
state="$(timeout 90 nsenter -t "$LEADER" -a systemctl is-system-running --wait || true)"
echo "container: system $state"
in_ct systemctl is-active --quiet mcp-gateway \
  || { in_ct journalctl -u mcp-gateway --no-pager | tail -20; fail "the unit is not active after boot"; }
# Type=exec: active once started; the listener follows the sandbox self-check.
for _ in $(seq 1 60); do in_ct curl -fsS http://127.0.0.1:8081/ready >/dev/null 2>&1 && break; sleep 0.5; done
out="$(in_ct /usr/bin/mcp-gateway exec -- echo ok 2>&1)" || true
[ "$out" = ok ] || { in_ct journalctl -u mcp-gateway --no-pager | tail -20; fail "exec through the unit printed '$out'"; }
echo "unit: exec -- echo ok: $out"
[ "$(in_ct stat -c %U /proc/"$(in_ct systemctl show -p MainPID --value mcp-gateway)")" = mcp-gateway ] \
  || fail "the unit's gateway does not run as mcp-gateway"
in_ct systemd-analyze security --no-pager mcp-gateway | tail -1
in_ct systemctl reload mcp-gateway \
  || { in_ct journalctl -u mcp-gateway --no-pager | tail -20; fail "systemctl reload mcp-gateway failed"; }
sleep 0.5
in_ct systemctl is-active --quiet mcp-gateway || fail "the unit died on reload (SIGHUP)"
[ "$(in_ct /usr/bin/mcp-gateway exec -- echo ok 2>/dev/null)" = ok ] || fail "exec after reload"
# Stop with a task running: the gateway drains (KillMode=mixed), exits 0,
# and nothing of the unit is left.
in_ct /usr/bin/mcp-gateway exec -- sleep 2 >/dev/null 2>&1 &
EXEC_PID=$!
sleep 0.7
in_ct systemctl stop mcp-gateway
wait "$EXEC_PID" || true
[ "$(in_ct systemctl show -p Result --value mcp-gateway)" = success ] \
  || { in_ct journalctl -u mcp-gateway --no-pager | tail -20; fail "the unit did not stop cleanly"; }
[ "$(in_ct systemctl show -p ExecMainStatus --value mcp-gateway)" = 0 ] || fail "the gateway exited non-zero on stop"
# (No procps in the minimal system: scan /proc.)
left="$(in_ct sh -c 'for p in /proc/[0-9]*; do [ "$(stat -c %U "$p" 2>/dev/null)" = mcp-gateway ] && echo "$p"; done; true')"
[ -z "$left" ] || fail "processes of the unit survived the stop: $left"
[ "$(in_ct sh -c 'ls -d /proc/[0-9]* | wc -l')" -gt 3 ] || fail "cannot list the container's processes"
kill -TERM "$NSPAWN_PID"
for _ in $(seq 1 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
kill -KILL "$NSPAWN_PID" 2>/dev/null || true
wait "$NSPAWN_PID" 2>/dev/null || true
NSPAWN_PID=""

# ---------------------------------------------------------------------------
step "the OCI image under podman --runtime runc"
IMAGE_ID="$(podman_ pull -q "oci-archive:$ARCHIVE")"
podman_ image inspect --format 'image {{.Id}}: {{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}' "$IMAGE_ID"
[ "$(podman_ image inspect --format '{{.Config.User}}' "$IMAGE_ID")" = 65532:65532 ] || fail "the image does not run as 65532"
# What the container needs for bubblewrap inside (docs/operations/DEPLOY.md):
# seccomp and AppArmor that allow user namespaces and mount, and an unmasked
# /proc so that bwrap may mount a fresh one. Nothing else: no capabilities,
# no new privileges, a read-only root.
# Podman's default ulimits exceed what this machine allows the runtime to set
# (runc fails with "error setting rlimit"), hence explicit ones below the
# hard limits.
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ] && nofile=16384
RUN_OPTS=(--security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt unmask=ALL
  --security-opt no-new-privileges --cap-drop ALL --read-only
  --mount type=tmpfs,destination=/var/lib/mcp-gateway,tmpfs-size=64m,tmpfs-mode=0750,U=true
  --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096 --network none)
v="$(podman_ run --rm "${RUN_OPTS[@]}" "$IMAGE_ID" --version)"
echo "$v"
echo "$v" | grep -q "$UPSTREAM_VERSION" || fail "the image's --version says '$v'"
if podman_ run --rm "${RUN_OPTS[@]}" --entrypoint /bin/sh "$IMAGE_ID" -c true >/dev/null 2>&1; then
  fail "the image has a shell"
fi
CTR="mcp-gateway-package-check-$$"
podman_ run -d --name "$CTR" "${RUN_OPTS[@]}" "$IMAGE_ID" >/dev/null
ok=""
for _ in $(seq 1 60); do
  if podman_ exec "$CTR" /usr/bin/mcp-gateway exec -- true >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.5
done
out="$(podman_ exec "$CTR" /usr/bin/mcp-gateway exec -- echo ok 2>"$WORK/exec.err")" || true
if [ -z "$ok" ] || [ "$out" != ok ]; then
  cat "$WORK/exec.err"
  podman_ logs "$CTR" | tail -30
  fail "a sandboxed echo in the container printed '$out'"
fi
echo "container: exec -- echo ok: $out"
podman_ stop -t 20 "$CTR" >/dev/null
rc="$(podman_ inspect --format '{{.State.ExitCode}}' "$CTR")"
[ "$rc" = 0 ] || { podman_ logs "$CTR" | tail -30; fail "the container exited with $rc after SIGTERM"; }
podman_ rm "$CTR" >/dev/null
CTR=""
podman_ rmi -f "$IMAGE_ID" >/dev/null
IMAGE_ID=""
echo "OCI archive: $(du -h "$ARCHIVE" | cut -f1) ($ARCHIVE)"

# ---------------------------------------------------------------------------
step "helm lint --strict, helm template, kubernetes-validate"
HELM="$TOOLS/bin/helm"
CHART=deploy/helm/mcp-gateway
PROD=deploy/helm/values-production.yaml
# The default values carry no credentials, so they render only with the
# explicit no-auth acknowledgement (or keys/JWT settings).
"$HELM" lint --strict "$CHART" --set auth.insecureNoAuth=true
"$HELM" lint --strict "$CHART" -f "$PROD"
"$HELM" template mcp-gateway "$CHART" --namespace mcp-gateway --set auth.insecureNoAuth=true >"$WORK/default.yaml"
"$HELM" template mcp-gateway "$CHART" --namespace mcp-gateway >/dev/null 2>&1 \
  && fail "the chart rendered a pod-network listener without authentication"
"$HELM" template x "$CHART" --set auth.jwt.issuer=https://login.example.com --set auth.jwt.audience=mcp \
  --set auth.jwt.secretName=jwt >"$WORK/jwt.yaml"
grep -q 'hs256_secret_env = "MCP_GATEWAY_JWT_HS256_SECRET"' "$WORK/jwt.yaml" \
  || fail "auth.jwt did not render [auth.jwt]"
"$HELM" template mcp-gateway "$CHART" --namespace mcp-gateway -f "$PROD" >"$WORK/production.yaml"
# Invalid combinations must not render.
"$HELM" template x "$CHART" --set persistence.enabled=true --set replicaCount=2 >/dev/null 2>&1 \
  && fail "persistence with two replicas rendered"
"$HELM" template x "$CHART" --set image.digest=latest >/dev/null 2>&1 \
  && fail "values.schema.json accepted a bad digest"
for k8s in 1.30.0 1.37.0; do
  for f in "$WORK/default.yaml" "$WORK/production.yaml"; do
    "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$k8s" "$f" \
      || fail "kubernetes-validate ($k8s) rejected $(basename "$f")"
  done
done
grep -q '^kind: ServiceMonitor' "$WORK/production.yaml" || fail "the production values render no ServiceMonitor"
for kind in Deployment Service ConfigMap ServiceAccount PodDisruptionBudget NetworkPolicy HorizontalPodAutoscaler; do
  grep -q "^kind: $kind\$" "$WORK/production.yaml" || fail "the production values render no $kind"
done
# The gateway itself must accept the config (and policies) the chart renders.
"$TOOLS/venv/bin/python" - "$WORK" <<'PY'
import os, sys, yaml
work = sys.argv[1]
for name in ("default", "production"):
    out = os.path.join(work, name)
    os.makedirs(os.path.join(out, "policies"), exist_ok=True)
    for doc in yaml.safe_load_all(open(os.path.join(work, name + ".yaml"))):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, value in (doc.get("data") or {}).items():
            if key == "config.toml":
                open(os.path.join(out, "config.toml"), "w").write(value)
            else:
                open(os.path.join(out, "policies", key), "w").write(value)
PY
for name in default production; do
  policies="$ROOT/policies"
  [ -n "$(ls "$WORK/$name/policies")" ] && policies="$WORK/$name/policies"
  "$STAGE/mcp-gateway" check-config --config "$WORK/$name/config.toml" --data-dir "$WORK/$name/data" \
    --policies "$policies" --profiles "$TARGET_DIR/image/bundle/rootfs/etc/mcp-gateway/sandbox-profiles" \
    || fail "the gateway rejects the config rendered from the $name values"
done

step "done"
printf 'package-check: all packaging checks passed in %ss\n' "$((SECONDS - START))" >&2
