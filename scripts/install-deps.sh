#!/usr/bin/env bash
# Installs the Debian packages pod's build, tests and demo need. Idempotent:
# installs only what is missing, refreshes apt's lists only when needed.
set -euo pipefail

packages=(
  ca-certificates   # https fetches
  zstd gzip tar     # image compression, the benchmark's peer pipeline
  openssl           # the tests' throwaway CA
  libssl-dev pkg-config  # stage0 links libcrypto for SHA-512 (stage0/src/sha512.rs)
  python3           # the tests' https server
  appc-spec         # actool: appc's own tool, for the interoperability test
  hyperfine crun    # benchmarks (crun: the peer of bench/run.sh)
  wrk               # bench/ports.sh (HTTP load against published ports)
  tini              # bench/initrss.sh: tini-static, the peer of pod-init's RSS
  apt-utils         # apt-get download for `pod image build` from packages
  containernetworking-plugins  # CNI: bridge, host-local, portmap
  iptables iproute2 # portmap's rules; tests remove their bridges with ip(8)
  nftables          # tests list the default network's per-pod tables (pod itself uses netlink)
  curl              # the demo and tests talk to pods
  busybox-static    # stage2-init's tests build app rootfs from /bin/busybox
  qemu-system-x86   # VM pods (stage1-vm); 9p and user-mode networking are built in
  docker-registry   # OCI tests: a real registry (distribution) on loopback
  skopeo umoci      # OCI tests: build, push and inspect images without Docker
  systemd dbus systemd-container  # the systemd guest tests (tests/tests/common/sdguest.rs): PID 1, the bus, machined
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# `pod image build` resolves packages through apt's lists: make sure they exist.
if [ ${#missing[@]} -gt 0 ] || ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The guest kernels of VM pods, in /usr/lib/pod/guest. Debian's own,
# unpacked (not installed: the host keeps its kernel and boot loader
# untouched) as vmlinuz, modules/ and version: the fallback, and the
# systemd guest tests' kernel.
guest=/usr/lib/pod/guest
if [ ! -f "$guest/vmlinuz" ] || [ ! -d "$guest/modules/kernel" ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  echo "installing the VM guest kernel: $pkg -> $guest"
  tmp=$(mktemp -d /var/tmp/pod-guest.XXXXXX)
  (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null && dpkg-deb -x ./*.deb x)
  ver=$(ls "$tmp/x/lib/modules")
  mkdir -p "$guest"
  rm -rf "$guest/modules" "$guest/vmlinuz" "$guest/version"
  mv "$tmp/x/lib/modules/$ver" "$guest/modules"
  echo "$ver" > "$guest/version"
  mv "$tmp/x/boot/vmlinuz-$ver" "$guest/vmlinuz"
  rm -rf "$tmp"
fi
# pod's own guest kernel (stage1-vm/kernel/pod-guest.config), which VM pods
# boot when it is there: built once per configuration and source version,
# a few minutes on 2 cores. Without it VM pods boot Debian's, saying so
# nowhere but in their speed, so a failed build is loud here.
if ! bash "$(dirname "$0")/build-guest-kernel.sh"; then
  echo "WARNING: pod's own guest kernel could not be built: VM pods boot Debian's kernel" >&2
fi

# critest's busybox stand-ins (tests/tests/critest/images.rs): Debian's
# dynamically linked busybox, unpacked (it conflicts with busybox-static,
# which the other tests use) into /usr/local/lib/pod-test/busybox. Its sh
# looks commands up in PATH as the busybox images' does; busybox-static's
# runs its applets itself, whatever PATH holds. Never fails: without it the
# stand-ins use busybox-static and critest's MaskedPaths spec is skipped.
dynbb=/usr/local/lib/pod-test/busybox
if [ ! -x "$dynbb/busybox" ]; then
  tmp=$(mktemp -d /var/tmp/pod-busybox.XXXXXX)
  if (cd "$tmp" && apt-get download -qq busybox 2>/dev/null && dpkg-deb -x ./*.deb x) && [ -x "$tmp/x/bin/busybox" ]; then
    mkdir -p "$dynbb"
    install -m 0755 "$tmp/x/bin/busybox" "$dynbb/busybox"
    echo "installed Debian's dynamic busybox in $dynbb (critest's stand-ins)"
  else
    echo "could not unpack Debian's busybox package: critest's MaskedPaths spec will be skipped" >&2
  fi
  rm -rf "$tmp"
fi
# Debian's docker-registry package starts a registry on *:5000 where systemd
# runs; the tests start their own on 127.0.0.1 and want no other.
if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# cosign, the OCI tests' signer, from its Go module (Go is at /usr/local/go;
# Debian's golang is not installed). Never fails: without it those tests SKIP.
bash "$(dirname "$0")/build-cosign.sh"
# crictl, the CRI tests' client, and critest, the CRI validation suite,
# likewise (cri-tools v1.37.0); without them tests/tests/cri.rs and
# tests/tests/critest.rs SKIP.
bash "$(dirname "$0")/build-cri-tools.sh"
# The ACE validator, appc's executor conformance suite (appc/spec v0.8.11),
# and its two images; without them tests/tests/ace.rs SKIPs.
bash "$(dirname "$0")/build-ace-validator.sh"

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
