//! Which detectors run, and what each leaves alone: `--off` and
//! `--ignore`, as earlyoom's `--avoid`/`--ignore` do for its victims.
//!
//! A rule names a detector (or all), a field and a regular expression:
//! `crashloop:program=^/usr/bin/grep$`, `fork:cgroup=/ci/`,
//! `program=^/opt/db/`. `program` matches a process's program path (its
//! last exec), `cgroup` its cgroup directory as records show it. Matching
//! is a search anywhere in the text (anchor with `^`/`$`).
//!
//! What "ignored" means per detector: `crashloop`, its exits do not count;
//! `fork`, the cgroup is not judged and the program is never the offender
//! (what it starts is judged on its own); `memory`, the program is never
//! the offender and a pool whose cgroup matches raises nothing; `blocked`,
//! the task is neither reported nor counted in a storm; `leak`, the cgroup
//! is not judged and the program is never the offender.

use std::fmt;

use regex::Regex;

/// guard's detectors, as `--off` and `--ignore` name them.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    Fork,
    Memory,
    Crashloop,
    Blocked,
    Leak,
}

impl Detector {
    pub const ALL: [Detector; 5] = [
        Detector::Fork,
        Detector::Memory,
        Detector::Crashloop,
        Detector::Blocked,
        Detector::Leak,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Fork => "fork",
            Detector::Memory => "memory",
            Detector::Crashloop => "crashloop",
            Detector::Blocked => "blocked",
            Detector::Leak => "leak",
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Program,
    Cgroup,
}

/// One `--ignore` rule.
#[derive(Clone, Debug)]
pub struct IgnoreRule {
    /// `None`: every detector.
    pub detector: Option<Detector>,
    pub field: Field,
    pub regex: Regex,
}

/// Parses `[DETECTOR:]program=REGEX` or `[DETECTOR:]cgroup=REGEX`.
pub fn parse_ignore(text: &str) -> Result<IgnoreRule, String> {
    let usage = "expected [DETECTOR:]program=REGEX or [DETECTOR:]cgroup=REGEX, e.g. \
                 crashloop:program=^/usr/bin/grep$";
    let (head, pattern) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: {usage}"))?;
    let (detector, field) = match head.split_once(':') {
        Some((d, f)) => (Some(d), f),
        None => (None, head),
    };
    let detector = match detector {
        None => None,
        Some(name) => Some(
            Detector::ALL
                .into_iter()
                .find(|d| d.name() == name)
                .ok_or_else(|| {
                    format!(
                        "{text:?}: no detector {name:?}; choose fork, memory, crashloop, blocked or leak"
                    )
                })?,
        ),
    };
    let field = match field {
        "program" => Field::Program,
        "cgroup" => Field::Cgroup,
        other => return Err(format!("{text:?}: no field {other:?}; {usage}")),
    };
    program_regex(pattern).map(|regex| IgnoreRule {
        detector,
        field,
        regex,
    })
}

/// Parses a regular expression on a program path (`--crashloop-ignore`).
pub fn program_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("an empty pattern would match everything".into());
    }
    Regex::new(pattern).map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))
}

/// What one detector leaves alone.
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    program: Vec<Regex>,
    cgroup: Vec<Regex>,
}

impl Ignore {
    /// The rules that apply to `detector`.
    pub fn for_detector(rules: &[IgnoreRule], detector: Detector) -> Self {
        let mut ignore = Ignore::default();
        for rule in rules
            .iter()
            .filter(|r| r.detector.is_none_or(|d| d == detector))
        {
            match rule.field {
                Field::Program => ignore.program.push(rule.regex.clone()),
                Field::Cgroup => ignore.cgroup.push(rule.regex.clone()),
            }
        }
        ignore
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty() && self.cgroup.is_empty()
    }

    pub fn program(&self, program: Option<&str>) -> bool {
        program.is_some_and(|p| self.program.iter().any(|r| r.is_match(p)))
    }

    pub fn cgroup(&self, cgroup: Option<&str>) -> bool {
        cgroup.is_some_and(|c| self.cgroup.iter().any(|r| r.is_match(c)))
    }

    /// Whether a process running `program` in `cgroup` is left alone.
    pub fn matches(&self, program: Option<&str>, cgroup: Option<&str>) -> bool {
        self.program(program) || self.cgroup(cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_apply_to_their_detector() {
        let rules = [
            parse_ignore("crashloop:program=^/usr/bin/grep$").expect("rule"),
            parse_ignore("cgroup=/ci/").expect("rule"),
        ];
        let crash = Ignore::for_detector(&rules, Detector::Crashloop);
        assert!(crash.matches(Some("/usr/bin/grep"), None));
        assert!(!crash.matches(Some("/usr/bin/grepx"), None));
        assert!(crash.matches(Some("/bin/app"), Some("/sys/fs/cgroup/ci/job")));
        let fork = Ignore::for_detector(&rules, Detector::Fork);
        assert!(
            !fork.matches(Some("/usr/bin/grep"), None),
            "crashloop's rule"
        );
        assert!(fork.cgroup(Some("/sys/fs/cgroup/ci/job")));
        assert!(!fork.matches(None, None));
    }

    #[test]
    fn bad_rules_say_what_is_expected() {
        for (bad, says) in [
            ("grep", "expected [DETECTOR:]"),
            ("forks:program=x", "no detector \"forks\""),
            ("fork:exe=x", "no field \"exe\""),
            ("program=(", "not a regular expression"),
            ("program=", "match everything"),
        ] {
            let err = parse_ignore(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
