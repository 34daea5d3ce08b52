#!/usr/bin/env bash
# The root tree of the "site" container: a minimal Debian bookworm with systemd, dbus, logind,
# polkit and nftables, booted with systemd-nspawn by the tests that need a real systemd
# (agent/tests/support/site.rs). See shared/research/systemd.md for what was measured.
#
#   scripts/site-root.sh build   # install the host tools if missing, build the tree once
#   scripts/site-root.sh path    # print the tree's path (built or not)
#
# The tree is cached in $MSP_SITE_ROOT_CACHE (default /var/tmp) as msp-site-root-<key>, where
# the key hashes everything the tree is made of (suite, variant, packages, the recipe's
# revision), so a change to any of them builds a new tree beside the old one instead of reusing
# a stale one. Containers boot it with --volatile=overlay, so the tree itself never changes.
# Needs root; the first build downloads about 45 MB of packages (45-66 s measured).
set -euo pipefail

suite=bookworm
variant=minbase
# libpam-systemd is in the list because it provides default-logind, which polkitd depends on;
# debootstrap does not resolve that virtual package by itself.
packages=(systemd systemd-sysv dbus libpam-systemd polkitd pkexec nftables iproute2)
# Bump when the steps in customize() change, so cached trees made by the old steps are not used.
recipe_revision=1
# The unprivileged user the agent runs as in the container, like on a site host.
agent_user=msp-compliance
# Bounded waits: another build holding the lock, and apt's own lock.
lock_wait_secs=900

key=$(printf '%s\n' "$recipe_revision" "$suite" "$variant" "${packages[@]}" | sha256sum | cut -c1-16)
cache_dir=${MSP_SITE_ROOT_CACHE:-/var/tmp}
tree=$cache_dir/msp-site-root-$key

usage() {
  echo "usage: $0 build|path" >&2
  exit 2
}

# Installs debootstrap and systemd-nspawn (package systemd-container) if either is missing.
install_host_tools() {
  if command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null \
    && command -v nsenter >/dev/null && command -v flock >/dev/null; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout="$lock_wait_secs" \
    debootstrap systemd-container util-linux >/dev/null
}

# Unmounts whatever a failed debootstrap left mounted below $1 (it mounts proc and sys into the
# target while installing), deepest first, so that removing the directory cannot reach into
# the host's /proc or /sys.
unmount_below() {
  local dir=$1 mounts
  mounts=$(awk -v prefix="$dir/" 'index($2, prefix) == 1 { print $2 }' /proc/self/mounts | sort -r)
  local mount_point
  for mount_point in $mounts; do
    umount --lazy "$mount_point" || true
  done
}

# Removes a half-built tree: unmount first, then stay on its file system.
remove_tree() {
  local dir=$1
  [ -e "$dir" ] || return 0
  unmount_below "$dir"
  rm -rf --one-file-system -- "$dir"
}

# The steps after debootstrap, run on the temporary tree.
customize() {
  local root=$1
  # debootstrap copies the build machine's hostname; the container has its own.
  echo site >"$root/etc/hostname"
  # With --console=read-only nobody can log in on the console; a getty there only adds noise
  # and slows the halt.
  ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"
  # The downloaded .debs are 43 MB the tree never needs again.
  rm -f "$root"/var/cache/apt/archives/*.deb
  # The agent's system user: no home, no login shell, and in systemd-journal so it can read the
  # journal as it does on a site host.
  chroot "$root" groupadd --system "$agent_user"
  chroot "$root" useradd --system --gid "$agent_user" --groups systemd-journal \
    --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$agent_user"
}

build() {
  install_host_tools
  if [ -d "$tree" ]; then
    return
  fi
  mkdir -p "$cache_dir"
  # One builder at a time per tree; the others wait and then find it built.
  exec 9>"$tree.lock"
  if ! flock --wait "$lock_wait_secs" 9; then
    echo "site-root: another build held $tree.lock for more than $lock_wait_secs s" >&2
    exit 1
  fi
  if [ -d "$tree" ]; then
    return
  fi
  # Temporary trees of builds that were killed: nobody else can be building now (we hold the
  # lock), so they are garbage.
  local stale
  for stale in "$tree".tmp.*; do
    if [ -e "$stale" ]; then remove_tree "$stale"; fi
  done
  local tmp
  tmp=$(mktemp -d "$tree.tmp.XXXXXX")
  # shellcheck disable=SC2064 # expand $tmp now: it is local and gone when the trap runs
  trap "remove_tree '$tmp'" EXIT
  local started=$SECONDS
  local include
  include=$(
    IFS=,
    echo "${packages[*]}"
  )
  if ! debootstrap --variant="$variant" --include="$include" "$suite" "$tmp" >"$tmp.log" 2>&1; then
    echo "site-root: debootstrap failed; its last lines:" >&2
    tail -n 30 "$tmp.log" >&2
    rm -f "$tmp.log"
    exit 1
  fi
  rm -f "$tmp.log"
  customize "$tmp"
  # The rename is the commit: a tree at $tree is always complete.
  chmod 755 "$tmp"
  mv -T "$tmp" "$tree"
  trap - EXIT
  echo "site-root: built $tree in $((SECONDS - started)) s" >&2
}

[ $# -eq 1 ] || usage
case $1 in
  build) build ;;
  path) echo "$tree" ;;
  *) usage ;;
esac
