#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The one command of the Vagrant harness, run on the host: bring both VMs up (the first time,
# create and provision them), copy the repository as it is now into them, then run the
# end-to-end tests on the resolver VM. Extra arguments go to pytest.
#
#   vagrant/run.sh                  # e.g. vagrant/run.sh -k answers -x
#
# Environment: CCXDP_VAGRANT_OS=debian12 (default) or ubuntu2404 (destroy the VMs before
# switching: 'vagrant destroy -f'); VAGRANT_DEFAULT_PROVIDER=libvirt or virtualbox.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
vagrant up
vagrant rsync
args=""
if [ $# -gt 0 ]; then args=$(printf ' %q' "$@"); fi
vagrant ssh resolver -c "sudo /ccxdp/vagrant/e2e.sh$args"
