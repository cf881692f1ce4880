//! Human output: a line per test as it ends, then the captured output of the
//! tests that did not pass, a table of every leak and a summary line.

use std::fmt::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width};
use leakcheck::record::escape_control;
use leakcheck::{Outcome, Summary, TestRecord};

/// Leaks listed per test in human output; the JSON report has them all.
const SHOWN_PER_TEST: usize = 10;

/// "... and 9990 more (9990 fd)" when a test leaked more than is shown.
fn more_leaks(record: &TestRecord) -> Option<String> {
    let hidden = record.leaks.get(SHOWN_PER_TEST..).filter(|rest| !rest.is_empty())?;
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for leak in hidden {
        match counts.iter_mut().find(|(kind, _)| *kind == leak.kind()) {
            Some((_, count)) => *count += 1,
            None => counts.push((leak.kind(), 1)),
        }
    }
    let by_kind: Vec<String> = counts.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
    Some(format!("... and {} more ({}; all of them in --message-format json)", hidden.len(), by_kind.join(", ")))
}

/// The status word of an outcome, right-aligned to 8 columns like cargo's.
fn status_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "PASS",
        Outcome::Leaked => "LEAK",
        Outcome::Failed => "FAIL",
        Outcome::Ignored => "IGNORED",
        Outcome::TimedOut => "TIMEOUT",
    }
}

/// The colour of an outcome's status word (stripped by anstream where
/// colours do not belong: not a terminal, NO_COLOR, CARGO_TERM_COLOR=never).
fn status_style(outcome: Outcome) -> anstyle::Style {
    let color = match outcome {
        Outcome::Passed => anstyle::AnsiColor::Green,
        Outcome::Leaked => anstyle::AnsiColor::Magenta,
        Outcome::Failed | Outcome::TimedOut => anstyle::AnsiColor::Red,
        Outcome::Ignored => anstyle::AnsiColor::Yellow,
    };
    anstyle::Style::new().fg_color(Some(color.into())).bold()
}

/// `    LEAK [   0.004s] leaky fd::forgotten_file` plus one indented line per leak.
pub(crate) fn progress_line(record: &TestRecord) -> String {
    let style = status_style(record.outcome);
    let mut line = format!(
        "{style}{:>8}{style:#} [{:>8.3}s] {} {}",
        status_word(record.outcome),
        record.duration_ms as f64 / 1000.0,
        escape_control(&record.binary),
        escape_control(&record.name)
    );
    if let Some(message) = &record.message {
        for message_line in message.lines() {
            let _ = write!(line, "\n{:>20}{message_line}", "");
        }
    }
    for leak in record.leaks.iter().take(SHOWN_PER_TEST) {
        let _ = write!(line, "\n{:>20}leaked {}", "", leak.describe());
        for site in leak.sites().iter().take(SITES_SHOWN) {
            let _ = write!(line, "\n{:>22}{}", "", site.describe());
        }
    }
    if let Some(rest) = more_leaks(record) {
        let _ = write!(line, "\n{:>20}{rest}", "");
    }
    for warning in &record.warnings {
        let _ = write!(line, "\n{:>20}warning: leaked {}", "", warning.describe());
    }
    for fd in &record.closed_fds {
        let name = match fd {
            0 => " (stdin)",
            1 => " (stdout)",
            2 => " (stderr)",
            _ => "",
        };
        let _ = write!(line, "\n{:>20}note: closed fd {fd}{name}, which was open before the test", "");
    }
    for allowed in &record.allowed {
        let _ = write!(line, "\n{:>20}allowed {} ({})", "", allowed.leak.describe(), allowed.reason);
    }
    if !record.unchecked.is_empty() && record.outcome.is_failure() {
        let _ = write!(line, "\n{:>20}not checked: {}", "", record.unchecked.join(", "));
    }
    line
}

/// Heap sites shown per leak (the JSON report has up to five).
const SITES_SHOWN: usize = 3;

const NO_SITES_AT_ALL_NOTE: &str = "note: no creation site was found for these leaks. Stacks come from re-running a \
leaking test with leakcheck's code inside it: #[leakcheck::test] or leakcheck::main!().";

const NO_SITE_NOTE: &str = "note: no creation site for some leaks (\"-\"). Stacks come from re-running a leaking \
test with leakcheck's code inside it: #[leakcheck::test] or leakcheck::main!() (fds and children on x86_64 Linux). \
For a plain #[test], \"named at\" is the line of the test that names the file, thread or program; a leak with \
nothing to name (an eventfd, an unnamed thread, a grandchild) has no site.";

/// The "where" cell: the sites of a leak, one per line, or "-".
fn where_column(leak: &leakcheck::Leak) -> String {
    let sites: Vec<String> = leak
        .sites()
        .iter()
        .take(SITES_SHOWN)
        .map(|site| match (site.bytes, site.role) {
            (Some(bytes), _) => format!("{} ({bytes} B)", site.location),
            (None, leakcheck::record::SiteRole::Running) => format!("running {}", site.location),
            (None, leakcheck::record::SiteRole::Mentioned) => format!("named at {}", site.location),
            (None, _) => site.location.clone(),
        })
        .collect();
    if sites.is_empty() {
        "-".to_owned()
    } else {
        sites.join("\n")
    }
}

/// A test's label in the leak table: `binary name` on one line when it is
/// short; else the binary on its own line and the name broken after `::`
/// into lines of at most [`LABEL_WIDTH`] characters (a longer piece stays
/// whole).
fn test_label(binary: &str, name: &str) -> String {
    let (binary, name) = (&*escape_control(binary), &*escape_control(name));
    let whole = format!("{binary} {name}");
    if whole.chars().count() <= LABEL_WIDTH {
        return whole;
    }
    let mut lines = vec![binary.to_owned()];
    let mut line = String::new();
    let pieces: Vec<&str> = name.split_inclusive("::").collect();
    for piece in pieces {
        if !line.is_empty() && line.chars().count() + piece.chars().count() > LABEL_WIDTH {
            lines.push(std::mem::take(&mut line));
        }
        line.push_str(piece);
    }
    lines.push(line);
    lines.join("\n")
}

/// Widest line of a test label before it is broken.
const LABEL_WIDTH: usize = 24;

/// Everything printed after the last test: outputs, the leak table, the summary.
pub(crate) fn final_report(records: &[TestRecord], summary: &Summary) -> String {
    let mut out = String::new();
    for record in records.iter().filter(|record| record.outcome.is_failure()) {
        let Some(output) = record.output.as_deref().map(without_libtest_framing).filter(|output| !output.is_empty())
        else {
            continue;
        };
        let _ = writeln!(out, "\n--- {} {} {}: output ---", status_word(record.outcome), record.binary, record.name);
        out.push_str(output.trim_end());
        out.push('\n');
    }

    let leaking: Vec<&TestRecord> = records.iter().filter(|record| !record.leaks.is_empty()).collect();
    if !leaking.is_empty() {
        let mut table = Table::new();
        table.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
        // The "where" column only when some leak has a site (never in
        // zero-config runs, where it would be all dashes).
        let any_site = leaking.iter().flat_map(|record| &record.leaks).any(|leak| !leak.sites().is_empty());
        let mut header = vec!["test", "kind", "what leaked"];
        header.extend(any_site.then_some("where"));
        table.set_header(header);
        // Test names break only at `::` (and between binary and name), never
        // mid-word: the column is at least as wide as its longest line.
        // Only on a narrow terminal: piped output is not wrapped at all.
        let narrow = table.width().is_some_and(|width| width < 120);
        let labels: Vec<String> = leaking
            .iter()
            .map(|record| match narrow {
                true => test_label(&record.binary, &record.name),
                false => format!("{} {}", record.binary, record.name),
            })
            .collect();
        let widest = labels.iter().flat_map(|label| label.lines()).map(|line| line.chars().count()).max();
        if let (Some(column), Some(widest)) = (table.column_mut(0), widest) {
            column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(widest as u16)));
        }
        for (record, test) in leaking.into_iter().zip(labels) {
            for leak in record.leaks.iter().take(SHOWN_PER_TEST) {
                let mut row = vec![test.clone(), leak.kind().to_owned(), leak.describe()];
                row.extend(any_site.then(|| where_column(leak)));
                table.add_row(row);
            }
            if let Some(rest) = more_leaks(record) {
                table.add_row([test, String::new(), rest]);
            }
        }
        let _ = writeln!(out, "\nLeaks:\n{table}");
        if any_site && records.iter().flat_map(|record| &record.leaks).any(|leak| leak.sites().is_empty()) {
            let _ = writeln!(out, "{NO_SITE_NOTE}");
        } else if !any_site {
            let _ = writeln!(out, "{NO_SITES_AT_ALL_NOTE}");
        }
        let mut hinted: Vec<&str> = Vec::new();
        for leak in records.iter().flat_map(|record| &record.leaks) {
            if !hinted.contains(&leak.hint()) {
                hinted.push(leak.hint());
                let _ = writeln!(out, "hint ({}): {}", leak.kind(), leak.hint());
            }
        }
    }

    out.push_str(&super::singleton_section(records));

    let _ = write!(
        out,
        "\nSummary [{:>8.3}s] {} {}: {} passed, {} leaked, {} failed, {} timed out, {} ignored",
        summary.duration_ms as f64 / 1000.0,
        summary.tests,
        if summary.tests == 1 { "test" } else { "tests" },
        summary.passed,
        summary.leaked,
        summary.failed,
        summary.timed_out,
        summary.ignored
    );
    let not_run = summary.not_run;
    if not_run > 0 {
        let reason = if summary.interrupted { "the run was interrupted" } else { "fail-fast; use --no-fail-fast" };
        let _ = write!(out, "; {not_run} not run ({reason})");
    }
    out.push('\n');
    out
}

/// The test's own output: libtest's framing of a one-test run ("running 1
/// test", "test x ... ok", "test result: ...", blank lines) says nothing here.
fn without_libtest_framing(output: &str) -> String {
    let kept: Vec<&str> = output
        .lines()
        .filter(|line| {
            let line = line.trim_end();
            !(line.is_empty()
                || line == "running 1 test"
                || line.starts_with("test result: ")
                || (line.starts_with("test ") && (line.ends_with(" ... ok") || line.ends_with(" ... FAILED"))))
        })
        .collect();
    kept.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_framing_is_dropped_and_the_test_output_kept() {
        let output = "\nrunning 1 test\nhello from the test\ntest a::b ... ok\n\ntest result: ok. 1 passed; 0 failed\n";
        assert_eq!(without_libtest_framing(output), "hello from the test");
        assert_eq!(without_libtest_framing("\nrunning 1 test\ntest a ... ok\n"), "");
    }
}

#[cfg(test)]
mod label_tests {
    use super::test_label;

    #[test]
    fn long_labels_break_after_double_colons_only() {
        assert_eq!(test_label("leaky::leaks", "fd::x"), "leaky::leaks fd::x");
        assert_eq!(
            test_label("leaky::leaks", "thread::forgotten_tokio_runtime"),
            "leaky::leaks\nthread::\nforgotten_tokio_runtime"
        );
        assert_eq!(
            test_label("p::b", "a::b::c::some_rather_long_test_name"),
            "p::b\na::b::c::\nsome_rather_long_test_name"
        );
    }
}
