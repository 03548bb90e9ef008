#!/usr/bin/env bash
# Builds the VM pods' own guest kernel: Debian's kernel source
# (linux-source-X.Y) with stage1-vm/kernel/patches/*.patch applied,
# configured as `make tinyconfig` plus the fragment
# stage1-vm/kernel/pod-guest.config, everything built in, no modules, as
# Firecracker and Kata ship theirs. Idempotent and cached: the result goes to
# /usr/lib/pod/guest/kernel-<key>/vmlinux, where <key> hashes the fragment,
# the patches, this script and the source package's version, and
# /usr/lib/pod/guest/pod-kernel points at the current one. A key that is
# built already is not built again.
#
#   scripts/build-guest-kernel.sh          # as root; JOBS (default: nproc)
#
# stage0 boots it when it is there (`vm.kernel: auto`) and Debian's kernel
# and modules otherwise; see README, VM pods.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "build-guest-kernel.sh needs root (it installs packages and writes /usr/lib/pod)" >&2; exit 1; }
guest=${POD_GUEST_DIR:-/usr/lib/pod/guest}
fragment=stage1-vm/kernel/pod-guest.config
jobs=${JOBS:-$(nproc)}

# Patches applied over the source, in name order (stage1-vm/kernel/patches,
# each explaining itself in its header), as Kata carries its own.
patches=(stage1-vm/kernel/patches/*.patch)
[ -e "${patches[0]}" ] || patches=()

# Debian 12's kernel source package (the newest linux-source-X.Y apt knows).
pkg=$(apt-cache search --names-only '^linux-source-[0-9]+\.[0-9]+$' | awk '{print $1}' | sort -V | tail -1)
[ -n "$pkg" ] || { echo "no linux-source-X.Y package in apt's lists (apt-get update?)" >&2; exit 1; }
tools=(bc bison flex libelf-dev xz-utils make gcc libc6-dev patch)
missing=()
for p in "$pkg" "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
version=$(dpkg-query -W -f='${Version}' "$pkg")
key=$( { echo "$pkg $version"; cat "$fragment" "$0" "${patches[@]}"; } | sha256sum | cut -c1-16)
out=$guest/kernel-$key
if [ -f "$out/vmlinux" ]; then
  ln -sfn "kernel-$key" "$guest/pod-kernel.tmp" && mv -T "$guest/pod-kernel.tmp" "$guest/pod-kernel"
  exit 0
fi

tarball=$(ls /usr/src/"$pkg".tar.* 2>/dev/null | head -1)
[ -n "$tarball" ] || { echo "$pkg is installed but /usr/src/$pkg.tar.* is missing" >&2; exit 1; }
echo "building the VM guest kernel ($pkg $version, $jobs jobs) -> $out"
tmp=$(mktemp -d /var/tmp/pod-guest-kernel.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
started=$(date +%s)
tar -xf "$tarball" -C "$tmp"
src=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
log=$tmp/build.log
for p in "${patches[@]}"; do
  if ! patch -d "$src" -p1 --batch --forward <"$p" >>"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "$p does not apply to $pkg $version (log above)" >&2
    exit 1
  fi
done
make -C "$src" ARCH=x86_64 tinyconfig >>"$log" 2>&1
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$fragment" >>"$log" 2>&1
make -C "$src" ARCH=x86_64 olddefconfig >>"$log" 2>&1
# Every option the fragment sets must have survived (a dependency not met
# drops it silently).
lost=()
while IFS= read -r line; do
  case $line in
    CONFIG_*=*) grep -qxF "$line" "$src/.config" || lost+=("$line") ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
      ! grep -q "^$opt=" "$src/.config" || lost+=("$line") ;;
  esac
done < "$fragment"
if [ ${#lost[@]} -gt 0 ]; then
  echo "the kernel configuration dropped what $fragment asks for: ${lost[*]}" >&2
  exit 1
fi
if ! make -C "$src" ARCH=x86_64 -j"$jobs" vmlinux >>"$log" 2>&1; then
  tail -30 "$log" >&2
  echo "the guest kernel build failed (log above)" >&2
  exit 1
fi
mkdir -p "$guest"
rm -rf "$out.tmp"
mkdir "$out.tmp"
cp "$src/vmlinux" "$out.tmp/vmlinux"
cp "$src/.config" "$out.tmp/config"
echo "$pkg $version" > "$out.tmp/version"
for p in "${patches[@]}"; do basename "$p"; done > "$out.tmp/patches"
mv -T "$out.tmp" "$out"
ln -sfn "kernel-$key" "$guest/pod-kernel.tmp" && mv -T "$guest/pod-kernel.tmp" "$guest/pod-kernel"
# Kernels of older keys: nothing boots them any more.
for old in "$guest"/kernel-*; do
  [ "$old" = "$out" ] || rm -rf "$old"
done
echo "built the VM guest kernel in $(( $(date +%s) - started )) s: $out/vmlinux ($(du -k "$out/vmlinux" | cut -f1) kB)"
