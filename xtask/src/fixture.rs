//! Test fixtures: a small bootable root tree made from Debian's busybox-static and kernel packages.
