//! Compressed writers the kernel can unpack: zstd, xz, gzip, or none.
