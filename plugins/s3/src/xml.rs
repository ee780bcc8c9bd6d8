//! A tiny XML tree, enough to read S3 responses (element names without namespaces, text).

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;

#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child element called `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child called `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Parses a document and returns its root element.
pub fn parse(doc: &str) -> Result<Node, String> {
    let mut reader = Reader::from_str(doc);
    // The stack's first entry collects the root element.
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        match reader.read_event().map_err(|e| format!("bad XML: {e}"))? {
            Event::Start(e) => {
                stack.push(Node { name: e.local_name().into_inner().to_string(), ..Node::default() })
            }
            Event::Empty(e) => {
                let node = Node { name: e.local_name().into_inner().to_string(), ..Node::default() };
                stack.last_mut().expect("stack has a base").children.push(node);
            }
            Event::End(_) => {
                if stack.len() < 2 {
                    return Err("bad XML: unbalanced end tag".into());
                }
                let node = stack.pop().expect("checked");
                stack.last_mut().expect("checked").children.push(node);
            }
            Event::Text(t) => stack.last_mut().expect("stack has a base").text.push_str(&t.xml10_content()),
            Event::CData(t) => stack.last_mut().expect("stack has a base").text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let text = &mut stack.last_mut().expect("stack has a base").text;
                match r.resolve_char_ref().map_err(|e| format!("bad XML: {e}"))? {
                    Some(c) => text.push(c),
                    None => {
                        let name = r.into_inner();
                        match resolve_predefined_entity(&name) {
                            Some(s) => text.push_str(s),
                            None => return Err(format!("bad XML: unknown entity &{name};")),
                        }
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err("bad XML: unclosed element".into());
    }
    stack.pop().expect("checked").children.into_iter().next().ok_or_else(|| "empty XML document".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Contents><Key>a&amp;b&#x41;</Key><Size>3</Size></Contents><Contents><Key>c</Key><Size>0</Size></Contents>
<IsTruncated>false</IsTruncated><Empty/></ListBucketResult>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "ListBucketResult");
        let keys: Vec<_> = root.all("Contents").map(|c| c.text_of("Key").unwrap()).collect();
        assert_eq!(keys, ["a&bA", "c"]);
        assert!(root.child("Empty").is_some());
    }
}
