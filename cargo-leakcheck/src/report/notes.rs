//! What the configuration did: how often each allow rule matched, rules that
//! matched nothing (stale), baseline entries that no longer leak.

use std::fmt::Write;

use leakcheck::TestRecord;

use crate::policy::Policy;

/// Lines for the end of the human report; empty without rules or baseline.
pub(crate) fn policy_notes(policy: &Policy, records: &[TestRecord]) -> String {
    let mut out = String::new();
    let usage = policy.rule_usage();
    if !usage.is_empty() {
        let _ = writeln!(out, "\nAllow rules:");
        for (rule, count) in &usage {
            let what = rule.pattern.as_deref().map(|p| format!(" `{p}`")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}: {}{what}: matched {count} {}{}",
                rule.origin,
                rule.kind.as_str(),
                if *count == 1 { "time" } else { "times" },
                if *count == 0 { " (stale: nothing leaks like this any more; remove the rule?)" } else { "" }
            );
        }
        for (rule, _) in usage.iter().filter(|(_, count)| *count == 0) {
            let _ = writeln!(out, "warning: allow rule at {} matched nothing in this run", rule.origin);
        }
    }
    if let Some(baseline) = &policy.baseline {
        let fixed = baseline.fixed(records);
        if !fixed.is_empty() {
            let _ = writeln!(
                out,
                "\nNo longer leaking ({} baseline {} of {}; refresh it with --write-baseline):",
                fixed.len(),
                if fixed.len() == 1 { "entry" } else { "entries" },
                baseline.path.display()
            );
            for entry in fixed {
                let _ = writeln!(out, "  {} {}: {} {}", entry.binary, entry.test, entry.kind, entry.identity);
            }
        }
    }
    out
}
