//! xks-operator: manages AWS KMS external key stores (XKS) declaratively.
//!
//! Layers, top to bottom: `controller` (Kubernetes) and `cli` (files) drive
//! the `engine`, which runs what the pure `plan` decides through two ports,
//! `kms::KeyStores` and `xks::ProxyProbe`. The KMS and XKS proxy emulator
//! that tests, benchmarks and `demo` run against is a crate of its own
//! (`xks-emulator`), behind the default feature `emulator`: it shares no
//! validation or planning code with the operator, so a misreading of KMS
//! cannot pass on both sides.

pub mod api;
#[cfg(feature = "emulator")]
pub mod bench;
pub mod claims;
pub mod cli;
pub mod controller;
pub mod credentials;
pub mod engine;
pub mod error;
pub mod kms;
pub mod model;
pub mod plan;
pub mod retry;
pub mod xks;
