//! Renders [`Diagnostic`]s for people, with ariadne: the message, the source
//! lines with labelled spans, and the hint; and the nearest-name suggestions
//! ("did you mean") that hints give.

use ariadne::{Config, IndexType, Label, Report, ReportKind};
use optc_grammar::Diagnostic;

use crate::program::SourceFile;

/// Lines longer than this are not quoted (a minified or binary file would
/// flood the terminal); the location is given instead.
const MAX_QUOTED_LINE: usize = 400;

/// Renders one diagnostic against the files it points into.
pub fn render(diagnostic: &Diagnostic, files: &[SourceFile], color: bool) -> String {
    let quotable = diagnostic.labels.iter().all(|label| {
        files.get(label.span.file.0 as usize).is_some_and(|file| {
            longest_line_around(&file.text, label.span.range()) <= MAX_QUOTED_LINE
        })
    });
    if diagnostic.labels.is_empty() || !quotable {
        return render_plain(diagnostic, files);
    }
    let primary = diagnostic.labels[0].span;
    let name = |id: u32| files[id as usize].name.clone();
    let mut report = Report::build(ReportKind::Error, (name(primary.file.0), primary.range()))
        .with_config(
            Config::default()
                .with_index_type(IndexType::Byte)
                .with_color(color),
        )
        .with_message(&diagnostic.message);
    for label in &diagnostic.labels {
        report = report.with_label(
            Label::new((name(label.span.file.0), label.span.range())).with_message(&label.message),
        );
    }
    if let Some(hint) = &diagnostic.hint {
        report = report.with_help(hint);
    }
    // Only the files the labels point into: indexing every file of the
    // program (the whole standard library) per diagnostic made many
    // diagnostics cost quadratic time.
    let mut cited: Vec<usize> = diagnostic
        .labels
        .iter()
        .map(|l| l.span.file.0 as usize)
        .collect();
    cited.sort_unstable();
    cited.dedup();
    let cache = ariadne::sources(
        cited
            .into_iter()
            .filter_map(|i| files.get(i))
            .map(|f| (f.name.clone(), f.text.clone())),
    );
    let mut out = Vec::new();
    match report.finish().write(cache, &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => render_plain(diagnostic, files),
    }
}

fn longest_line_around(text: &str, range: std::ops::Range<usize>) -> usize {
    let start = text
        .get(..range.start.min(text.len()))
        .map_or(0, |before| before.rfind('\n').map_or(0, |i| i + 1));
    let end = text
        .get(range.end.min(text.len())..)
        .map_or(text.len(), |after| {
            after.find('\n').map_or(text.len(), |i| range.end + i)
        });
    end.saturating_sub(start)
}

/// `error: message`, `--> file:line:column` per label, and the hint.
fn render_plain(diagnostic: &Diagnostic, files: &[SourceFile]) -> String {
    let mut out = format!("Error: {}\n", diagnostic.message);
    for label in &diagnostic.labels {
        if let Some(file) = files.get(label.span.file.0 as usize) {
            let offset = (label.span.start as usize).min(file.text.len());
            let before = file.text.get(..offset).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            out.push_str(&format!(
                "   ╭─[ {}:{line}:{column} ]\n   │ {}\n",
                file.name, label.message
            ));
        }
    }
    if let Some(hint) = &diagnostic.hint {
        out.push_str(&format!("   │ Help: {hint}\n"));
    }
    out
}

/// The candidate nearest to `name` by edit distance, if it is near enough to be a typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, c)| d <= (name.len().max(c.len()) / 3).max(1))
        .min()
        .map(|(_, c)| c)
}

/// The Levenshtein distance between `a` and `b`, in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}
