#!/bin/bash
# xenlab: boot a real Xen 4.17 hypervisor + Linux PV dom0 inside QEMU and
# start PV (and PVH) domUs with `xl create`, disk served by dom0's blkback.
#
# Usage: run.sh                      (defaults: TCG, tests linux,pvgrub,pvh)
#        XENLAB_WORK=<dir> where builds, the kernel and logs go (default /tmp/xen-lab-work)
# Env:   ACCEL=tcg|kvm   CPU=<qemu -cpu>   TESTS=linux,pvgrub,pvh
#        XENSTORED=xenstored|oxenstored   TIMEOUT=<seconds for the whole QEMU run>
#        SMP=2  MEM=3072 (MiB for the QEMU machine)  DOM0_MEM=1024M  DOM0_VCPUS=1
#        XEN_EXTRA="..." extra Xen command-line options
#        DEBUG=1 (trace the block hotplug script inside dom0)
#        EXTRA=<dir>: copied to /extra in dom0; its test.sh is run after the
#               built-in tests (helpers: xl, /boot/domU-vmlinuz ...); it must
#               write OK to /tmp/extra-result on success
#        PREPARE=<script>: run (bash, env KROOT KVER MODDIR) once the kernel is
#               unpacked and before EXTRA is copied: builds what needs the kernel
#        NO_APT=1 (never call apt-get; fail if something is missing)
#        QDISK=1 (put QEMU's xen-block backend in dom0: disks with backendtype=qdisk)
# Output: $W/out/serial.log (full serial console), $W/out/serial.ts.log (same,
#         host-timestamped); last line of stdout: "XENLAB: PASS (...)" or "XENLAB: FAIL (...)".
#         exit status 0 = PASS (every requested test OK).
set -u
SRC=$(cd "$(dirname "$0")" && pwd)
W=${XENLAB_WORK:-/tmp/xen-lab-work}
mkdir -p "$W"
# one run per work directory (builds, the kernel and the logs are shared)
exec 9>"$W/.lock"
if ! flock -n 9; then
    echo "[run.sh] $W is in use by another run; waiting (set XENLAB_WORK to run in parallel)"
    flock 9
fi
B=$W/build
OUT=$W/out
ACCEL=${ACCEL:-tcg}
TESTS=${TESTS:-linux,pvgrub,pvh}
XENSTORED=${XENSTORED:-xenstored}
TIMEOUT=${TIMEOUT:-1200}
SMP=${SMP:-2}
MEM=${MEM:-3072}
DOM0_MEM=${DOM0_MEM:-1024M}
if [ "$ACCEL" = tcg ]; then
    # plain "max" (with SMAP) makes PV dom0 crash at its first bounce frame under TCG:
    #   (XEN) d0v0 Unhandled: vec 14, #PF[0001] ... create_bounce_frame
    # and "max" with RDTSCP makes a PVH domU crash at its first RDTSCP (0f 01 f9):
    #   (XEN) Insn mismatch: Expected opcode 0xf0031, modrm 0, got nrip_len 0, emul_len 3
    #   (XEN) SVM Insn len emulation failed (1): d3v0 64bit @ ...: 0f 01 f9 ...
    CPU=${CPU:-max,-smap,-rdtscp}
    # TCG_THREAD=single|multi (one host thread for all vCPUs, or one each). dom0's own
    # processes (xl, busybox sh) segfault now and then in malloc with either (see
    # ci/test: a lab run that fails with such a dom0 crash is run again).
    ACCEL_OPT="tcg,thread=${TCG_THREAD:-multi}"
else
    # on a host with working (nested-capable) KVM; NOT this lab machine (kvm_pvm)
    CPU=${CPU:-host}
    ACCEL_OPT="$ACCEL"
fi
XENVER=4.17
XENBIN=/usr/lib/xen-$XENVER/bin
mkdir -p "$B" "$OUT"
log() { echo "[run.sh $(date +%T)] $*"; }
die() { echo "[run.sh] ERROR: $*"; echo "XENLAB: FAIL ($*)"; exit 1; }
T_START=$(date +%s.%N)

# The .debs unpacked below are fetched with `apt-get download`, which asks the mirror for the
# version the local package lists name. Lists older than the mirror name versions it no longer
# has (404: seen on a fresh machine whose image came with old lists), so a failed download
# refreshes the lists once (`apt-get update`) and is tried again with the versions they name.
LISTS_FRESH=""
refresh_lists() {
    [ -z "$LISTS_FRESH" ] || return 1
    [ -z "${NO_APT:-}" ] || return 1
    LISTS_FRESH=1
    log "apt-get download failed: refreshing the package lists (apt-get update), trying again"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
}
# apt_fetch DIR PKG...: download into DIR (emptied first)
apt_fetch() {
    local dir=$1; shift
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$@")
}

########## 1. prerequisites ##########
# Packages (ci/packages says why each one): installed once, a failure stops here with apt's
# message. QEMU is not installed as a package: bookworm's qemu-system-x86 7.2 needs
# qemu-system-common 7.2, which the machine image's qemu-utils 10.0 (a bookworm backport)
# Breaks, and apt would either refuse or remove qemu-utils. We unpack qemu-system-x86's .deb
# below instead and install only what the binary uses (libraries, firmware, data).
LAB_PKGS="xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER busybox-static grub-xen-host cpio e2fsprogs"
if [ -n "${NO_APT:-}" ]; then
    missing=""
    for p in $LAB_PKGS $("$SRC/../apt-install" --qemu-deps); do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    [ -z "$missing" ] || die "missing packages:$missing (NO_APT=1)"
else
    # shellcheck disable=SC2046
    "$SRC/../apt-install" $LAB_PKGS $("$SRC/../apt-install" --qemu-deps) || die "apt-get install failed (see above)"
fi
# qemu-system-x86 (the binary) and qemu-system-common (its TCG accelerator is a module,
# accel-tcg-x86_64.so, found through QEMU_MODULE_DIR), unpacked, same version
QPKG_VER=$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/{print $2}')
[ -n "$QPKG_VER" ] && [ "$QPKG_VER" != "(none)" ] || die "no candidate for qemu-system-x86"
QROOT=$W/qemu-root
QEMU=$QROOT/usr/bin/qemu-system-x86_64
export QEMU_MODULE_DIR=$QROOT/usr/lib/x86_64-linux-gnu/qemu
if [ ! -x "$QEMU" ] || [ ! -f "$QEMU_MODULE_DIR/accel-tcg-x86_64.so" ] ||
    [ "$(cat "$QROOT/.version" 2>/dev/null)" != "$QPKG_VER" ]; then
    [ -n "${NO_APT:-}" ] && die "qemu-system-x86 $QPKG_VER not unpacked in $QROOT (NO_APT=1)"
    log "fetching qemu-system-x86 and qemu-system-common $QPKG_VER (unpacked, not installed)"
    rm -rf "$QROOT"
    if ! apt_fetch "$W/qdebs" "qemu-system-x86=$QPKG_VER" "qemu-system-common=$QPKG_VER"; then
        refresh_lists || die "apt-get download qemu"
        QPKG_VER=$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/{print $2}')
        apt_fetch "$W/qdebs" "qemu-system-x86=$QPKG_VER" "qemu-system-common=$QPKG_VER" ||
            die "apt-get download qemu"
    fi
    for d in "$W"/qdebs/*.deb; do dpkg-deb -x "$d" "$QROOT" || die "unpack $d"; done
    echo "$QPKG_VER" > "$QROOT/.version"
fi
[ -f "$QEMU_MODULE_DIR/accel-tcg-x86_64.so" ] || die "no TCG module in $QEMU_MODULE_DIR"
# Debian's QEMU is relocatable: it looks for its firmware relative to where the binary lies,
# i.e. under $QROOT; point it at the installed data (qemu-system-data, seabios, ipxe-qemu)
QEMU_DATA="-L /usr/share/qemu -L /usr/share/seabios -L /usr/lib/ipxe/qemu"
# every library it links must be there (a missing one means qemu_deps is out of date)
if ldd "$QEMU" | grep -q 'not found'; then
    ldd "$QEMU" | grep 'not found'; die "$QEMU: missing libraries"
fi
# QDISK=1: QEMU's Xen userspace block backend (xen-block, `backendtype=qdisk`) in dom0. libxl
# starts /usr/libexec/xen-qemu-system-i386 (qemu-system-xen) as the device model of a PV/PVH
# guest that has a qdisk disk. Unpacked like the rest of QEMU, with the libraries it links that
# this machine lacks (spice and its gstreamer/opus/orc, libusb): installing qemu-system-xen
# would pull ~60 packages (spice's codecs) onto the host for a binary that only runs in dom0.
QXEN_DEBS="qemu-system-xen libspice-server1 libusb-1.0-0 libopus0 liborc-0.4-0 libgstreamer-plugins-base1.0-0 libgstreamer1.0-0"
QXROOT=$W/qemu-xen-root
QXEN=$QXROOT/usr/libexec/xen-qemu-system-i386
if [ -n "${QDISK:-}" ]; then
    QX_VER=$(apt-cache policy qemu-system-xen 2>/dev/null | awk '/Candidate:/{print $2}')
    [ -n "$QX_VER" ] && [ "$QX_VER" != "(none)" ] || die "no candidate for qemu-system-xen"
    if [ ! -x "$QXEN" ] || [ "$(cat "$QXROOT/.version" 2>/dev/null)" != "$QX_VER" ]; then
        [ -n "${NO_APT:-}" ] && die "qemu-system-xen $QX_VER not unpacked in $QXROOT (NO_APT=1)"
        log "fetching qemu-system-xen $QX_VER and the libraries it needs (unpacked, not installed)"
        rm -rf "$QXROOT"
        # shellcheck disable=SC2086
        if ! apt_fetch "$W/qxdebs" $QXEN_DEBS; then
            refresh_lists || die "apt-get download qemu-system-xen"
            QX_VER=$(apt-cache policy qemu-system-xen 2>/dev/null | awk '/Candidate:/{print $2}')
            # shellcheck disable=SC2086
            apt_fetch "$W/qxdebs" $QXEN_DEBS || die "apt-get download qemu-system-xen"
        fi
        for d in "$W"/qxdebs/*.deb; do dpkg-deb -x "$d" "$QXROOT" || die "unpack $d"; done
        echo "$QX_VER" > "$QXROOT/.version"
    fi
    if LD_LIBRARY_PATH=$QXROOT/usr/lib/x86_64-linux-gnu ldd "$QXEN" | grep -q 'not found'; then
        LD_LIBRARY_PATH=$QXROOT/usr/lib/x86_64-linux-gnu ldd "$QXEN" | grep 'not found'
        die "$QXEN: missing libraries (QXEN_DEBS in run.sh is out of date)"
    fi
fi
# Linux kernel: download + unpack the .deb (installing linux-image-amd64 would
# pull initramfs-tools/udev and upgrade systemd on this host; we only need files)
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64"
KVER=${KPKG#linux-image-}
KROOT=$W/kroot
if [ ! -f "$KROOT/boot/vmlinuz-$KVER" ]; then
    log "fetching $KPKG"
    if ! apt_fetch "$W/debs" "$KPKG"; then
        refresh_lists || die "apt-get download $KPKG"
        apt_fetch "$W/debs" "$KPKG" || die "apt-get download $KPKG"
    fi
    rm -rf "$KROOT"; mkdir -p "$KROOT"
    dpkg-deb -x "$W"/debs/${KPKG}_*.deb "$KROOT" || die "unpack $KPKG"
fi
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
MODDIR=$KROOT/lib/modules/$KVER/kernel
# a test's own preparation that needs the kernel (e.g. an initramfs with its modules), run
# before EXTRA is copied into dom0
if [ -n "${PREPARE:-}" ]; then
    log "PREPARE: $PREPARE"
    KROOT=$KROOT KVER=$KVER MODDIR=$MODDIR bash "$PREPARE" || die "PREPARE $PREPARE failed"
fi
log "kernel $KVER, xen $(dpkg-query -W -f '${Version}' xen-hypervisor-$XENVER-amd64), qemu $QPKG_VER (unpacked)"

########## 2. Xen image (QEMU multiboot wants it uncompressed) ##########
zcat /boot/xen-$XENVER-amd64.gz > "$B/xen" || die "no /boot/xen-$XENVER-amd64.gz"

# copy binaries + their shared libraries into a root; canonical (merged-/usr) paths
copy_bin() { # root file...
    local r=$1; shift
    local f l d
    for f in "$@"; do
        d=$(readlink -f "$(dirname "$f")")
        mkdir -p "$r$d"; rm -f "$r$d/$(basename "$f")"; cp -L "$f" "$r$d/" || die "copy $f"
        ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do
            d=$(readlink -f "$(dirname "$l")"); mkdir -p "$r$d"
            [ -e "$r$d/$(basename "$l")" ] || cp -L "$l" "$r$d/"
        done
    done
}
skel() { # root
    local r=$1
    rm -rf "$r"; mkdir -p "$r"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,run,tmp,root,etc,var/lib,var/log,boot,mnt}
    ln -s usr/bin "$r/bin"; ln -s usr/sbin "$r/sbin"; ln -s usr/lib "$r/lib"; ln -s usr/lib64 "$r/lib64"
    ln -s ../run "$r/var/run"
    cp /bin/busybox "$r/usr/bin/busybox"
    local a
    for a in $(/bin/busybox --list-full); do
        [ -e "$r/$a" ] || [ -L "$r/$a" ] || ln -s /usr/bin/busybox "$r/usr/${a#usr/}" 2>/dev/null || true
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
    echo 'root:x:0:' > "$r/etc/group"
}
mkcpio() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2" || die "cpio $2"; }

########## 3. domU initramfs ##########
log "building domU initramfs"
R=$B/domU-root
skel "$R"
cp "$SRC/domU-init" "$R/init"; chmod +x "$R/init"
cp "$MODDIR/drivers/block/xen-blkfront.ko" "$R/"
mkcpio "$R" "$B/domU-initrd.img"

########## 4. disk for the PV GRUB test: ext2 with /boot/grub/grub.cfg + kernel + initrd ##########
log "building pvgrub ext2 disk"
P=$B/pvgrub-fs
rm -rf "$P"; mkdir -p "$P/boot/grub"
cp "$VMLINUZ" "$P/boot/vmlinuz"; cp "$B/domU-initrd.img" "$P/boot/initrd.img"
cat > "$P/boot/grub/grub.cfg" <<'EOF'
echo "XENLAB-GRUB: grub.cfg read from ($root)"
echo "XENLAB-GRUB: loading /boot/vmlinuz + /boot/initrd.img from the PV disk"
linux /boot/vmlinuz console=hvc0 xenlab_tag=pvgrub
initrd /boot/initrd.img
echo "XENLAB-GRUB: booting"
boot
EOF
rm -f "$B/pvgrub-disk.img"
mke2fs -q -t ext2 -L xenlab -d "$P" "$B/pvgrub-disk.img" 32M || die "mke2fs"

########## 5. dom0 initramfs ##########
log "building dom0 initramfs"
R=$B/dom0-root
skel "$R"
cp "$SRC/dom0-init" "$R/init"; chmod +x "$R/init"
mkdir -p "$R/modules"
for m in drivers/xen/xen-evtchn.ko drivers/xen/xen-privcmd.ko drivers/xen/xenfs/xenfs.ko \
         drivers/xen/xen-gntdev.ko drivers/xen/xen-gntalloc.ko \
         drivers/block/xen-blkback/xen-blkback.ko drivers/block/loop.ko; do
    cp "$MODDIR/$m" "$R/modules/" || die "module $m"
done
copy_bin "$R" $XENBIN/xl $XENBIN/xenstored $XENBIN/oxenstored $XENBIN/xenconsoled $XENBIN/xenconsole \
    $XENBIN/xen-init-dom0 $XENBIN/libxl-save-helper $XENBIN/xenstore-control \
    /usr/bin/xenstore /usr/bin/bash /usr/sbin/losetup /usr/bin/flock /usr/bin/stat
if [ -n "${QDISK:-}" ]; then
    # the device model libxl runs for qdisk disks, at the path libxl was built with, and every
    # library it links (from the unpacked packages first, else from this machine)
    mkdir -p "$R/usr/libexec" "$R/usr/lib/x86_64-linux-gnu"
    cp "$QXEN" "$R/usr/libexec/"
    # libxl runs it with -vnc none, which still loads a keymap (qemu-system-data's, found
    # relative to the binary: /usr/libexec/../share/qemu)
    mkdir -p "$R/usr/share/qemu"; cp -r /usr/share/qemu/keymaps "$R/usr/share/qemu/"
    LD_LIBRARY_PATH=$QXROOT/usr/lib/x86_64-linux-gnu ldd "$QXEN" | grep -o '/[^ ]*' | grep -v ld-linux |
        while read -r l; do
            [ -e "$R/usr/lib/x86_64-linux-gnu/$(basename "$l")" ] || cp -L "$l" "$R/usr/lib/x86_64-linux-gnu/"
        done
fi
# xl aborts in pthread_cancel without libgcc_s (dlopen'ed, so ldd does not list it)
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$R/usr/lib/x86_64-linux-gnu/"
for t in read write exists list ls rm chmod watch; do
    rm -f "$R/usr/bin/xenstore-$t"; ln -s xenstore "$R/usr/bin/xenstore-$t"
done
mkdir -p "$R/etc/xen" "$R/usr/lib/grub-xen" "$R/var/lib/xen" "$R/var/lib/xenstored" "$R/var/log/xen"
cp -a /etc/xen/scripts /etc/xen/xl.conf /etc/xen/oxenstored.conf "$R/etc/xen/"
cp /usr/lib/grub-xen/grub-x86_64-xen.bin "$R/usr/lib/grub-xen/"
cp "$VMLINUZ" "$R/boot/domU-vmlinuz"
cp "$B/domU-initrd.img" "$R/boot/domU-initrd.img"
cp "$B/pvgrub-disk.img" "$R/root/pvgrub-disk.img"
if [ -n "${EXTRA:-}" ]; then
    [ -d "$EXTRA" ] || die "EXTRA=$EXTRA is not a directory"
    cp -a "$EXTRA" "$R/extra"
    case "+${TESTS//,/+}+" in *+extra+*) ;; *) TESTS="$TESTS,extra" ;; esac
fi
mkcpio "$R" "$B/dom0-initrd.img"
ls -la "$B/xen" "$B/dom0-initrd.img" "$B/domU-initrd.img" | sed 's/^/  /'
T_BUILD=$(date +%s.%N)

########## 6. boot ##########
# no 'noreboot': if dom0 crashes Xen reboots after 5s and QEMU (-no-reboot) exits
# dom0 gets one vCPU (DOM0_VCPUS): with two, dom0's own processes (xl, busybox sh) segfaulted
# in malloc in about a third of the full lab runs of session 4, always "likely on CPU 1"; with
# one, the next runs were clean and faster (3-4 min instead of 5-7). Not proven: see the issue.
XEN_ARGS="console=com1 com1=115200,8n1 dom0_mem=$DOM0_MEM,max:$DOM0_MEM dom0_max_vcpus=${DOM0_VCPUS:-1} loglvl=all guest_loglvl=all ${XEN_EXTRA:-}"
# (no commas: QEMU's multiboot -initrd list is comma separated)
DOM0_ARGS="console=hvc0 earlyprintk=xen rdinit=/init xenlab_tests=${TESTS//,/+} xenlab_xenstored=$XENSTORED ${DEBUG:+xenlab_debug}"
log "booting: qemu -accel $ACCEL_OPT -cpu $CPU -smp $SMP -m $MEM (timeout ${TIMEOUT}s)"
log "xen args: $XEN_ARGS"
SER=$OUT/serial.log      # raw serial console
SERTS=$OUT/serial.ts.log # same, each line prefixed with host seconds since QEMU start
rm -f "$SER" "$SERTS" "$OUT/qemu.log"; : > "$SER"; : > "$SERTS"
Q0=${EPOCHREALTIME/./}
set -o pipefail
timeout "$TIMEOUT" "$QEMU" \
    -accel "$ACCEL_OPT" -cpu "$CPU" -smp "$SMP" -m "$MEM" \
    -machine q35 -display none -no-reboot -nic none $QEMU_DATA \
    -serial stdio -monitor none \
    -kernel "$B/xen" -append "$XEN_ARGS" \
    -initrd "$VMLINUZ $DOM0_ARGS,$B/dom0-initrd.img" \
    < /dev/null 2> "$OUT/qemu.log" |
while IFS= read -r line; do
    line=${line%$'\r'}
    us=$(( ${EPOCHREALTIME/./} - Q0 ))
    printf '%s\n' "$line" >> "$SER"
    printf '[%4d.%03d] %s\n' $((us/1000000)) $(((us/1000)%1000)) "$line" >> "$SERTS"
    # live progress: our markers only
    case "$line" in
        *"Xen version"*|DOM0\[*|\[linux-pv\]\ DOMU*|\[pvgrub\]\ DOMU*|\[linux-pvh\]\ DOMU*|*XENLAB-GRUB*|*Panic*|*PANIC*|*crashed*|*"Insn len emulation failed"*)
            printf '[+%4d.%03ds] %s\n' $((us/1000000)) $(((us/1000)%1000)) "$line" ;;
    esac
done
QRC=$?
set +o pipefail
T_END=$(date +%s.%N)
cat "$OUT/qemu.log"
el() { awk "BEGIN{printf \"%.1f\", $2-$1}"; }
log "qemu exit code $QRC (124 = timeout)"
log "times: build $(el $T_START $T_BUILD)s, qemu $(el $T_BUILD $T_END)s, total $(el $T_START $T_END)s"
# wall-clock milestones (seconds since QEMU start)
at() { grep -a -m1 -E "$1" "$SERTS" | sed 's/^\[ *\([0-9.]*\)\].*/\1/'; }
log "milestones (s since qemu start):"
for m in 'Xen version' 'Freed [0-9]+kB init memory' 'DOM0.*init start' 'DOM0.*\$ xl info' \
         'DOM0.*xl -v create /etc/xen/linux-pv.cfg' '\[linux-pv\] DOMU: booted' '\[linux-pv\] DOMU: RESULT' 'linux-pv domU gone' \
         'DOM0.*xl create /etc/xen/pvgrub.cfg' 'XENLAB-GRUB: loading' '\[pvgrub\] DOMU: booted' '\[pvgrub\] DOMU: RESULT' 'pvgrub domU gone' \
         'DOM0.*xl create /etc/xen/linux-pvh.cfg' '\[linux-pvh\] DOMU: booted' '\[linux-pvh\] DOMU: RESULT' 'linux-pvh domU gone' \
         'XENLAB RESULT' 'Entering ACPI S5'; do
    t=$(at "$m"); [ -n "$t" ] && printf '  %8s  %s\n' "$t" "$m"
done
if grep -aq 'XENLAB RESULT: PASS' "$SER"; then
    echo "XENLAB: PASS ($(grep -a 'summary:' "$SER" | sed 's/.*summary: *//'))"
    exit 0
else
    echo "XENLAB: FAIL (see $SER; $(grep -a 'summary:' "$SER" | sed 's/.*summary: *//'))"
    exit 1
fi
