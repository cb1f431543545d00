#!/bin/sh
# ramnas setup: runs inside the new root tree (a chroot) after the packages are installed and root/ is
# copied in. It wires what files alone cannot: /init, the runlevels, sharing, the ZFS import mode.
set -eu

die() {
	echo "setup.sh: $*" >&2
	exit 1
}

# PID 1 is openrc-init (the kernel runs /init from the initramfs). /sbin/reboot, poweroff and halt (root/sbin)
# go through openrc-shutdown.
[ -x /sbin/openrc-init ] || die "/sbin/openrc-init missing: list openrc-init in packages"
ln -sfn /sbin/openrc-init /init

# Console login: agetty on the first virtual terminal only (the screen and keyboard: whoever sits there can
# pull the stick anyway). The serial port shows the boot but offers no login: on a server board it is often
# reachable over the network (IPMI Serial-over-LAN), and root has no password. To log in there too, add
# `ln -sfn agetty /etc/init.d/agetty.ttyS0` and agetty.ttyS0 to the default runlevel below
# (/etc/conf.d/agetty.ttyS0 holds its settings).
ln -sfn agetty /etc/init.d/agetty.tty1

# The runlevels of a diskless Alpine, with udev (for /dev/disk/by-id) instead of mdev. rc-update refuses a
# service without an init script: is its package listed?
for service in devfs dmesg ramnas-deadline udev udev-trigger udev-settle; do
	rc-update add "$service" sysinit
done
for service in modules sysctl hostname bootmisc hwclock syslog networking \
	ramnas-persist seedrng ramnas-watchdog zfs-import zfs-mount; do
	rc-update add "$service" boot
done
for service in udev-postmount acpid chronyd sshd crond smartd ramnas-zed agetty.tty1 ramnas-ready; do
	rc-update add "$service" default
done
for service in killprocs savecache mount-ro; do
	rc-update add "$service" shutdown
done

# Sharing: off until you uncomment it here. Samba shares what /etc/samba/smb.conf says (the worked example:
# tank/share, for the user `share`, who needs a Samba password, set once on the NAS: README says how); NFS
# exports what /etc/exports says (name your network there). `nfs` brings rpcbind and rpc.statd with it.
# The user and group that own tank/share have fixed ids: this tree is made afresh at every build, and an id
# left to adduser is whichever is free then, which moves when a package update adds a user or group first;
# the pool keeps its files' numbers, so they would belong to someone else. 1000: Alpine's packages take ids
# below 1000 (their own fixed ones, and 100-999 for `adduser -S`), nobody aside (65534); were 1000 ever
# taken, `-u`/`-g` fail the build rather than share it. `cargo xtask check` warns about an id left free.
#addgroup -g 1000 share
#adduser -D -H -h /tank/share -s /sbin/nologin -G share -u 1000 share
#rc-update add samba default
#rc-update add nfs default

# Nothing survives a reboot, not even zpool.cache: import every pool the disks hold (by id, see README).
found=
for defaults in /etc/default/zfs /etc/conf.d/zfs; do
	[ -f "$defaults" ] || continue
	found=yes
	if grep -q '^ZPOOL_IMPORT_ALL_VISIBLE=' "$defaults"; then
		sed -i "s/^ZPOOL_IMPORT_ALL_VISIBLE=.*/ZPOOL_IMPORT_ALL_VISIBLE='yes'/" "$defaults"
	else
		echo "ZPOOL_IMPORT_ALL_VISIBLE='yes'" >>"$defaults"
	fi
	if grep -q '^#*ZPOOL_IMPORT_PATH=' "$defaults"; then
		sed -i 's|^#*ZPOOL_IMPORT_PATH=.*|ZPOOL_IMPORT_PATH="/dev/disk/by-id"|' "$defaults"
	else
		echo 'ZPOOL_IMPORT_PATH="/dev/disk/by-id"' >>"$defaults"
	fi
done
[ -n "$found" ] || die "no ZFS defaults file (/etc/default/zfs or /etc/conf.d/zfs): is zfs listed in packages?"

# Root logs in on the console (tty1) without a password (there is no other way in without an ssh key);
# sshd accepts keys only. No password hash is ever stored in system/.
passwd -d root >/dev/null

mkdir -p /media/boot
