//! Per-test options of `#[leakcheck::test(...)]`: allow rules, skipped kinds,
//! grace. The macro builds them as constants; [`Options::judge`] applies them.

use std::time::Duration;

use crate::record::Leak;

/// A kind of resource a test can leak (`Kind::Fd`, ... in the macro's output).
pub use crate::record::LeakKind as Kind;

/// One allow rule: leaks of `kind` matching `pattern` are accepted, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow {
    /// Which kind it applies to.
    pub kind: Kind,
    /// Glob (`*`, `?`) on the fd target, the thread name or the child command
    /// line; `None` matches any. Unused for the heap.
    pub pattern: Option<&'static str>,
    /// At most this many leaks are accepted (`None`: any number).
    pub max: Option<usize>,
    /// For the heap: growth accepted, in bytes.
    pub bytes: Option<u64>,
    /// Why this is not a leak. Required.
    pub reason: &'static str,
}

/// Options of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Accepted leaks.
    pub allow: &'static [Allow],
    /// Kinds not checked at all.
    pub skip: &'static [Kind],
    /// Settling grace, in milliseconds (default [`DEFAULT_GRACE`]).
    pub grace_ms: Option<u64>,
    /// Repeat mode: run the test once to warm up, then this many times, each
    /// measured; a kind leaks only if it grew on every measured run.
    pub repeat: Option<u32>,
}

/// Settling grace when a test sets none.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(200);

/// Leaks split by the options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Leaks that fail the test.
    pub leaks: Vec<Leak>,
    /// Leaks accepted by an allow rule, with its reason.
    pub allowed: Vec<(Leak, &'static str)>,
}

impl Options {
    /// The settling grace.
    pub fn grace(&self) -> Duration {
        self.grace_ms.map_or(DEFAULT_GRACE, Duration::from_millis)
    }

    /// Measured runs in repeat mode (0: no repeat mode): the test's own
    /// `repeat`, else `LEAKCHECK_REPEAT` (set by `cargo leakcheck --repeat`).
    pub fn repeat_runs(&self) -> u32 {
        self.repeat
            .or_else(|| std::env::var(crate::env_names::REPEAT).ok().and_then(|runs| runs.parse().ok()))
            .unwrap_or(0)
    }

    /// Whether `kind` is checked.
    pub fn checks(&self, kind: Kind) -> bool {
        !self.skip.contains(&kind)
    }

    /// Splits `leaks` into failing and allowed ones; skipped kinds are dropped.
    pub fn judge(&self, leaks: Vec<Leak>) -> Judgement {
        let mut used = vec![0usize; self.allow.len()];
        let mut judgement = Judgement::default();
        for leak in leaks {
            if !self.checks(leak.leak_kind()) {
                continue;
            }
            let rule = self.allow.iter().enumerate().find(|(index, rule)| {
                rule.kind == leak.leak_kind() && rule.max.is_none_or(|max| used[*index] < max) && rule.accepts(&leak)
            });
            match rule {
                Some((index, rule)) => {
                    used[index] += 1;
                    judgement.allowed.push((leak, rule.reason));
                }
                None => judgement.leaks.push(leak),
            }
        }
        judgement
    }
}

impl Allow {
    fn accepts(&self, leak: &Leak) -> bool {
        let subject = match leak {
            Leak::Fd { target, .. } => target.as_str(),
            Leak::Thread { name, .. } => name.as_str(),
            Leak::Child { cmdline, .. } => cmdline.as_str(),
            Leak::Heap { bytes, .. } => return self.bytes.is_none_or(|limit| *bytes <= limit),
            Leak::File { path, .. } => path.as_str(),
        };
        self.pattern.is_none_or(|pattern| glob_match(pattern, subject))
    }
}

/// `*` matches any run of characters, `?` one character; all else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shells() {
        assert!(glob_match("tokio-*", "tokio-rt-worker"));
        assert!(glob_match("*.db", "/tmp/x.db"));
        assert!(glob_match("sleep ?0", "sleep 30"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("tokio-*", "flusher"));
        assert!(!glob_match("a*b", "acbd"));
        assert!(glob_match("a*b*c", "a-b-b-c"));
    }

    #[test]
    fn rules_accept_up_to_max_and_skip_drops_a_kind() {
        const RULES: &[Allow] =
            &[Allow { kind: Kind::Thread, pattern: Some("pool-*"), max: Some(1), bytes: None, reason: "one pool" }];
        let thread = |name: &str| Leak::Thread {
            tid: 1,
            name: name.into(),
            state: "sleeping".into(),
            unnamed: false,
            waiting_in: None,
            sites: vec![],
        };
        let options = Options { allow: RULES, skip: &[Kind::Heap], grace_ms: None, repeat: None };
        let judgement = options.judge(vec![
            thread("pool-1"),
            thread("pool-2"),
            thread("flusher"),
            Leak::Heap { bytes: 10, blocks: 1, indirect: false, sites: vec![] },
        ]);
        assert_eq!(judgement.allowed, vec![(thread("pool-1"), "one pool")]);
        assert_eq!(judgement.leaks, vec![thread("pool-2"), thread("flusher")]);
    }
}
