#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The end-to-end tests across the two VMs, run on the resolver VM as root (run.sh does this):
# this VM is the resolver, the client VM is reached over ssh. Extra arguments go to pytest.
#
#   sudo /ccxdp/vagrant/e2e.sh [-k PATTERN] ...
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=/dev/null # network.env: the VMs' addresses, as KEY=VALUE lines
. "$here/network.env"
: "${RESOLVER_V4:?}" "${RESOLVER_V6:?}" "${CLIENT_V4:?}" "${CLIENT_V6:?}"
read -r -a clients4 <<<"$CLIENT_V4"

# The repository may have changed since the VM was provisioned (vagrant rsync): idempotent.
"$repo/scripts/setup.sh"

iface=$(ip -o -4 addr show to "$RESOLVER_V4/32" | awk '{ print $2; exit }')
if [ -z "$iface" ]; then
	echo "no interface holds $RESOLVER_V4: run 'vagrant up' (or 'vagrant provision') first" >&2
	exit 1
fi
client_exec=(ssh -i /root/.ssh/ccxdp-e2e -o BatchMode=yes -o ConnectTimeout=10
	-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/root/.ssh/ccxdp-e2e.known_hosts
	"vagrant@${clients4[0]}")
client_if=$("${client_exec[@]}" "ip -o -4 addr show to ${clients4[0]}/32" | awk '{ print $2 }')
if [ -z "$client_if" ]; then
	echo "the client VM (${clients4[0]}) is not reachable over ssh, or lacks its address" >&2
	exit 1
fi

export CCXDP_E2E_TOPOLOGY=hosts
export CCXDP_E2E_RESOLVER="$RESOLVER_V4 $RESOLVER_V6"
export CCXDP_E2E_RESOLVER_IF=$iface
export CCXDP_E2E_CLIENT="$CLIENT_V4 $CLIENT_V6"
export CCXDP_E2E_CLIENT_IF=$client_if
export CCXDP_E2E_CLIENT_EXEC="${client_exec[*]}"
echo "[e2e] resolver: this VM, $iface ($RESOLVER_V4, $RESOLVER_V6), kernel $(uname -r)"
echo "[e2e] client: ${clients4[0]} over ssh, $client_if ($CLIENT_V4 $CLIENT_V6)"
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest -p no:cacheprovider tests/e2e/test_filter.py \
	tests/e2e/test_answers.py "$@"
