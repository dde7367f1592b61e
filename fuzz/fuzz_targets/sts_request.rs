//! STS request parsing of kubekms-server (sts::parse_request, jwt_claims, the XML error
//! reply). Input: a form-encoded body (the seeds are botocore's
//! AssumeRoleWithWebIdentity). Invariants: never a panic; an error is a 4xx unless it is
//! the server's; the error reply is XML with its code.
#![no_main]

use kubekms_server::sts::{StsRequest, encode_error, jwt_claims, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(StsRequest::AssumeRoleWithWebIdentity(request)) => {
            let claims = jwt_claims(&request.web_identity_token);
            kubekms_fuzz::trace(format_args!("parsed, claims: {}", claims.is_some()));
            assert!(!request.role_session_name.is_empty());
        }
        Err(e) => {
            assert!((400..500).contains(&e.status), "{e:?}");
            let xml = encode_error(&e, "fuzz-request");
            assert!(xml.contains(e.code));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jwt_claims(text);
    }
});
