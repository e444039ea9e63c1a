#!/bin/sh
# make demo-offline: the off-line recovery story (files, no server, no TPM) on a fresh LUKS2 image, narrated.
# Everything happens in a scratch directory; nothing on this machine is touched.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release"
work=$(mktemp -d /tmp/lifeline-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "A user's laptop has a LUKS2 disk (here: a 20 MiB image) with a passphrase only they know."
truncate -s 20M disk.img
printf 'my secret passphrase' > user.key
run cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --label laptop-root --key-file user.key disk.img

say "The organisation creates its recovery authority once (administrator passphrase from a file here)."
echo 'helpdesk master passphrase' > admin.pass
run "$bin/lifeline-server" init --dir authority --passphrase-file admin.pass
ls -l authority

say "On the laptop, the volume key is escrowed to the authority (plus a random recovery passphrase)."
run "$bin/lifeline" escrow disk.img --recipient authority/recipient.txt --out laptop.escrow \
    --key-file user.key --random-passphrase --pbkdf2-iterations 1000
run "$bin/lifeline" inspect laptop.escrow

say "Months later the user forgets the passphrase and calls the helpdesk."
rm user.key
echo "  (the only copy of the passphrase is gone)"

say "The helpdesk issues a recovery packet: bound to this laptop and disk, valid 72 hours."
printf '$ %s\n' "lifeline-server recovery issue --dir authority --escrow laptop.escrow --out laptop.recovery"
"$bin/lifeline-server" recovery issue --dir authority --escrow laptop.escrow --out laptop.recovery \
    --passphrase-file admin.pass > otp.txt
echo "  helpdesk reads out:  $(cat otp.txt)"
run "$bin/lifeline" inspect laptop.recovery

say "The user receives laptop.recovery (e-mail, USB stick) and first mistypes one digit."
first=$(cut -c1 otp.txt)
typo="$(( (first + 1) % 10 ))$(cut -c2- otp.txt)"
printf '%s\n%s\n' "$typo" "$(cat otp.txt)" > typed.txt
echo 'new passphrase chosen by the user' > new.pass
printf '$ %s\n' "lifeline recover disk.img --packet laptop.recovery --trust authority/minisign.pub --new-passphrase-file new.pass --replace-slot 0"
"$bin/lifeline" recover disk.img --packet laptop.recovery --trust authority/minisign.pub \
    --new-passphrase-file new.pass --replace-slot 0 --pbkdf2-iterations 1000 < typed.txt

say "The disk opens with the new passphrase; the forgotten one is gone."
printf 'new passphrase chosen by the user' | cryptsetup open --test-passphrase --key-file - disk.img \
    && echo "  cryptsetup: new passphrase accepted"
run cryptsetup luksDump disk.img | grep -E '^Keyslots:|^  [0-9]+: luks2'

say "Without lifeline, the stock tools still work: age opens the packets, minisign verifies them."
head -n 4 laptop.recovery > laptop.minisig
tail -n +5 laptop.recovery > laptop.age
run minisign -V -p authority/minisign.pub -m laptop.age -x laptop.minisig


# ---- Act two: the TPM and a motherboard swap, on software TPMs ----------------------------

tpm() { # start a software TPM with its state in $1, listening on port $2
  mkdir -p "$1"
  swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$1" \
    --server type=tcp,port="$2",bindaddr=127.0.0.1 --ctrl type=tcp,port=$(($2 + 1)),bindaddr=127.0.0.1 &
  echo $! > "$1.pid"
  sleep 0.5
}
stop_tpm() { kill "$(cat "$1.pid")" 2>/dev/null || true; }
trap 'stop_tpm server-tpm; stop_tpm laptop-tpm; stop_tpm new-board-tpm; rm -rf "$work"' EXIT
port=$((23000 + $$ % 1000 * 6))
export TSS2_LOG=all+none LIFELINE_STATE_DIR="$work/laptop-etc"

say "Act two: the laptop unlocks with its TPM, under a storage key that survives a new motherboard."
tpm server-tpm "$port"
LIFELINE_TCTI="swtpm:host=127.0.0.1,port=$port" run "$bin/lifeline-server" drsk init --dir server

tpm laptop-tpm $((port + 2))
export LIFELINE_TCTI="swtpm:host=127.0.0.1,port=$((port + 2))"
run "$bin/lifeline" provision --backup-server-key server/drsk.pub
printf 'new passphrase chosen by the user' > user.key
run "$bin/lifeline" enroll disk.img --key-file user.key
run "$bin/lifeline" unseal-check disk.img

say "The laptop's storage key is backed up into the server's TPM (it never exists outside a TPM)."
run "$bin/lifeline" backup --server-key server/drsk.pub --out laptop.drsk
LIFELINE_TCTI="swtpm:host=127.0.0.1,port=$port" run "$bin/lifeline-server" drsk import --dir server laptop.drsk

say "The motherboard dies. The same disk goes into a machine with a new, empty TPM."
stop_tpm laptop-tpm; rm -rf laptop-tpm
tpm new-board-tpm $((port + 4))
export LIFELINE_TCTI="swtpm:host=127.0.0.1,port=$((port + 4))"
"$bin/lifeline" unseal-check disk.img || echo "  (as expected: the new TPM cannot unseal yet)"

say "The server re-wraps the storage key for the new TPM; the original sealed key works again."
run "$bin/lifeline" srk-public --out new-board.srk
client=$(sed -n 's/^client-id: //p' laptop.drsk)
LIFELINE_TCTI="swtpm:host=127.0.0.1,port=$port" run "$bin/lifeline-server" drsk restore --dir server \
    --client "$client" --new-parent new-board.srk --out new-board.restore
run "$bin/lifeline" restore --in new-board.restore --persist
run "$bin/lifeline" unseal-check disk.img

# ---- Act three: the same recovery through the escrow server, over HTTPS -----------------------

unset LIFELINE_TCTI
export LIFELINE_STATE_DIR="$work/laptop-etc"
srv_port=$((port + 6))
say "Act three: the helpdesk runs the escrow server (TLS with its own CA, on 127.0.0.1 here)."
run "$bin/lifeline-server" init --dir escrow-server --passphrase-file admin.pass \
    --tls-name 127.0.0.1 --listen 127.0.0.1:$srv_port
"$bin/lifeline-server" admin add --dir escrow-server --name alice > alice.cred
"$bin/lifeline-server" serve --dir escrow-server 2> server.log &
echo $! > server.pid
trap 'kill "$(cat server.pid)" 2>/dev/null; stop_tpm server-tpm; stop_tpm new-board-tpm; rm -rf "$work"' EXIT
sleep 1
url="https://127.0.0.1:$srv_port"

say "The laptop joins with a one-time enrollment token and escrows its key over HTTPS."
token=$("$bin/lifeline-server" admin enrollment-token --dir escrow-server --credential-file alice.cred 2>/dev/null)
run "$bin/lifeline" join --server "$url" --ca escrow-server/tls/ca.pem --token "$token"
run "$bin/lifeline" escrow disk.img --server "$url" --key-file user.key

say "The user forgets the passphrase again; at the boot prompt they request recovery."
rm user.key
run "$bin/lifeline" recovery request disk.img

say "The helpdesk sees the request, approves it, and reads the one-time password over the phone."
run "$bin/lifeline-server" admin requests --dir escrow-server --credential-file alice.cred
request=$("$bin/lifeline-server" admin requests --json --dir escrow-server --credential-file alice.cred | sed -n 's/.*"request":"\([0-9a-f]*\)".*/\1/p' | head -1)
"$bin/lifeline-server" admin approve-recovery "$request" --dir escrow-server --credential-file alice.cred \
    --passphrase-file admin.pass > otp.txt
echo "  helpdesk reads out:  $(cat otp.txt)"

say "The laptop fetches the approved packet, the user types the code, and sets a new passphrase."
echo 'third passphrase' > third.pass
printf '$ %s\n' "lifeline recover disk.img --server $url --new-passphrase-file third.pass"
"$bin/lifeline" recover disk.img --server "$url" --new-passphrase-file third.pass --pbkdf2-iterations 1000 < otp.txt
printf 'third passphrase' | cryptsetup open --test-passphrase --key-file - disk.img && echo "  cryptsetup: third passphrase accepted"
run "$bin/lifeline-server" audit verify --dir escrow-server

say "Done: forgotten passphrase recovered off-line and over HTTPS, and the TPM key survived a motherboard swap."
