//! KMS error responses: awsJson1_1 shape, with the error name in both the
//! `__type` body field and the `X-Amzn-Errortype` header (the SDK reads both).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One KMS exception: its shape name and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    pub code: &'static str,
    pub message: String,
}

impl KmsError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }

    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new("CustomKeyStoreInvalidStateException", message)
    }

    pub fn store_not_found(id_or_name: &str) -> Self {
        Self::new(
            "CustomKeyStoreNotFoundException",
            format!("Custom key store {id_or_name} does not exist."),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("KMSInternalException", message)
    }

    pub fn throttling(operation: &str) -> Self {
        Self::new(
            "ThrottlingException",
            format!("Rate exceeded for {operation}."),
        )
    }

    /// Temporary credentials past their expiration.
    pub fn expired_token() -> Self {
        Self::new(
            "ExpiredTokenException",
            "The security token included in the request is expired",
        )
    }

    /// An issued access key id without its session token, or with another.
    pub fn unrecognized_client() -> Self {
        Self::new(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    }

    /// KMS answers 400 for client faults and 500 for its own.
    pub fn status(&self) -> StatusCode {
        match self.code {
            "KMSInternalException" => StatusCode::INTERNAL_SERVER_ERROR,
            "DependencyTimeoutException" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for KmsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"__type": self.code, "message": self.message});
        let mut response = (self.status(), body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        response
    }
}
