#!/bin/sh
# Runs once inside the new root tree (chrooted, with system/ at /mnt), after the packages are installed
# and root/ is copied over them. Everything here ends up in the initramfs.
set -eu

# The kernel runs /init from the initramfs as PID 1.
ln -sf /sbin/openrc-init /init

# Services per runlevel, as setup-alpine would enable them.
services() {
	level=$1
	shift
	for service in "$@"; do
		rc-update add "$service" "$level"
	done
}
services sysinit devfs dmesg mdev hwdrivers
services boot modules sysctl hostname bootmisc syslog networking
services default sshd
services shutdown mount-ro killprocs savecache
if [ -e /etc/init.d/seedrng ]; then
	services boot seedrng
fi

# A login prompt on the serial console and on the screen.
for tty in ttyS0 tty1; do
	ln -sf agetty "/etc/init.d/agetty.$tty"
	services default "agetty.$tty"
done

# sshd refuses keys in group- or world-writable places.
chmod 0700 /root/.ssh
chmod 0600 /root/.ssh/authorized_keys
