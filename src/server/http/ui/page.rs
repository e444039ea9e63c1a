//! The console's HTML: escaping, the page frame, and the few pieces pages share. Everything
//! from the database or the caller passes through [`esc`] (or [`attr`]) on its way in.

use std::fmt::Write;

/// Text for an HTML element's content or a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment for a link (IDs are validated where they are made; this keeps any other
/// text from leaving its segment).
pub fn seg(text: &str) -> String {
    crate::api::Route::segment(text)
}

/// Who is signed in, for the page frame: their name and the session's CSRF token.
pub struct Who<'a> {
    pub admin: &'a str,
    pub csrf: &'a str,
}

/// A whole page: the frame (title, navigation, who is signed in, sign-out) around `body`.
pub fn page(title: &str, who: Option<&Who<'_>>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · lifeline</title><link rel=\"stylesheet\" href=\"/ui/style.css\"></head><body>\
         <header><a class=\"brand\" href=\"/ui/\">lifeline escrow</a>",
        esc(title)
    );
    if let Some(who) = who {
        let _ = write!(
            out,
            "<nav><a href=\"/ui/\">Queue</a><a href=\"/ui/machines\">Machines</a>\
             <a href=\"/ui/audit\">Audit log</a></nav>\
             <form class=\"who\" method=\"post\" action=\"/ui/sign-out\">{}\
             <span>Signed in as <b>{}</b></span> <button>Sign out</button></form>",
            csrf_field(who.csrf),
            esc(who.admin)
        );
    }
    let _ = writeln!(
        out,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// The hidden field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A table with a header row; cells are HTML already.
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\" id=\"{}\">{}</p>", esc(id), esc(empty));
    }
    let mut out = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// Label/value pairs (values are HTML already).
pub fn facts(pairs: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (k, v) in pairs {
        let _ = write!(out, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    out.push_str("</dl>");
    out
}

/// A link whose text is escaped.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// A time (seconds since the epoch) as ISO 8601, UTC.
pub fn time(epoch: i64) -> String {
    format!("<time>{}</time>", esc(&crate::api::iso8601(epoch)))
}

/// A message box: `kind` is "error", "ok" or "note".
pub fn notice(kind: &str, html: &str) -> String {
    format!("<p class=\"notice {kind}\" role=\"status\">{html}</p>")
}

/// The one-time password, in its groups, large, for reading aloud.
pub fn otp(groups: &str) -> String {
    let mut out = String::from("<ol class=\"otp\" id=\"otp\">");
    for g in groups.split('-') {
        let _ = write!(out, "<li>{}</li>", esc(g));
    }
    out.push_str("</ol>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_become_markup() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(seg("../a b"), "..%2Fa%20b");
        assert!(otp("123456-654321").contains("<li>123456</li><li>654321</li>"));
    }
}
