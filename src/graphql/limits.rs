//! Limits on the shape of a document, checked as early as each can be: its size in bytes and in
//! lexical tokens before it is parsed (a lexer pass, linear and allocation-free), then its
//! aliases, root fields, directives per field and what `__typename` may carry, before
//! validation. Each refusal is `BAD_USER_INPUT` with `extensions.limit` naming the setting.

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Pos, ServerError, ServerResult, Variables};

use crate::config::Settings;

/// The limits of one schema.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    pub max_bytes: usize,
    pub max_tokens: usize,
    pub max_aliases: usize,
    pub max_root_fields: usize,
    pub max_directives_per_field: usize,
}

impl DocumentLimits {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            max_bytes: s.max_document_bytes,
            max_tokens: s.max_document_tokens,
            max_aliases: s.max_aliases,
            max_root_fields: s.max_root_fields,
            max_directives_per_field: s.max_directives_per_field,
        }
    }

    /// Checks what can be checked on the text alone.
    pub fn check_text(&self, query: &str) -> ServerResult<()> {
        if query.len() > self.max_bytes {
            return Err(refusal(
                format!(
                    "the document is {} bytes; at most {} are allowed",
                    query.len(),
                    self.max_bytes
                ),
                "VOICEGRAPH_MAX_DOCUMENT_BYTES",
                None,
            ));
        }
        if count_tokens(query, self.max_tokens).is_none() {
            return Err(refusal(
                format!("the document has more than {} tokens", self.max_tokens),
                "VOICEGRAPH_MAX_DOCUMENT_TOKENS",
                None,
            ));
        }
        Ok(())
    }

    /// Checks the parsed document.
    pub fn check_document(&self, doc: &ExecutableDocument) -> ServerResult<()> {
        let mut walk = Walk {
            limits: self,
            aliases: 0,
        };
        for (_, op) in doc.operations.iter() {
            let roots = root_fields(doc, &op.node.selection_set.node, &mut HashSet::new());
            if roots > self.max_root_fields {
                return Err(refusal(
                    format!(
                        "the operation selects {roots} root fields; at most {} are allowed",
                        self.max_root_fields
                    ),
                    "VOICEGRAPH_MAX_ROOT_FIELDS",
                    Some(op.pos),
                ));
            }
            walk.set(&op.node.selection_set.node)?;
        }
        for f in doc.fragments.values() {
            walk.set(&f.node.selection_set.node)?;
        }
        if walk.aliases > self.max_aliases {
            return Err(refusal(
                format!(
                    "the document has {} aliases; at most {} are allowed",
                    walk.aliases, self.max_aliases
                ),
                "VOICEGRAPH_MAX_ALIASES",
                None,
            ));
        }
        Ok(())
    }
}

fn refusal(message: String, limit: &str, pos: Option<Pos>) -> ServerError {
    coded_error(message, pos, "BAD_USER_INPUT", Some(limit))
}

/// An error with its `extensions.code` and, for a limit, the setting it names.
pub(crate) fn coded_error(
    message: String,
    pos: Option<Pos>,
    code: &str,
    limit: Option<&str>,
) -> ServerError {
    let mut e = ServerError::new(message, pos);
    let mut x = async_graphql::ErrorExtensionValues::default();
    x.set("code", code);
    if let Some(limit) = limit {
        x.set("limit", limit);
    }
    e.extensions = Some(x);
    e
}

/// Fields an operation selects at its root, through its fragments (each fragment once).
fn root_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut HashSet<&'a str>,
) -> usize {
    set.items
        .iter()
        .map(|s| match &s.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(f) => root_fields(doc, &f.node.selection_set.node, seen),
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                match doc.fragments.get(name) {
                    Some(f) if seen.insert(name) => {
                        root_fields(doc, &f.node.selection_set.node, seen)
                    }
                    _ => 0,
                }
            }
        })
        .sum()
}

/// One pass over every selection of the document (fragments walked once, where defined).
struct Walk<'l> {
    limits: &'l DocumentLimits,
    aliases: usize,
}

impl Walk<'_> {
    fn set(&mut self, set: &SelectionSet) -> ServerResult<()> {
        for s in &set.items {
            let (directives, pos) = match &s.node {
                Selection::Field(f) => {
                    let field = &f.node;
                    self.aliases += usize::from(field.alias.is_some());
                    if field.name.node == "__typename" {
                        typename(field)?;
                    }
                    self.set(&field.selection_set.node)?;
                    (field.directives.len(), f.pos)
                }
                Selection::InlineFragment(f) => {
                    self.set(&f.node.selection_set.node)?;
                    (f.node.directives.len(), f.pos)
                }
                Selection::FragmentSpread(f) => (f.node.directives.len(), f.pos),
            };
            if directives > self.limits.max_directives_per_field {
                return Err(refusal(
                    format!(
                        "a selection has {directives} directives; at most {} are allowed",
                        self.limits.max_directives_per_field
                    ),
                    "VOICEGRAPH_MAX_DIRECTIVES_PER_FIELD",
                    Some(pos),
                ));
            }
        }
        Ok(())
    }
}

/// async-graphql's validation does not visit `__typename`, so what it may carry is checked
/// here: no arguments, and only `@skip(if:)` and `@include(if:)`.
fn typename(field: &async_graphql::parser::types::Field) -> ServerResult<()> {
    let invalid = |message: String, pos: Pos| {
        coded_error(message, Some(pos), "GRAPHQL_VALIDATION_FAILED", None)
    };
    if let Some((name, _)) = field.arguments.first() {
        return Err(invalid(
            format!(
                "Unknown argument \"{}\" on field \"__typename\": it takes none.",
                name.node
            ),
            name.pos,
        ));
    }
    for d in &field.directives {
        let name = d.node.name.node.as_str();
        if name != "skip" && name != "include" {
            return Err(invalid(format!("Unknown directive \"@{name}\"."), d.pos));
        }
        let only_if = d.node.arguments.len() == 1 && d.node.arguments[0].0.node == "if";
        if !only_if {
            return Err(invalid(
                format!("Directive \"@{name}\" takes exactly one argument, \"if\"."),
                d.pos,
            ));
        }
    }
    Ok(())
}

/// Counts the lexical tokens of a GraphQL document (the spec's punctuators, names, numbers and
/// strings; ignored tokens skipped); `None` as soon as there are more than `max`. A character
/// the grammar does not know counts as a token of its own (the parser refuses it later).
pub fn count_tokens(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut n = 0usize;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => {
                i += 1;
                continue;
            }
            0xEF if b[i..].starts_with(&[0xEF, 0xBB, 0xBF]) => {
                i += 3;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'.' if b[i..].starts_with(b"...") => i += 3,
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                loop {
                    if i >= b.len() {
                        break;
                    }
                    if b[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                    } else if b[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && !matches!(b[i], b'"' | b'\n' | b'\r') {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                i += 1;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
            }
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
            }
            _ => {
                // A punctuator, or one unknown character (UTF-8 sequences as one).
                i += 1;
                while i < b.len() && (b[i] & 0xC0) == 0x80 {
                    i += 1;
                }
            }
        }
        n += 1;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// The extension that applies [`DocumentLimits`] around parsing.
pub struct Limits(pub DocumentLimits);

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Limits(self.0))
    }
}

#[async_trait::async_trait]
impl Extension for Limits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        self.0.check_text(query)?;
        let doc = next.run(ctx, query, variables).await?;
        self.0.check_document(&doc)?;
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DocumentLimits {
        DocumentLimits {
            max_bytes: 1000,
            max_tokens: 100,
            max_aliases: 3,
            max_root_fields: 3,
            max_directives_per_field: 2,
        }
    }

    fn check(q: &str) -> Result<(), String> {
        let l = limits();
        l.check_text(q).map_err(|e| e.message.clone())?;
        let doc = async_graphql::parser::parse_query(q).map_err(|e| e.to_string())?;
        l.check_document(&doc).map_err(|e| e.message)
    }

    #[test]
    fn tokens_are_counted_as_the_spec_lexes_them() {
        assert_eq!(count_tokens("{ a }", 100), Some(3));
        assert_eq!(
            count_tokens(
                "query Q($v: [Int!]! = [1, -2.5e3]) { a(x: $v) @skip(if: true) }",
                100
            ),
            Some(33)
        );
        assert_eq!(count_tokens("# only a comment\n,,, \u{feff}", 100), Some(0));
        assert_eq!(
            count_tokens(r#"{ a(s: "x \" { } y", b: """ block \""" { """) }"#, 100),
            Some(11)
        );
        assert_eq!(
            count_tokens("{ ...F } fragment F on Q { a }", 100),
            Some(11)
        );
        assert_eq!(count_tokens("{ é }", 100), Some(3));
        assert_eq!(count_tokens("{ a a a a }", 4), None);
        assert_eq!(count_tokens("\"never closed", 10), Some(1));
    }

    #[test]
    fn each_limit_is_refused_naming_its_setting() {
        assert!(check("{ a b c }").is_ok());
        let long = format!("{{ a{} }}", " ".repeat(1000));
        assert!(check(&long).unwrap_err().contains("bytes"));
        let many = format!("{{ {} }}", "a ".repeat(120));
        assert!(check(&many).unwrap_err().contains("tokens"));
        assert!(check("{ a b c d }").unwrap_err().contains("root fields"));
        assert!(check("{ ...F ...F } fragment F on Q { a b c d }")
            .unwrap_err()
            .contains("root fields"));
        assert!(check("{ x { a: b c: d e: f g: h } }")
            .unwrap_err()
            .contains("aliases"));
        assert!(check("{ a @x @y @z }").unwrap_err().contains("directives"));
        assert!(check("{ a { ... @x @y @z { b } } }")
            .unwrap_err()
            .contains("directives"));
        let e = limits().check_text(&long).unwrap_err();
        let x = serde_json::to_value(e.extensions.unwrap()).unwrap();
        assert_eq!(x["limit"], "VOICEGRAPH_MAX_DOCUMENT_BYTES");
        assert_eq!(x["code"], "BAD_USER_INPUT");
    }

    #[test]
    fn typename_takes_no_arguments_and_only_skip_or_include() {
        assert!(check("{ __typename @skip(if: false) @include(if: true) }").is_ok());
        assert!(check("{ __typename(a: 1) }")
            .unwrap_err()
            .contains("Unknown argument"));
        assert!(check("{ __typename @aa }")
            .unwrap_err()
            .contains("Unknown directive"));
        assert!(check("{ __typename @skip }")
            .unwrap_err()
            .contains("exactly one argument"));
        assert!(check("fragment F on Q { __typename @x } { ...F }")
            .unwrap_err()
            .contains("Unknown directive"));
    }
}
