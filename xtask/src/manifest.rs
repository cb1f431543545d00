//! OUT/manifest.json: what a build is, and the difference between two builds.
