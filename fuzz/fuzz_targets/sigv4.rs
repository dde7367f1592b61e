//! SigV4 verification of kubekms-server (auth::Authenticator, auth::sigv4): the
//! Authorization header, X-Amz-Date, scope, clock, canonical request and signature.
//! Input: a request as HTTP/1.1 text (the seeds are botocore's requests, signed with
//! the fuzz credential). The clock is the request's own X-Amz-Date when it has one, so
//! signed seeds reach the signature check. Invariants: never a panic; a request that
//! verifies stops verifying when a byte of its signature or of its body changes.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use kubekms_server::auth::SignedParts;
use kubekms_server::auth::sigv4::parse_amz_date;
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

struct Parsed {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn parse(data: &[u8]) -> Option<Parsed> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..end]).ok()?;
    let body = data[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = Method::from_bytes(request_line.next()?.as_bytes()).ok()?;
    let uri: Uri = request_line.next()?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim_start()).ok()?;
        headers.append(name, value);
    }
    Some(Parsed {
        method,
        uri,
        headers,
        body,
    })
}

fn verify(p: &Parsed, service: &str, now: OffsetDateTime) -> bool {
    let parts = SignedParts {
        method: &p.method,
        uri: &p.uri,
        headers: &p.headers,
    };
    kubekms_fuzz::authenticator()
        .authenticate(service, parts, &p.body, now)
        .is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(mut p) = parse(data) else {
        return;
    };
    let service = if p.headers.contains_key("x-amz-target") {
        "kms"
    } else {
        "sts"
    };
    let now = p
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| parse_amz_date(d).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    if !verify(&p, service, now) {
        return;
    }
    // It verified: the signature and the body are bound.
    kubekms_fuzz::trace(format_args!("verified for {service}"));
    let auth = p
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .expect("a verified request has an Authorization header")
        .to_owned();
    let at = auth.rfind("Signature=").expect("a signature") + "Signature=".len();
    let mut flipped = auth.clone().into_bytes();
    flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
    let flipped = HeaderValue::from_bytes(&flipped).expect("still a header value");
    p.headers.insert(http::header::AUTHORIZATION, flipped);
    assert!(!verify(&p, service, now), "a changed signature verified");
    p.headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&auth).expect("header"),
    );
    p.body.push(b' ');
    assert!(!verify(&p, service, now), "a changed body verified");
});
