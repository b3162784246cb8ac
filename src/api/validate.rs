//! Validation repeated in Rust for the file-driven modes.
