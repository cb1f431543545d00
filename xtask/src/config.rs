//! system/system.toml and system/packages: parsed, defaulted, validated.
