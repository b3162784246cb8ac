//! Runs a plan against the ports.
