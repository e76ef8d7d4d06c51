#!/bin/sh
# Boot the hello image in the Xen-in-QEMU lab, as PVH and as PV (dom0 side; run.sh copies the
# EXTRA dir to /extra):
#   cargo build --release -p xenolith-hello
#   d=$(mktemp -d); cp examples/hello/xen-lab/test.sh "$d"/; cp target/release/xenolith-hello "$d"/hello.elf
#   TESTS=none EXTRA="$d" ../shared/tools/xen-lab/run.sh      # XENLAB: PASS (... extra=OK)
# Passes when, in each mode, the guest printed its greeting, wrote data/hello = ready,
# advertised control/feature-poweroff, and `xl shutdown` powered it off.
set -u
boot() { # type
    name=hello-$1
    cat > /tmp/$name.cfg <<CFG
name = "$name"
type = "$1"
kernel = "/extra/hello.elf"
memory = 32
vcpus = 1
on_poweroff = "destroy"
on_crash = "preserve"
on_reboot = "destroy"
CFG
    LOG=/var/log/xen/console/guest-$name.log
    xl create /tmp/$name.cfg || return 1
    n=0
    while [ $n -lt 60 ]; do
        grep -q 'waiting for xl shutdown' $LOG 2>/dev/null && break
        sleep 1; n=$((n+1))
    done
    echo "HELLO[$1]: console after ${n}s:"; cat $LOG
    id=$(xl domid $name)
    echo "HELLO[$1]: data/hello = $(xenstore-read /local/domain/$id/data/hello)"
    ok=1
    [ "$(xenstore-read /local/domain/$id/data/hello)" = ready ] || ok=0
    [ "$(xenstore-read /local/domain/$id/control/feature-poweroff)" = 1 ] || ok=0
    xl list
    xl shutdown -w $name & 
    n=0
    while xl domid $name >/dev/null 2>&1 && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done
    echo "HELLO[$1]: after xl shutdown ${n}s:"; cat $LOG
    if xl domid $name >/dev/null 2>&1; then echo "HELLO[$1]: still running"; xl list; xl destroy $name; ok=0; fi
    echo "HELLO[$1]: ok=$ok"
    [ $ok = 1 ]
}
r=0
boot pvh || r=1
boot pv || r=1
[ $r = 0 ] && echo OK > /tmp/extra-result
