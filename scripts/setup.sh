#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prepare a fresh Debian 12/13 machine (as root) to build, run and test ccxdp.
# Idempotent: every step checks before it acts, so running it twice is safe and fast.
#
#   scripts/setup.sh            # packages, venv in .venv, bpffs, kernel headers for bcc
#
# Environment: CCXDP_VENV overrides the venv path (default: <repo>/.venv).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CCXDP_VENV:-$repo/.venv}
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh must run as root (it installs packages and mounts bpffs)" >&2
	exit 1
fi

# python3-bpfcc is bcc's Python binding for the system python (the PyPI "bcc" is unrelated);
# unbound, dig, kdig are the real resolver and clients of the end-to-end tests; gcc builds
# the small native helper that hashes and sorts a million feed names (ccxdp/datapath/bulk.py);
# vagrant (it brings ruby) checks vagrant/Vagrantfile, though no VM can boot here; systemd
# brings systemd-analyze, which checks the unit file; dnsperf and python3-matplotlib are for
# scripts/bench.sh (the load generator, the chart); man-db and groff-base show ccxdp(8);
# postgresql is the fleet's hits store (the tests start their own servers with its initdb),
# libpq5 is the client library psycopg loads; openssl makes the HTTPS feed tests' certificates;
# knot and bind9 are the RPZ primaries that the zone-transfer tests and scripts/bench_xfr.py
# start on loopback (AXFR, IXFR, NOTIFY, TSIG), bind9-utils brings nsupdate and tsig-keygen
# for them: their services stay off.
packages=(python3-bpfcc libbpf1 python3-venv python3-pip iproute2 unbound bind9-dnsutils
	knot-dnsutils bpftool kmod procps shellcheck gcc libc6-dev vagrant systemd dnsperf
	python3-matplotlib man-db groff-base postgresql libpq5 openssl knot bind9 bind9-utils)
# Packages whose own service must not run here: the tests start private servers instead.
services=(knot.service named.service)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# The tests start their own unbound inside namespaces; keep the package's service off.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# policy-rc.d keeps a service from starting during apt only; disable (and stop) the units
# too, so that a reboot or an earlier install without it leaves no knotd or named running.
if command -v systemctl >/dev/null; then
	for unit in "${services[@]}"; do
		if systemctl is-enabled -q "$unit" 2>/dev/null || systemctl is-active -q "$unit" 2>/dev/null; then
			say "disabling $unit (the tests start their own servers)"
			systemctl disable --now -q "$unit" 2>/dev/null || true
		fi
	done
fi

# bcc compiles against kernel headers. Use the running kernel's when the machine has them;
# otherwise merge Debian's generic header trees (…-common and …-<arch>) into one folder.
if [ ! -e "/lib/modules/$(uname -r)/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
	arch=$(dpkg --print-architecture)
	if ! dpkg-query -W -f='${Status}' "linux-headers-$arch" 2>/dev/null | grep -q 'install ok installed'; then
		say "no headers for kernel $(uname -r); installing linux-headers-$arch as a fallback"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"linux-headers-$arch" >/dev/null
	fi
fi

if [ ! -x "$venv/bin/python" ]; then
	say "creating venv $venv (system site packages, so bcc is importable)"
	/usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.ccxdp-installed"
if [ ! -e "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
	say "installing ccxdp and its test extras into the venv"
	"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "${repo}[test]"
	touch "$stamp"
fi

# The man page, generated from the commands' --help (scripts/gen_docs.py): 'man ccxdp'; the
# index (mandb) is for whatis and apropos.
manpage=/usr/local/share/man/man8/ccxdp.8
if ! cmp -s "$repo/docs/ccxdp.8" "$manpage"; then
	install -D -m 644 "$repo/docs/ccxdp.8" "$manpage"
	mandb -q 2>/dev/null || true
fi

# Merge the fallback header tree (no-op when the kernel's own headers exist).
"$venv/bin/python" -m ccxdp.datapath.kernel_headers prepare

if ! mountpoint -q /sys/fs/bpf; then
	say "mounting bpffs on /sys/fs/bpf"
	mount -t bpf bpf /sys/fs/bpf
fi

"$venv/bin/python" -c 'import bcc' || {
	echo "bcc is not importable from $venv" >&2
	exit 1
}
say "ready: $venv/bin/ccxdp"
