//! aws-sdk-kms adapter.
