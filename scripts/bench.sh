#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The benchmarks of docs/benchmarks.md in one command, as root, after scripts/setup.sh: per-packet
# cost through BPF_PROG_TEST_RUN, feed import and kernel memory, collection, and end to end
# under dnsperf in namespaces (ccxdp against Unbound RPZ, with and without ccxdp, the load
# generator's ceiling, and in place the 0- and 1-read floors and a Zipf query mix beside the
# uniform one). Prints a table against the targets, writes the figures as JSON and draws one
# PNG chart. scripts/bench/compare.py sets two builds, or two list sizes, side by side. A few minutes; --smoke runs it on tiny sizes in seconds.
#
#   scripts/bench.sh [--smoke] [--out DIR]     (default DIR: docs/bench)
#
# Its traffic stays inside the namespaces it makes (ccxdp/lab/); its namespaces, pins,
# processes and the kernel.bpf_stats_enabled sysctl are removed or restored on any exit.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CCXDP_VENV:-$repo/.venv}
py=$venv/bin/python
out=$repo/docs/bench
smoke=0
while [ $# -gt 0 ]; do
	case $1 in
	--smoke) smoke=1 ;;
	--out)
		out=$2
		shift
		;;
	*)
		echo "usage: bench.sh [--smoke] [--out DIR]" >&2
		exit 2
		;;
	esac
	shift
done
if [ "$(id -u)" -ne 0 ]; then
	echo "bench.sh must run as root (it loads XDP programs and builds network namespaces)" >&2
	exit 1
fi
if [ "$smoke" = 1 ]; then
	names=1000 sources=1000 repeat=1000 rounds=1 seconds=1 legit_rounds=1
else
	names=1000000 sources=1000000 repeat=1000000 rounds=5 seconds=10 legit_rounds=3
fi
for tool in dnsperf unbound bpftool; do
	command -v "$tool" >/dev/null || {
		echo "bench.sh: $tool is missing: run scripts/setup.sh" >&2
		exit 1
	}
done

parts=$(mktemp -d /tmp/ccxdp-bench.XXXXXX)
stats_was=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
	sysctl -qw kernel.bpf_stats_enabled="$stats_was" || true
	# Labs whose owner is gone (ours, if a step was killed midway); e2e.py removes its own.
	"$py" -c 'from ccxdp.lab.netns import cleanup_stale; cleanup_stale("bxn")' >/dev/null 2>&1 || true
	rm -rf "$parts"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n[bench] %s\n' "$*"; }
mkdir -p "$out"
"$py" - >"$parts/machine.json" <<EOF
import json, os, platform, subprocess
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
ver = lambda argv: subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()
print(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
                  "kernel": platform.release(), "unbound": ver(["unbound", "-V"])[0],
                  "dnsperf": ver(["dnsperf", "-h"])[-1], "smoke": $smoke == 1,
                  "date": subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip()}))
EOF

say "1/4 per-packet cost through BPF_PROG_TEST_RUN ($names names, $sources sources)"
"$py" "$repo/scripts/bench_datapath.py" --names "$names" --sources "$sources" \
	--repeat "$repeat" --rounds "$rounds" --json "$parts/datapath.json"
say "2/4 feed add, kernel memory per name, 1% sync ($names names)"
"$py" "$repo/scripts/bench_feeds.py" --names "$names" | tee "$parts/feeds.txt"
say "3/4 collection of $sources sources"
"$py" "$repo/scripts/bench_collect.py" --sources "$sources" | tee "$parts/collect.txt"
say "4/4 end to end under dnsperf: Unbound RPZ, ccxdp, legitimate queries, the ceiling"
"$py" "$repo/scripts/bench/e2e.py" --names "$names" --seconds "$seconds" \
	--legit-rounds "$legit_rounds" --json "$parts/e2e.json"
"$py" "$repo/scripts/bench/report.py" "$parts" "$out/bench.json" "$out/bench.png"
