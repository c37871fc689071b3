#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Run by Vagrant on each VM, as root, at every `vagrant up`: puts the lab's addresses on the
# private network's interface (addresses added with `ip` do not survive a reboot) and installs
# the key with which the resolver runs commands on the client.
#
#   lab-net.sh resolver|client V4[,V4...] V6[,V6...]
set -euo pipefail
role=$1
IFS=, read -r -a v4 <<<"$2"
IFS=, read -r -a v6 <<<"$3"
key=/ccxdp/vagrant/.e2e-key/id_ed25519

iface=$(ip -o -4 addr show to "${v4[0]}/32" | awk '{ print $2; exit }')
if [ -z "$iface" ]; then
	echo "lab-net: no interface holds ${v4[0]}: Vagrant did not set up the private network" >&2
	exit 1
fi
sysctl -q -w "net.ipv6.conf.$iface.disable_ipv6=0" "net.ipv6.conf.$iface.accept_ra=0"
for a in "${v4[@]:1}"; do
	ip addr replace "$a/24" dev "$iface"
done
for i in "${!v6[@]}"; do
	# nodad: usable at once. Extra addresses are deprecated (preferred_lft 0), as in the
	# namespace lab: bindable, but never picked as the default source.
	extra=()
	if [ "$i" -gt 0 ]; then extra=(preferred_lft 0); fi
	ip addr replace "${v6[$i]}/64" dev "$iface" nodad "${extra[@]}"
done

# The tests start their own unbound on the lab's addresses; the packaged service stays off.
systemctl disable --now unbound.service >/dev/null 2>&1 || true

case $role in
resolver)
	install -d -m 700 /root/.ssh
	install -m 600 "$key" /root/.ssh/ccxdp-e2e
	;;
client)
	# The resolver logs in as the unprivileged vagrant user: dig, kdig and a Python socket
	# need no root.
	home=/home/vagrant
	install -d -m 700 -o vagrant -g vagrant "$home/.ssh"
	touch "$home/.ssh/authorized_keys"
	chown vagrant:vagrant "$home/.ssh/authorized_keys"
	chmod 600 "$home/.ssh/authorized_keys"
	grep -qxF "$(cat "$key.pub")" "$home/.ssh/authorized_keys" ||
		cat "$key.pub" >>"$home/.ssh/authorized_keys"
	;;
*)
	echo "lab-net: role must be resolver or client, not $role" >&2
	exit 2
	;;
esac
echo "lab-net: $role: $iface holds ${v4[*]} ${v6[*]}"
