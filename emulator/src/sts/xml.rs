//! A small XML writer for STS answers: element names are constants of this
//! crate, every text value is escaped, and characters XML 1.0 cannot carry
//! at all (most control characters) become U+FFFD.

pub const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Escape text for element content or a quoted attribute value.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept, but as references so no parser normalises them away.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Builds one document; elements close in the order they opened.
#[derive(Default)]
pub struct Xml {
    out: String,
    open: Vec<&'static str>,
}

impl Xml {
    /// A document whose root element carries the STS namespace.
    pub fn root(name: &'static str) -> Self {
        let mut xml = Self::default();
        xml.out
            .push_str(&format!("<{name} xmlns=\"{}\">", escape(NAMESPACE)));
        xml.open.push(name);
        xml
    }

    pub fn open(&mut self, name: &'static str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.open.push(name);
        self
    }

    pub fn close(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
        self
    }

    /// `<name>escaped value</name>`.
    pub fn text(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.out
            .push_str(&format!("<{name}>{}</{name}>", escape(value)));
        self
    }

    /// Close whatever is open and return the document.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y\nz"), "x\u{FFFD}y&#10;z");
        let mut xml = Xml::root("R");
        xml.open("A").text("B", "</B><evil/>").close();
        assert_eq!(
            xml.finish(),
            "<R xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><A><B>&lt;/B&gt;&lt;evil/&gt;</B></A></R>"
        );
    }
}
