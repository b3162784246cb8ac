//! SigV4 HTTP probe.
