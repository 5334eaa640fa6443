//! A JSON object written straight into a line buffer, without building a
//! `serde_json::Value` per event (hot path: one per event streamed).

use std::io::Write as _;

use super::text::{hex_if_not_utf8, hex_of};
use crate::kernel::decode::{Args, Comm};

/// A JSON object written straight into a line buffer.
pub struct JsonObject<'b> {
    buf: &'b mut Vec<u8>,
    first: bool,
}

impl<'b> JsonObject<'b> {
    pub fn new(buf: &'b mut Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string; one holding bytes that are not UTF-8 (a cgroup path, see
    /// `cgroup::path_text`) is written lossily, its exact bytes beside it
    /// as `<key>_hex`.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        if crate::host::cgroup::has_raw(value) {
            let _ = serde_json::to_writer(&mut *self.buf, &crate::host::cgroup::lossy(value));
            let hex = crate::output::text::hex_of(&crate::host::cgroup::path_bytes(value));
            return self.str(&format!("{key}_hex"), &hex);
        }
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.buf, value);
        self
    }

    /// A string from a `Display` value that needs no JSON escaping (e.g. a
    /// timestamp), written without an intermediate `String`.
    pub fn plain(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        let _ = write!(self.buf, "\"{value}\"");
        self
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn comm(&mut self, key: &str, value: Option<Comm>) -> &mut Self {
        match value {
            Some(c) => self.bytes(key, c.as_bytes()),
            None => self.raw(key, "null"),
        }
    }

    /// A name from the kernel: a JSON string, and when the name is not
    /// UTF-8 (the string then has U+FFFD in place of some bytes), its exact
    /// bytes beside it as `<key>_hex`.
    pub fn bytes(&mut self, key: &str, value: &[u8]) -> &mut Self {
        match std::str::from_utf8(value) {
            Ok(text) => self.str(key, text),
            Err(_) => {
                self.str(key, &String::from_utf8_lossy(value));
                let hex = hex_if_not_utf8(value).unwrap_or_default();
                self.str(&format!("{key}_hex"), &hex)
            }
        }
    }

    /// Arguments as an array of strings (`null`: none), and when one is not
    /// UTF-8, all of them in hex as `<key>_hex`.
    pub fn args(&mut self, key: &str, value: Option<&Args>) -> &mut Self {
        let Some(args) = value else {
            return self.raw(key, "null");
        };
        let lossy: Vec<_> = args.iter().map(String::from_utf8_lossy).collect();
        self.key(key);
        let _ = serde_json::to_writer(&mut *self.buf, &lossy);
        if args.iter().any(|a| std::str::from_utf8(a).is_err()) {
            let hex: Vec<String> = args.iter().map(hex_of).collect();
            self.key(&format!("{key}_hex"));
            let _ = serde_json::to_writer(&mut *self.buf, &hex);
        }
        self
    }

    pub fn num(&mut self, key: &str, value: impl itoa_like::Num) -> &mut Self {
        self.key(key);
        value.write(self.buf);
        self
    }

    pub fn opt_num<N: itoa_like::Num>(&mut self, key: &str, value: Option<N>) -> &mut Self {
        match value {
            Some(v) => self.num(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// `value` must already be valid JSON.
    pub fn raw(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.buf.extend_from_slice(value.as_bytes());
        self
    }

    pub fn finish(self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

mod itoa_like {
    use std::io::Write as _;

    pub trait Num: Copy {
        fn write(self, buf: &mut Vec<u8>);
    }
    macro_rules! num {
        ($($t:ty),*) => {$(
            impl Num for $t {
                fn write(self, buf: &mut Vec<u8>) {
                    let _ = write!(buf, "{self}");
                }
            }
        )*};
    }
    num!(u32, u64, i32, i64, usize);
}
