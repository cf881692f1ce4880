//! What the configuration does to each record: kinds turned off or to
//! warnings, allow rules with reasons, the baseline. Applied to every record
//! as it ends, before anyone sees it.

use std::sync::Mutex;

use leakcheck::options::glob_match;
use leakcheck::record::AllowedLeak;
use leakcheck::{Leak, Outcome, TestRecord};

use crate::baseline::{Baseline, Entry};
use crate::config::{AllowRule, Severity};

/// The rules of a run.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    /// Per [`LeakKind`], by its index.
    pub(crate) severities: [Option<Severity>; 5],
    pub(crate) rules: Vec<AllowRule>,
    pub(crate) baseline: Option<Baseline>,
    /// How often each rule matched.
    used: Mutex<Vec<usize>>,
}

impl Policy {
    pub(crate) fn new(severities: [Option<Severity>; 5], rules: Vec<AllowRule>, baseline: Option<Baseline>) -> Policy {
        let used = Mutex::new(vec![0; rules.len()]);
        Policy { severities, rules, baseline, used }
    }

    /// Applies severities, allow rules and the baseline to `record`.
    pub(crate) fn apply(&self, record: &mut TestRecord) {
        let mut per_rule = vec![0usize; self.rules.len()];
        for leak in std::mem::take(&mut record.leaks) {
            match self.severities[leak.leak_kind().index()].unwrap_or(Severity::Fail) {
                Severity::Off => {
                    let kind = leak.kind().to_owned();
                    if !record.unchecked.contains(&kind) {
                        record.unchecked.push(kind);
                    }
                }
                Severity::Warn => record.warnings.push(leak),
                Severity::Fail => {
                    if let Some(index) = self.matching_rule(record, &leak, &per_rule) {
                        per_rule[index] += 1;
                        let rule = &self.rules[index];
                        record.allowed.push(AllowedLeak { leak, reason: format!("{} ({})", rule.reason, rule.origin) });
                    } else if let Some(baseline) = self.baseline.as_ref().filter(|b| b.take(&Entry::of(record, &leak)))
                    {
                        let reason = format!("in the baseline {}", baseline.path.display());
                        record.allowed.push(AllowedLeak { leak, reason });
                    } else {
                        record.leaks.push(leak);
                    }
                }
            }
        }
        let mut used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (total, now) in used.iter_mut().zip(per_rule) {
            *total += now;
        }
        if record.outcome == Outcome::Leaked && record.leaks.is_empty() {
            record.outcome = Outcome::Passed;
        }
    }

    fn matching_rule(&self, record: &TestRecord, leak: &Leak, per_rule: &[usize]) -> Option<usize> {
        let kind = leak.leak_kind();
        self.rules.iter().enumerate().position(|(index, rule)| {
            rule.kind == kind
                && rule.max.is_none_or(|max| per_rule[index] < max)
                && rule.tests.as_deref().is_none_or(|tests| {
                    glob_match(tests, &record.name) || glob_match(tests, &format!("{} {}", record.binary, record.name))
                })
                && match leak {
                    Leak::Fd { target, detail, .. } => {
                        rule.pattern.as_deref().is_none_or(|p| glob_match(p, target))
                            && rule.detail.as_deref().is_none_or(|p| glob_match(p, detail))
                    }
                    Leak::Thread { name, unnamed, waiting_in, .. } => {
                        // A thread the code never named carries its
                        // creator's name; `(unnamed)` matches it.
                        rule.pattern.as_deref().is_none_or(|p| glob_match(p, name) || (*unnamed && p == "(unnamed)"))
                            && rule
                                .waiting_in
                                .as_deref()
                                .is_none_or(|p| waiting_in.as_deref().is_some_and(|w| glob_match(p, w)))
                    }
                    Leak::Child { cmdline, .. } => rule.pattern.as_deref().is_none_or(|p| cmdline_matches(p, cmdline)),
                    Leak::Heap { bytes, sites, .. } => {
                        rule.bytes.is_none_or(|limit| *bytes <= limit)
                            && rule.pattern.as_deref().is_none_or(|p| {
                                sites.iter().any(|site| glob_match(p, &site.location) || glob_match(p, &site.function))
                            })
                    }
                    Leak::File { path, .. } => rule.pattern.as_deref().is_none_or(|p| glob_match(p, path)),
                }
        })
    }

    /// Each rule with how many leaks it accepted.
    pub(crate) fn rule_usage(&self) -> Vec<(&AllowRule, usize)> {
        let used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.rules.iter().zip(used.iter().copied()).collect()
    }
}

/// Whether a `cmdline` rule matches a child: its command line, or, for a
/// zombie (`[comm]`, whose arguments are gone), the program of the rule's
/// pattern (`sleep *` matches a zombie `sleep`).
fn cmdline_matches(pattern: &str, cmdline: &str) -> bool {
    if glob_match(pattern, cmdline) {
        return true;
    }
    let zombie = cmdline.starts_with('[') && cmdline.ends_with(']');
    zombie && {
        let program = leakcheck::shape::program_of(cmdline);
        let wanted = leakcheck::shape::program_of(pattern);
        glob_match(&wanted, &program) || glob_match(pattern, &program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakcheck::LeakKind;

    fn record(leaks: Vec<Leak>) -> TestRecord {
        TestRecord {
            binary: "b".into(),
            name: "pool::starts".into(),
            outcome: Outcome::Leaked,
            duration_ms: 1,
            message: None,
            leaks,
            unchecked: vec![],
            allowed: vec![],
            warnings: vec![],
            singletons: vec![],
            closed_fds: vec![],
            output: None,
        }
    }

    fn thread(name: &str) -> Leak {
        Leak::Thread {
            tid: 1,
            name: name.into(),
            state: "sleeping".into(),
            unnamed: false,
            waiting_in: None,
            sites: vec![],
        }
    }

    #[test]
    fn rules_allow_up_to_max_per_test_and_count_their_matches() {
        let rule = AllowRule {
            kind: LeakKind::Thread,
            tests: Some("pool::*".into()),
            pattern: Some("worker-*".into()),
            detail: None,
            waiting_in: None,
            bytes: None,
            max: Some(2),
            reason: "the pool".into(),
            origin: "f:3".into(),
        };
        let policy = Policy::new([None; 5], vec![rule], None);
        let mut leaky = record(vec![thread("worker-1"), thread("worker-2"), thread("worker-3"), thread("flusher")]);
        policy.apply(&mut leaky);
        assert_eq!(leaky.leaks, vec![thread("worker-3"), thread("flusher")]);
        assert_eq!(leaky.allowed.len(), 2);
        assert_eq!(leaky.allowed[0].reason, "the pool (f:3)");
        assert_eq!(leaky.outcome, Outcome::Leaked);
        let mut allowed = record(vec![thread("worker-1")]);
        policy.apply(&mut allowed);
        assert_eq!(allowed.outcome, Outcome::Passed);
        assert_eq!(policy.rule_usage()[0].1, 3);
    }

    #[test]
    fn unnamed_threads_are_matched_as_unnamed_and_by_what_they_wait_in() {
        let rule = AllowRule {
            kind: LeakKind::Thread,
            tests: None,
            pattern: Some("(unnamed)".into()),
            detail: None,
            waiting_in: Some("futex_*".into()),
            bytes: None,
            max: None,
            reason: "rayon's global pool".into(),
            origin: "f:1".into(),
        };
        let policy = Policy::new([None; 5], vec![rule], None);
        let unnamed = |waiting: &str| Leak::Thread {
            tid: 2,
            name: "pool::starts".into(),
            state: "sleeping".into(),
            unnamed: true,
            waiting_in: Some(waiting.into()),
            sites: vec![],
        };
        let mut record = record(vec![unnamed("futex_do_wait"), unnamed("do_epoll_wait"), thread("pool::starts")]);
        policy.apply(&mut record);
        assert_eq!(record.allowed.len(), 1);
        assert_eq!(record.leaks, vec![unnamed("do_epoll_wait"), thread("pool::starts")]);
    }

    #[test]
    fn warn_and_off_do_not_fail_the_test() {
        let heap = Leak::Heap { bytes: 10, blocks: 1, indirect: false, sites: vec![] };
        let policy = Policy::new([None, Some(Severity::Off), None, Some(Severity::Warn), None], vec![], None);
        let mut both = record(vec![thread("t"), heap.clone()]);
        policy.apply(&mut both);
        assert_eq!(both.outcome, Outcome::Passed);
        assert_eq!(both.warnings, vec![heap]);
        assert_eq!(both.unchecked, vec!["thread".to_owned()]);
    }

    #[test]
    fn a_cmdline_rule_matches_its_child_running_or_zombie() {
        assert!(cmdline_matches("sleep *", "sleep 30"));
        assert!(cmdline_matches("sleep *", "[sleep]"));
        assert!(cmdline_matches("/bin/true", "[true]"));
        assert!(!cmdline_matches("sleep *", "[cat]"));
        assert!(!cmdline_matches("sleep *", "cat sleep"));
    }
}
