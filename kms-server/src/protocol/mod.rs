//! The AWS JSON 1.1 protocol of KMS: operations by `X-Amz-Target`, typed requests decoded
//! from JSON with the model's limits, typed responses encoded to JSON.

pub mod base64;
pub mod decode;
pub mod json;
pub mod operation;
pub mod request;
pub mod response;
