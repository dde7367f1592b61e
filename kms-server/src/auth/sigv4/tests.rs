use http::{HeaderMap, HeaderValue, Method, Uri};
use time::macros::datetime;

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

#[test]
fn parses_the_authorization_header() {
    let map = headers(&[("authorization", AUTH)]);
    let auth = parse_authorization(&map).expect("parse");
    assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
    assert_eq!(auth.scope(), "20150830/us-east-1/service/aws4_request");
    assert_eq!(auth.signed_headers, "host;x-amz-date");
    let compact = AUTH.replace(", ", ",");
    assert_eq!(
        parse_authorization(&headers(&[("authorization", &compact)])).expect("no spaces"),
        auth
    );
}

#[test]
fn malformed_authorization_headers() {
    assert_eq!(
        parse_authorization(&HeaderMap::new()),
        Err(AuthError::MissingAuthenticationToken)
    );
    let cases = [
        "Bearer abc",
        "AWS4-HMAC-SHA256",
        "AWS4-ECDSA-P256-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
    ];
    for case in cases {
        let error = parse_authorization(&headers(&[("authorization", case)])).expect_err(case);
        assert_eq!(
            error.aws_exception_name(),
            "IncompleteSignatureException",
            "{case}"
        );
    }
}

#[test]
fn amz_dates() {
    assert_eq!(
        parse_amz_date("20150830T123600Z").expect("date"),
        datetime!(2015-08-30 12:36:00 UTC)
    );
    for bad in [
        "20150830T123600",
        "2015-08-30T12:36:00Z",
        "20151330T123600Z",
        "20150830T256000Z",
        "2015083OT123600Z",
        "",
    ] {
        assert_eq!(
            parse_amz_date(bad).map_err(|e| e.aws_exception_name()),
            Err("IncompleteSignatureException"),
            "{bad}"
        );
    }
    assert_eq!(
        format_amz_date(datetime!(2015-08-30 12:36:00 UTC)),
        "20150830T123600Z"
    );
}

#[test]
fn scope_checks() {
    let map = headers(&[("authorization", AUTH)]);
    let auth = parse_authorization(&map).expect("parse");
    assert!(check_scope(&auth, "20150830T123600Z", "us-east-1", "service").is_ok());
    for (date, region, service, fragment) in [
        (
            "20150831T000000Z",
            "us-east-1",
            "service",
            "Date in Credential scope",
        ),
        ("20150830T123600Z", "eu-west-1", "service", "valid region"),
        ("20150830T123600Z", "us-east-1", "kms", "correct service"),
    ] {
        let error = check_scope(&auth, date, region, service).expect_err(fragment);
        assert_eq!(error.aws_exception_name(), "InvalidSignatureException");
        assert!(error.to_string().contains(fragment), "{error}");
    }
}

#[test]
fn clock_skew_is_fifteen_minutes_either_way() {
    let now = datetime!(2026-01-01 12:00:00 UTC);
    assert!(check_clock(now - Duration::minutes(15), now).is_ok());
    assert!(check_clock(now + Duration::minutes(15), now).is_ok());
    let old =
        check_clock(now - Duration::minutes(15) - Duration::seconds(1), now).expect_err("expired");
    assert!(
        old.to_string().starts_with(
            "Signature expired: 20260101T114459Z is now earlier than 20260101T114500Z"
        ),
        "{old}"
    );
    let future = check_clock(now + Duration::minutes(16), now).expect_err("future");
    assert!(
        future.to_string().starts_with("Signature not yet current"),
        "{future}"
    );
}

#[test]
fn canonical_uri_and_query() {
    assert_eq!(canonical_uri("/"), b"/");
    assert_eq!(canonical_uri(""), b"/");
    assert_eq!(canonical_uri("/a/./b/../c//d/"), b"/a/c/d/");
    assert_eq!(
        canonical_uri("/example space/%41"),
        b"/example%20space/%2541"
    );
    assert_eq!(canonical_query(None), b"");
    assert_eq!(canonical_query(Some("b=2&a=1&a=0&c")), b"a=0&a=1&b=2&c=");
    assert_eq!(canonical_query(Some("k=%7e%20x+y")), b"k=~%20x%2By");
}

#[test]
fn header_values_are_trimmed_collapsed_and_joined() {
    let map = headers(&[
        ("host", "example.com"),
        ("x-amz-date", "20150830T123600Z"),
        ("my-header1", "  value1  with   spaces "),
        ("my-header1", "second"),
    ]);
    let uri: Uri = "/".parse().expect("uri");
    let parts = SignedParts {
        method: &Method::POST,
        uri: &uri,
        headers: &map,
    };
    let canonical =
        canonical_request(parts, "host;my-header1;x-amz-date", "abc").expect("canonical");
    assert_eq!(
        String::from_utf8(canonical).expect("utf8"),
        "POST\n/\n\nhost:example.com\nmy-header1:value1 with spaces,second\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\nabc"
    );
    for signed in [
        "my-header1;x-amz-date",
        "host;my-header1",
        "host;missing;x-amz-date",
        "Host;x-amz-date",
    ] {
        let error = canonical_request(parts, signed, "abc").expect_err(signed);
        assert_eq!(
            error.aws_exception_name(),
            "IncompleteSignatureException",
            "{signed}"
        );
    }
}

/// AWS's published example (the get-vanilla case of the SigV4 test suite).
#[test]
fn aws_published_vanilla_example() {
    let map = headers(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
    ]);
    let uri: Uri = "/".parse().expect("uri");
    let parts = SignedParts {
        method: &Method::GET,
        uri: &uri,
        headers: &map,
    };
    let canonical =
        canonical_request(parts, "host;x-amz-date", &payload_hash(b"")).expect("canonical");
    let sts = string_to_sign(
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
        &canonical,
    );
    assert_eq!(
        String::from_utf8(sts.clone()).expect("utf8"),
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
    let key = derive_signing_key(
        b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "20150830",
        "us-east-1",
        "service",
    );
    assert!(
        verify_signature(
            &key,
            &sts,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
        .is_ok()
    );
    let error = verify_signature(
        &key,
        &sts,
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf30",
    )
    .expect_err("flipped");
    assert_eq!(error.aws_exception_name(), "InvalidSignatureException");
    assert!(
        verify_signature(
            &key,
            &sts,
            "5FA00FA31553B73EBF1942676E86291E8372FF2A2260956D9B8AAE1D763FBF31"
        )
        .is_err(),
        "upper-case hex is not the signature"
    );
    assert!(verify_signature(&key, &sts, "").is_err());
}
