//! KMS custom-key-store emulator and XKS proxy emulator.
