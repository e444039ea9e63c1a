#!/bin/sh
# dracut without systemd: sourced by the initqueue each time udev has settled, before the
# crypt module's cryptroot-ask jobs (00- sorts first); with systemd: sourced once by
# lifeline-unlock.service, before cryptsetup-pre.target. Runs `lifeline unlock` once; whatever
# it exits with, the distribution then asks for any volume still closed. Sourced: no `exit`.
#
# With an escrow server, the network is brought up here (`ifup -m`, network-legacy's manual
# mode: DHCP, or ip=) and taken down again afterwards, rather than with rd.neednet=1, which
# would make a boot without network wait for one.

if [ ! -e /run/lifeline/ran ] && [ -x /usr/sbin/lifeline ]; then
    mkdir -p /run/lifeline
    : > /run/lifeline/ran
    lifeline_up=
    # First the TPM alone: an unattended boot needs no network. Then recovery.
    /usr/sbin/lifeline unlock --tpm-only
    lifeline_status=$?
    case $lifeline_status in
        0 | 2) ;;
        *)
            if command -v ifup > /dev/null && /usr/sbin/lifeline unlock --needs-network 2> /dev/null; then
                for lifeline_if in /sys/class/net/*; do
                    lifeline_if=${lifeline_if##*/}
                    [ "$lifeline_if" = lo ] && continue
                    [ -e "/tmp/net.$lifeline_if.did-setup" ] && continue
                    ifup "$lifeline_if" -m > /dev/null 2>&1 && lifeline_up="$lifeline_up $lifeline_if"
                done
            fi
            /usr/sbin/lifeline unlock
            lifeline_status=$?
            ;;
    esac
    case $lifeline_status in
        0) ;;
        9) warn "lifeline stepped aside; the passphrase prompt follows" ;;
        *) warn "lifeline failed (exit $lifeline_status); the passphrase prompt follows" ;;
    esac
    for lifeline_if in $lifeline_up; do
        [ -e "/tmp/dhclient.$lifeline_if.pid" ] && kill "$(cat "/tmp/dhclient.$lifeline_if.pid")" 2> /dev/null
        ip addr flush dev "$lifeline_if" 2> /dev/null
        ip link set "$lifeline_if" down 2> /dev/null
        rm -f "/tmp/net.$lifeline_if".* "/tmp/dhclient.$lifeline_if".* "/tmp/leaseinfo.$lifeline_if".*
    done
    unset lifeline_status lifeline_up lifeline_if
fi
