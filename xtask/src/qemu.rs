//! The one place that starts qemu, watches its serial console, and always reaps it.
