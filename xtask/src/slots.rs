//! A/B slot logic over a stick: which slot, trial, commit, rollback, crash-safe order of writes.
