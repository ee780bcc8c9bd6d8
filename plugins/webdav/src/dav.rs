//! WebDAV wire details: the PROPFIND body, multistatus parsing, href paths, basic auth.

use std::io::BufRead;

use percent_encoding::percent_decode_str;
use quick_xml::Reader;
use quick_xml::events::Event;

/// Asks for the two properties a listing needs.
pub const PROPFIND_BODY: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/></D:prop></D:propfind>"#
);

/// One `<response>` of a multistatus answer.
#[derive(Debug, Default, PartialEq)]
pub struct DavEntry {
    /// The href as sent (still percent-encoded, possibly a full URL).
    pub href: String,
    pub is_dir: bool,
    pub size: Option<u64>,
}

/// Parses a multistatus body as it streams in. Element names are matched by local name,
/// whatever prefix the server binds to `DAV:`.
pub fn parse_multistatus<R: BufRead>(input: R) -> Result<Vec<DavEntry>, quick_xml::Error> {
    let mut reader = Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut cur: Option<DavEntry> = None;
    let mut length = String::new();
    loop {
        let event = reader.read_event_into(&mut buf)?;
        let text: Option<String> = match &event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if name == "response" {
                    cur = Some(DavEntry::default());
                } else if name == "getcontentlength" {
                    length.clear();
                } else if name == "collection"
                    && stack.iter().any(|s| s == "resourcetype")
                    && let Some(c) = cur.as_mut()
                {
                    c.is_dir = true;
                }
                stack.push(name);
                None
            }
            Event::Empty(e) => {
                if e.local_name().as_ref() == "collection"
                    && stack.iter().any(|s| s == "resourcetype")
                    && let Some(c) = cur.as_mut()
                {
                    c.is_dir = true;
                }
                None
            }
            Event::End(_) => {
                match stack.pop().as_deref() {
                    Some("response") => {
                        if let Some(c) = cur.take() {
                            out.push(c);
                        }
                    }
                    Some("getcontentlength") => {
                        if let (Some(c), Ok(n)) = (cur.as_mut(), length.trim().parse::<u64>()) {
                            c.size = Some(n);
                        }
                    }
                    _ => {}
                }
                None
            }
            Event::Text(t) => Some(t.xml10_content().into_owned()),
            Event::CData(t) => Some(t.as_ref().to_string()),
            Event::GeneralRef(r) => Some(if let Ok(Some(c)) = r.resolve_char_ref() {
                c.to_string()
            } else {
                match r.xml10_content().as_ref() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                }
                .to_string()
            }),
            Event::Eof => break,
            _ => None,
        };
        if let Some(text) = text {
            let n = stack.len();
            let top = stack.last().map(String::as_str);
            if top == Some("href") && n >= 2 && stack[n - 2] == "response" {
                if let Some(c) = cur.as_mut() {
                    c.href.push_str(&text);
                }
            } else if top == Some("getcontentlength") {
                length.push_str(&text);
            }
        }
        buf.clear();
    }
    Ok(out)
}

/// The decoded path of an href (`http://host/a%20b/` or `/a%20b/` -> `/a b`), with repeated
/// slashes collapsed and no trailing slash, so hrefs and request paths compare.
pub fn href_path(href: &str) -> String {
    let h = href.trim();
    let path = match h.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => h,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    normalize(&percent_decode_str(path).decode_utf8_lossy())
}

/// Collapses repeated slashes and drops a trailing one ("/" stays "").
pub fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    out
}

/// RFC 4648 base64, for the basic authorization header.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multistatus() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<D:multistatus xmlns:D="DAV:">
 <D:response><D:href>/repo/</D:href>
  <D:propstat><D:prop><D:resourcetype><D:collection xmlns:D="DAV:"/></D:resourcetype></D:prop>
   <D:status>HTTP/1.1 200 OK</D:status></D:propstat>
  <D:propstat><D:prop><D:getcontentlength/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
 </D:response>
 <response xmlns="DAV:"><href>http://h:1/repo/a%20b&amp;c</href>
  <propstat><prop><resourcetype/><getcontentlength>1234</getcontentlength></prop></propstat>
 </response>
</D:multistatus>"#;
        let v = parse_multistatus(xml.as_bytes()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], DavEntry { href: "/repo/".into(), is_dir: true, size: None });
        assert_eq!(
            v[1],
            DavEntry { href: "http://h:1/repo/a%20b&c".into(), is_dir: false, size: Some(1234) }
        );
        assert_eq!(href_path(&v[1].href), "/repo/a b&c");
        assert_eq!(href_path("/repo//x/"), "/repo/x");
        assert_eq!(href_path("/"), "");
    }

    #[test]
    fn encodes_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
