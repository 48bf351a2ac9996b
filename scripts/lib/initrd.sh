# The templates' initrd: busybox and the kernel modules that the root, the screen and the devices
# need; it mounts the ext4 root from /dev/vda and hands over to /sbin/desktop-init there.
# Sourced by the template builders.
#
#   template_initrd KDIR BUSYBOX WORK OUT MODULE...   writes OUT (gzip'd cpio); WORK is scratch

template_initrd() {
  local kdir=$1 busybox=$2 ird="$3/initrd" out=$4 kver m ko b
  shift 4
  kver=$(cat "$kdir/version")
  mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
  cp "$busybox" "$ird/bin/busybox"
  : >"$ird/modules.order"
  for m in "$@"; do
    modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}' |
    while read -r ko; do
      b=$(basename "$ko")
      grep -qx "$b" "$ird/modules.order" && continue
      cp "$ko" "$ird/lib/modules/$b"; echo "$b" >>"$ird/modules.order"
    done
  done
  cat >"$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </modules.order
n=0; while [ ! -b /dev/vda ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
mount -t ext4 /dev/vda /newroot || { echo "TC-ERROR no root on /dev/vda"; sleep 5; poweroff -f; }
mount --move /dev /newroot/dev; umount /proc /sys
exec switch_root /newroot /sbin/desktop-init
INIT
  chmod +x "$ird/init"
  (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}
