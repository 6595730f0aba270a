//! Reading cookies out of `Cookie` request headers (RFC 6265 §5.4 shape: `; `-separated
//! `name=value` pairs, possibly over several header lines), allocation-free.

use http::header::{HeaderMap, COOKIE};

/// Value of the first cookie called `name` in the request's `Cookie` headers (there may be
/// several header lines, each with `; `-separated `name=value` pairs). Surrounding double quotes
/// are removed. Allocation-free; a value that is not UTF-8 is treated as absent.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|line| cookie_in_header(line.as_bytes(), name))
}

/// [`cookie_value`] on one raw `Cookie` header value.
pub fn cookie_in_header<'a>(line: &'a [u8], name: &str) -> Option<&'a str> {
    let name = name.as_bytes();
    if name.is_empty() {
        return None;
    }
    for pair in line.split(|&b| b == b';') {
        let pair = trim_ows(pair);
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (k, v) = (trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..]));
        if k != name {
            continue;
        }
        let v = match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        return std::str::from_utf8(v).ok();
    }
    None
}

/// Whether `name` is a cookie name RFC 6265 allows: a non-empty token (visible ASCII without
/// separators).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_value(&h, "a"), None);
        h.append(COOKIE, HeaderValue::from_static("a=1; b=2;c=3 ;  d = 4"));
        h.append(
            COOKIE,
            HeaderValue::from_static("e=\"quoted\"; a=second; f="),
        );
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), Some("3"));
        assert_eq!(cookie_value(&h, "d"), Some("4"));
        assert_eq!(cookie_value(&h, "e"), Some("quoted"));
        assert_eq!(cookie_value(&h, "f"), Some(""));
        assert_eq!(cookie_value(&h, "g"), None);
        assert_eq!(cookie_value(&h, ""), None);
        assert_eq!(cookie_value(&h, "1"), None);
        // a name that is a suffix/prefix of another must not match
        assert_eq!(cookie_in_header(b"xa=1; ab=2", "a"), None);
        assert_eq!(cookie_in_header(b"=x; a=b=c", "a"), Some("b=c"));
        assert_eq!(cookie_in_header(b";;;", "a"), None);
        assert_eq!(cookie_in_header(b"a=\"", "a"), Some("\""));
        assert_eq!(cookie_in_header(b"junk\xff; a=ok", "a"), Some("ok"));
        assert_eq!(cookie_in_header(b"a=\xff", "a"), None);
    }

    #[test]
    fn whitespace_and_quotes_around_values() {
        assert_eq!(cookie_in_header(b"\ta\t=\t\"v w\"\t", "a"), Some("v w"));
        assert_eq!(cookie_in_header(b"a=\"\"", "a"), Some(""));
        assert_eq!(cookie_in_header(b"a= \"x", "a"), Some("\"x"));
        // the first of two cookies with the same name wins, across header lines too
        assert_eq!(cookie_in_header(b"a=1; a=2", "a"), Some("1"));
        // names are case-sensitive and never trimmed into a match
        assert_eq!(cookie_in_header(b"A=1", "a"), None);
        assert_eq!(cookie_in_header(b"a b=1", "b"), None);
        // a pair without '=' is skipped, not taken as a name with an empty value
        assert_eq!(cookie_in_header(b"a; b=2", "a"), None);
        assert_eq!(cookie_in_header(b"a; b=2", "b"), Some("2"));
    }

    #[test]
    fn cookie_names() {
        for ok in ["a", "portal_session", "__Host-x", "a.b~c!#$%&'*+^`|"] {
            assert!(valid_cookie_name(ok), "{ok:?}");
        }
        for bad in [
            "", "a b", "a=b", "a;b", "a,b", "\"a\"", "a/b", "a\tb", "è", "a[0]", "{a}",
        ] {
            assert!(!valid_cookie_name(bad), "{bad:?}");
        }
    }
}
