#!/bin/sh
# dracut without systemd: sourced by the initqueue each time udev has settled, before the
# crypt module's cryptroot-ask jobs (00- sorts first). Runs `lifeline unlock` once; whatever it
# exits with, cryptroot-ask then asks for any volume still closed. Sourced: no `exit` here.

if [ ! -e /run/lifeline/ran ] && [ -x /usr/sbin/lifeline ]; then
    mkdir -p /run/lifeline
    : > /run/lifeline/ran
    if /usr/sbin/lifeline unlock --needs-network 2> /dev/null; then
        # dracut brings interfaces up from the main initqueue; wait for a global IPv4
        # address, at most 30 s.
        lifeline_wait=0
        while [ "$lifeline_wait" -lt 60 ] && ! ip -4 -o addr show scope global 2> /dev/null | grep -q inet; do
            sleep 0.5
            lifeline_wait=$((lifeline_wait + 1))
        done
        unset lifeline_wait
    fi
    /usr/sbin/lifeline unlock
    case $? in
        0) ;;
        9) warn "lifeline stepped aside; the passphrase prompt follows" ;;
        *) warn "lifeline failed; the passphrase prompt follows" ;;
    esac
fi
