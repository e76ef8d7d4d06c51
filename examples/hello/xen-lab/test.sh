#!/bin/sh
# Boot the hello image in the Xen-in-QEMU lab (dom0 side; run.sh copies the EXTRA dir to /extra):
#   cargo build --release -p xenolith-hello
#   d=$(mktemp -d); cp examples/hello/xen-lab/test.sh "$d"/; cp target/release/xenolith-hello "$d"/hello.elf
#   TESTS=none EXTRA="$d" ../shared/tools/xen-lab/run.sh      # XENLAB: PASS (... extra=OK)
# Passes when the guest printed its greeting, wrote data/hello = ready, advertised
# control/feature-poweroff, and `xl shutdown` powered it off (reason code 0).
set -u
cat > /tmp/hello.cfg <<CFG
name = "hello"
type = "pvh"
kernel = "/extra/hello.elf"
memory = 32
vcpus = 1
on_poweroff = "destroy"
on_crash = "preserve"
on_reboot = "destroy"
CFG
LOG=/var/log/xen/console/guest-hello.log
xl create /tmp/hello.cfg || exit 1
n=0
while [ $n -lt 60 ]; do
    grep -q 'waiting for xl shutdown' $LOG 2>/dev/null && break
    sleep 1; n=$((n+1))
done
echo "HELLO: console after ${n}s:"; cat $LOG
id=$(xl domid hello)
echo "HELLO: data/hello = $(xenstore-read /local/domain/$id/data/hello)"
echo "HELLO: features: $(xenstore-ls /local/domain/$id/control 2>&1 | tr '\n' ' ')"
ok=0
[ "$(xenstore-read /local/domain/$id/data/hello)" = ready ] && ok=1
[ "$(xenstore-read /local/domain/$id/control/feature-poweroff)" = 1 ] || ok=0
xl list
xl shutdown -w hello & sp=$!
n=0
while xl domid hello >/dev/null 2>&1 && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done
echo "HELLO: after xl shutdown ${n}s:"; cat $LOG; xl list
if xl domid hello >/dev/null 2>&1; then echo "HELLO: still running"; xl destroy hello; ok=0; fi
[ $ok = 1 ] && echo OK > /tmp/extra-result
