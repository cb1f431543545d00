//! What a block device is (whole disk? mounted? removable? size), from /sys and /proc.
