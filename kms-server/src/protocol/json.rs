//! A small JSON writer for responses. Responses are flat and known; writing them directly
//! lets blobs be base64-encoded straight into the output buffer (no intermediate string,
//! no second pass to escape characters base64 never contains), which matters on the hot
//! path of Encrypt and Decrypt.

use time::OffsetDateTime;

/// Writes one JSON object; fields are added in order, nesting with `object`/`array`.
#[derive(Debug)]
pub struct JsonWriter {
    out: Vec<u8>,
    /// Whether the innermost open container already has a member.
    has_member: Vec<bool>,
}

impl JsonWriter {
    /// A writer with room for `capacity` bytes, with the top-level object open.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        Self {
            out,
            has_member: vec![false],
        }
    }

    fn separator(&mut self) {
        if let Some(has) = self.has_member.last_mut() {
            if *has {
                self.out.push(b',');
            }
            *has = true;
        }
    }

    fn name(&mut self, name: &str) {
        self.separator();
        write_escaped(&mut self.out, name);
        self.out.push(b':');
    }

    /// `"name":"value"`.
    pub fn string(&mut self, name: &str, value: &str) -> &mut Self {
        self.name(name);
        write_escaped(&mut self.out, value);
        self
    }

    /// `"name":"<base64 of bytes>"`.
    pub fn blob(&mut self, name: &str, bytes: &[u8]) -> &mut Self {
        self.name(name);
        self.out.push(b'"');
        super::base64::encode_into(&mut self.out, bytes);
        self.out.push(b'"');
        self
    }

    /// `"name":true|false`.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.name(name);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// `"name":<integer>`.
    pub fn integer(&mut self, name: &str, value: i64) -> &mut Self {
        self.name(name);
        self.out.extend_from_slice(value.to_string().as_bytes());
        self
    }

    /// `"name":<epoch seconds>`, AWS JSON's timestamp form (a number, fraction optional).
    pub fn timestamp(&mut self, name: &str, value: OffsetDateTime) -> &mut Self {
        self.name(name);
        let seconds = value.unix_timestamp();
        let millis = value.millisecond();
        if millis == 0 {
            self.out.extend_from_slice(seconds.to_string().as_bytes());
        } else {
            self.out
                .extend_from_slice(format!("{seconds}.{millis:03}").as_bytes());
        }
        self
    }

    /// `"name":["a","b"]`.
    pub fn strings<'a>(
        &mut self,
        name: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> &mut Self {
        self.name(name);
        self.out.push(b'[');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_escaped(&mut self.out, value);
        }
        self.out.push(b']');
        self
    }

    /// `"name":{"k":"v",...}` from string pairs.
    pub fn string_map<'a>(
        &mut self,
        name: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> &mut Self {
        self.begin_object(name);
        for (key, value) in pairs {
            self.string(key, value);
        }
        self.end()
    }

    /// Opens `"name":{`; close with [`JsonWriter::end`].
    pub fn begin_object(&mut self, name: &str) -> &mut Self {
        self.name(name);
        self.out.push(b'{');
        self.has_member.push(false);
        self
    }

    /// Opens `"name":[`; add elements with [`JsonWriter::element`], close with
    /// [`JsonWriter::end_array`].
    pub fn begin_array(&mut self, name: &str) -> &mut Self {
        self.name(name);
        self.out.push(b'[');
        self.has_member.push(false);
        self
    }

    /// Opens an object element of the current array; close with [`JsonWriter::end`].
    pub fn element(&mut self) -> &mut Self {
        self.separator();
        self.out.push(b'{');
        self.has_member.push(false);
        self
    }

    /// Closes the innermost object.
    pub fn end(&mut self) -> &mut Self {
        self.has_member.pop();
        self.out.push(b'}');
        self
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) -> &mut Self {
        self.has_member.pop();
        self.out.push(b']');
        self
    }

    /// Closes the top-level object and returns the bytes.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        while self.has_member.pop().is_some() {
            self.out.push(b'}');
        }
        self.out
    }
}

/// Writes a JSON string literal, escaping as RFC 8259 requires.
pub fn write_escaped(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f | 0x7f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json_that_serde_reads_back() {
        let mut w = JsonWriter::with_capacity(16);
        w.string("A", "quote\" back\\ nl\n ctl\u{1} é")
            .blob("B", &[0, 1, 2, 255])
            .blob("Empty", &[])
            .bool("C", true)
            .integer("D", -5)
            .timestamp(
                "T",
                OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("t"),
            )
            .timestamp(
                "Tm",
                OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_250_000_000).expect("t"),
            )
            .strings("L", ["x", "y"])
            .string_map("M", [("k", "v"), ("k2", "v2")]);
        w.begin_array("Arr");
        w.element().string("N", "1").end();
        w.element().string("N", "2").end();
        w.end_array();
        w.begin_object("O").bool("In", false).end();
        let bytes = w.finish();
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(value["A"], "quote\" back\\ nl\n ctl\u{1} é");
        assert_eq!(value["B"], "AAEC/w==");
        assert_eq!(value["Empty"], "");
        assert_eq!(value["C"], true);
        assert_eq!(value["D"], -5);
        assert_eq!(value["T"], 1_700_000_000);
        assert_eq!(value["Tm"].as_f64(), Some(1_700_000_000.25));
        assert_eq!(value["L"], serde_json::json!(["x", "y"]));
        assert_eq!(value["M"]["k2"], "v2");
        assert_eq!(value["Arr"][1]["N"], "2");
        assert_eq!(value["O"]["In"], false);
    }
}
