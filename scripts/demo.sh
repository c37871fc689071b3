#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The demo, as root: set-up, a namespace lab (a resolver running unbound with ccxdp on its NIC,
# an infected client, a clean client, a sinkhole), a sample feed, a bot beaconing to its C&C,
# what ccxdp blocked and counted, what the sinkhole saw; then everything is removed again.
#
#   scripts/demo.sh
#
# It touches no ccxdp installation of this machine: its pins and state are its own
# (/sys/fs/bpf/ccxdp-NAME, /run/ccxdp-NAME) and go at the end, as does the lab.
# Environment: CCXDP_DEMO_NAME (default: demo) names the lab and those folders.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CCXDP_VENV:-$repo/.venv}
name=${CCXDP_DEMO_NAME:-demo}
pins=/sys/fs/bpf/ccxdp-$name
state=/run/ccxdp-$name
steps=9
step_no=0
# Tables as wide as they need when the output goes to a file or a pipe (a terminal sets it).
[ -t 1 ] || export COLUMNS=${COLUMNS:-160}

step() { # one plain sentence per step
	step_no=$((step_no + 1))
	printf '\n[%d/%d] %s\n' "$step_no" "$steps" "$*"
}
cx() { "$venv/bin/ccxdp" --pin-dir "$pins" --state-dir "$state" "$@"; }
in_ns() { ip netns exec "$1" "${@:2}"; }
json() { # json EXPR < JSON: print a Python expression over the parsed document `d`
	"$venv/bin/python" -c "import json, sys; d = json.load(sys.stdin); print($1)"
}
remove_all() { # the lab (with what it changed), then the demo's pins and state
	cx lab down --name "$name" >/dev/null 2>&1 || true
	if [ -d "$pins" ]; then cx detach --purge >/dev/null 2>&1 || true; fi
	rm -rf "$state"
}

if [ "$(id -u)" -ne 0 ]; then
	echo "demo.sh must run as root (it builds network namespaces and loads an XDP program)" >&2
	exit 1
fi

step "Preparing this machine: Debian packages, the venv, bpffs, kernel headers for bcc (each step only if missing)."
"$repo/scripts/setup.sh"
# Whatever an interrupted earlier demo left goes first; this one's goes on any exit.
remove_all
trap remove_all EXIT

step "Building the lab: a resolver running unbound with ccxdp on its network interface, two clients and a sinkhole host, each in its own network namespace."
cx lab up --name "$name"
lab=$(cx lab status --name "$name" --json)
addr() { json "[h for h in d['hosts'] if h['role'] == '$1'][0]['addresses'][$2]" <<<"$lab"; }
res4=$(addr res 0) res6=$(addr res 1)
inf4=$(addr cli 0) inf6=$(addr cli 2) # client 1 also has .3 and ::3; the first ones send
cln4=$(addr cl2 0) cln6=$(addr cl2 1)
sink4=$(addr snk 0) sink6=$(addr snk 1)
# The lab's clients share one IPv6 /64, where an ISP gives each line its own: count IPv6
# sources per address here (the default, per /64, would make the two clients one source).
cx config set source_prefix_v6 128 >/dev/null

step "Loading the sample feeds from examples/feeds: C&C names in three categories and two formats, each feed with its own action."
cx feed add emotet "$repo/examples/feeds/emotet.txt" --action sinkhole >/dev/null
cx feed add qakbot "$repo/examples/feeds/qakbot.hosts" --action nxdomain >/dev/null
cx feed add mirai "$repo/examples/feeds/mirai.txt" --action drop >/dev/null
cx feed list
cx block list --sources

step "The infected client ($inf4, $inf6) beacons to its C&C servers three times, a second apart, then connects to whatever addresses it was given."
in_ns "$name-cli" "$repo/examples/malware-sim.sh" "$res4" "$res6" 3 1 \
	panel.emotet.test api.qbot.test cnc.mirai.test

step "The clean client ($cln4, $cln6) looks up ordinary names in the resolver's local zone lab.example, and unbound answers them all."
for n in www.lab.example news.lab.example shop.lab.example mail.lab.example; do
	a=$(HOME=/nonexistent in_ns "$name-cl2" dig -4 +short +time=1 +tries=1 @"$res4" "$n" A)
	aaaa=$(HOME=/nonexistent in_ns "$name-cl2" dig -6 +short +time=1 +tries=1 @"$res6" "$n" AAAA)
	printf '  %-17s A %-12s AAAA %s\n' "$n" "${a:--}" "${aaaa:--}"
done

step "What ccxdp counted at the resolver's NIC: every frame by outcome, the blocked queries by action, and the blocked queries per source address."
cx stats
cx stats --json | json "'ccxdp blocked %d queries: %d from the infected client (%s, %s) and %d from the clean client (%s, %s).' % (
    d['outcomes']['blocked'],
    sum(s['hits'] for s in d['sources'] if s['address'] in ('$inf4', '$inf6')),
    '$inf4', '$inf6',
    sum(s['hits'] for s in d['sources'] if s['address'] in ('$cln4', '$cln6')),
    '$cln4', '$cln6')"

step "What the sinkhole ($sink4, $sink6) saw: each connection attempt, with its time and source, is how an ISP confirms an infection."
cx lab sinkhole-log --name "$name"
cx lab sinkhole-log --name "$name" --json | json "'The sinkhole recorded %d TCP connection attempts from the infected client and %d from the clean client.' % (
    sum(c['proto'] == 'tcp' and c['source'] in ('$inf4', '$inf6') for c in d),
    sum(c['proto'] == 'tcp' and c['source'] in ('$cln4', '$cln6') for c in d))"

step "Collecting the counters into the hits store and building this month's notification records: the infected line gets one e-mail, the clean line none."
# The month the hits fell in, from the hits themselves: at a month's turn, `date` could
# already name the next one.
month=$(cx stats --json | json "min(s['first_seen'] for s in d['sources'])[:7]")
cx collect
# --min-days 1: the demo's hits all fall on one day; the default (2 days) resists spoofing.
cx notify --period "$month" --sessions "$repo/examples/lines/sessions.csv" \
	--subscribers "$repo/examples/lines/subscribers.csv" --min-days 1 \
	--from "security-notice@isp.example" --out "$state/outbox"
cx records --period "$month"
cx records --period "$month" --json | json "'Notified this month: %s; not notified: %s.' % (
    ', '.join(sorted(r['line'] for r in d['records'] if r.get('notification'))) or 'none',
    ', '.join(sorted(r['line'] for r in d['records'] if not r.get('notification'))) or 'none')"
for eml in "$state"/outbox/*.eml; do
	echo "  --- the e-mail to the infected line, as written to the outbox ($(basename "$eml")) ---"
	"$venv/bin/python" -c "import email, email.policy, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
for h in ('From', 'To', 'Subject', 'Date'):
    print(f'  {h}: {m[h]}')
print()
print('\n'.join('  ' + line for line in m.get_body(('plain',)).get_content().splitlines()))" "$eml"
done

step "Removing the lab, its processes and namespaces, and the demo's pinned maps and state."
trap - EXIT
cx lab down --name "$name"
remove_all
echo
echo "Done in ${SECONDS}s; nothing of the demo is left on this machine."
