//! AWS JSON 1.1 request decoding of kubekms-server (protocol::decode): the operation from
//! `X-Amz-Target`, then the body into the typed request with botocore's model limits.
//! Input: `<Operation or X-Amz-Target>\n<body>` (the seeds are what botocore sends).
//! Invariants: never a panic; decoding is a pure function (the same body decodes the same
//! way twice).
#![no_main]

use kubekms_server::protocol::decode::decode;
use kubekms_server::protocol::operation::ApiOperation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (name, body) = (&data[..split], &data[split + 1..]);
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let Some(operation) = ApiOperation::from_name(name).or_else(|| ApiOperation::from_target(name))
    else {
        return;
    };
    let first = decode(operation, body);
    let second = decode(operation, body);
    assert_eq!(
        format!("{:?}", first.as_ref().err()),
        format!("{:?}", second.as_ref().err())
    );
    assert_eq!(first.is_ok(), second.is_ok());
    kubekms_fuzz::trace(format_args!("{operation}: {:?}", first.as_ref().err()));
});
