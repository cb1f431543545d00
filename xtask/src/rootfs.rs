//! alpine-make-rootfs: fetch, verify, run — the only Alpine-specific seam.
