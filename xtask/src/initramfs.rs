//! A root tree → a deterministic newc cpio stream.
