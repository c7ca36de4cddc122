//! The report page: a self-contained `index.html` (inline style, one inline script that checks
//! that every figure loaded) that shows the figures and the numbers as tables. Every reference
//! is a relative path inside `report/`; nothing is fetched from the network.
use std::fmt::Write;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str =
    "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1500px;color:#111;padding:0 16px}\
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:.92em}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#444}\
.note{background:#fff8e1;border-left:4px solid #f0c040;padding:6px 10px;font-size:.92em}\
.muted{color:#666;font-size:.9em}nav a{margin-right:14px}";

/// Builds the page.
pub struct Html {
    body: String,
    nav: Vec<(String, String)>,
    title: String,
}

impl Html {
    /// A page titled `title`.
    pub fn new(title: &str) -> Self {
        Self { body: String::new(), nav: Vec::new(), title: title.to_string() }
    }

    /// A section heading (also listed in the navigation bar).
    pub fn section(&mut self, id: &str, heading: &str) {
        self.nav.push((id.to_string(), heading.to_string()));
        let _ = writeln!(self.body, "<h2 id=\"{}\">{}</h2>", esc(id), esc(heading));
    }

    /// A paragraph of text (escaped).
    pub fn p(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p>{}</p>", esc(text));
    }

    /// A highlighted note (escaped).
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p class=\"note\">{}</p>", esc(text));
    }

    /// A figure: `stem` is `figures/<name>` (PNG shown, SVG linked).
    pub fn figure(&mut self, stem: &str, caption: &str) {
        let _ = writeln!(
            self.body,
            "<figure><a href=\"{s}.svg\"><img src=\"{s}.png\" alt=\"{c}\"></a><figcaption>{c} <a href=\"{s}.svg\">SVG</a></figcaption></figure>",
            s = esc(stem),
            c = esc(caption)
        );
    }

    /// A table; cells that parse as numbers are right-aligned.
    pub fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        self.body.push_str("<table><thead><tr>");
        for h in head {
            let _ = write!(self.body, "<th>{}</th>", esc(h));
        }
        self.body.push_str("</tr></thead><tbody>\n");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                let numeric = !c.is_empty()
                    && c.trim_end_matches(['%', ' ']).replace([',', '.', '-', '+', 'e'], "").chars().all(|ch| ch.is_ascii_digit());
                let _ = write!(self.body, "<td{}>{}</td>", if numeric { " class=\"n\"" } else { "" }, esc(c));
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</tbody></table>\n");
    }

    /// A two-column table of facts: a label (header cell) and a value per row.
    pub fn facts(&mut self, rows: &[(&str, String)]) {
        self.body.push_str("<table><tbody>\n");
        for (k, v) in rows {
            let _ = writeln!(self.body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        self.body.push_str("</tbody></table>\n");
    }

    /// The finished page.
    pub fn finish(self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>{t}</title><style>{STYLE}</style></head>\n<body>\n<h1>{t}</h1>\n<nav>",
            t = esc(&self.title)
        );
        for (id, h) in &self.nav {
            let _ = write!(s, "<a href=\"#{}\">{}</a>", esc(id), esc(h));
        }
        s.push_str("</nav>\n");
        s.push_str(&self.body);
        // After every image has loaded or failed, record how many rendered (read by the
        // headless-browser test and visible to anyone who inspects the page).
        s.push_str(
            "<p class=\"muted\" id=\"figures-status\"></p>\n<script>\
             window.addEventListener('load',function(){var i=document.images,ok=0;\
             for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)ok++;}\
             document.body.setAttribute('data-figures-loaded',ok+'/'+i.length);\
             document.getElementById('figures-status').textContent=ok+' of '+i.length+' figures loaded';});\
             </script>\n</body></html>\n",
        );
        s
    }
}
