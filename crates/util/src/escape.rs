//! HTML escaping, for every page anticamera renders itself.

use std::borrow::Cow;

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['<', '>', '&', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_five_specials() {
        assert_eq!(html_escape("<a&'\">"), "&lt;a&amp;&#39;&quot;&gt;");
        assert_eq!(html_escape("&amp;"), "&amp;amp;");
        assert_eq!(html_escape("«è» <b>"), "«è» &lt;b&gt;");
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            html_escape("Ciao, mondo"),
            Cow::Borrowed("Ciao, mondo")
        ));
        assert!(matches!(html_escape(""), Cow::Borrowed("")));
        assert!(matches!(html_escape("a<b"), Cow::Owned(_)));
    }
}
