#!/bin/bash
# dracut module: `lifeline unlock` runs before the crypt module opens the disks.
# Install as /usr/lib/dracut/modules.d/90lifeline/. Included when /etc/lifeline/lifeline.toml
# exists; the network is pulled in only when that configuration names an escrow server.

# initdir, moddir, systemdsystemunitdir and SYSTEMCTL come from dracut.
# shellcheck disable=SC2154

lifeline_binary() {
    echo "${LIFELINE:-$(command -v lifeline || echo /usr/sbin/lifeline)}"
}

lifeline_config() {
    echo "${LIFELINE_CONFIG:-/etc/lifeline/lifeline.toml}"
}

check() {
    [[ -r "$(lifeline_config)" ]] || return 1
    require_binaries "$(lifeline_binary)" || return 1
    return 0
}

depends() {
    echo crypt dm
    if "$(lifeline_binary)" unlock --config "$(lifeline_config)" --cmdline /dev/null \
        --needs-network 2> /dev/null; then
        echo network
    fi
    return 0
}

installkernel() {
    # The TPM, and removable media that may carry a recovery packet.
    hostonly='' instmods tpm_tis tpm_crb usb_storage uas xhci_pci ehci_pci sd_mod \
        vfat nls_cp437 nls_ascii nls_utf8 isofs ext4
}

install() {
    local lifeline files f
    lifeline=$(lifeline_binary)
    if ! files=$("$lifeline" unlock --config "$(lifeline_config)" --cmdline /dev/null --list-files); then
        derror "lifeline: fix $(lifeline_config) (see above)"
        return 1
    fi
    inst_binary "$lifeline" /usr/sbin/lifeline
    # The TPM's TCTI is dlopen()ed: inst_binary cannot see it among lifeline's libraries.
    inst_libdir_file "libtss2-tcti-device.so*"
    for f in $files; do
        if [[ -e $f ]]; then
            inst_simple "$f"
        else
            dwarn "lifeline: $f is missing; lifeline will say so at boot"
        fi
    done
    [[ $(lifeline_config) == /etc/lifeline/lifeline.toml ]] ||
        inst_simple "$(lifeline_config)" /etc/lifeline/lifeline.toml

    if dracut_module_included "systemd"; then
        # The same script as the initqueue job, run once by a unit.
        inst_simple "$moddir/lifeline-unlock.sh" /usr/lib/lifeline/lifeline-unlock.sh
        inst_simple "$moddir/lifeline-unlock.service" "$systemdsystemunitdir/lifeline-unlock.service"
        $SYSTEMCTL -q --root "$initdir" add-wants sysinit.target lifeline-unlock.service
        # Whatever the targets: systemd-cryptsetup starts only once lifeline is done, so it
        # finds a volume lifeline opened already active instead of asking at the same time.
        inst_simple "$moddir/lifeline-cryptsetup.conf" \
            "$systemdsystemunitdir/systemd-cryptsetup@.service.d/lifeline.conf"
    else
        # 00 sorts before the crypt module's cryptroot-ask-* jobs in initqueue/settled.
        inst_hook initqueue/settled 00 "$moddir/lifeline-unlock.sh"
    fi
}
