//! Task families of the synthetic zoo corpus, the held-out eval prompts and
//! the exact-match evaluator.
//!
//! This module owns *what* a task is ([`Task`], [`Sample`]) and *how an answer
//! is scored* ([`is_correct`], [`accuracy`], [`max_completion_chars`]). How
//! samples are produced (grammar, RNG, train/eval split) lives in
//! [`super::corpus`]; the exact line formats are documented there.
//!
//! Scoring contract: a model is given `sample.prompt` and greedily generates a
//! continuation. The continuation is cut at the first `'\n'`, trailing spaces
//! are trimmed, and the rest must equal `sample.completion` byte for byte. A
//! leading space is *not* forgiven, because every prompt already ends with the
//! separating space (or, for `recall`, with the `=` the value follows).

use std::borrow::Cow;

use super::corpus::{self, Split};

/// One task family of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    /// English-like sentences from a small grammar (language modelling only).
    Lang,
    /// Multi-digit addition and subtraction, zero-padded: `0407 + 1385 = 01792`.
    Arith,
    /// Close the open brackets: `brackets: ( [ { } -> ] )`.
    Brackets,
    /// Reverse a short list: `reverse: a b c d -> d c b a`.
    Reverse,
    /// Look up a key: `recall: k1=7 q3=2 z9=5 ; -> q3=2`.
    Recall,
    /// Training only, never scored: copy a list of keys (`copy: k1 q3 z9 -> k1 q3 z9`). Each
    /// answer token is the one that followed the previous answer token in the prompt: the
    /// match-then-copy step of a `recall` lookup, with an answer on every token.
    CopyDrill,
}

impl Task {
    /// Every task, in a fixed order (used for stable seeding and reports).
    pub const ALL: [Task; 6] = [
        Task::Lang,
        Task::Arith,
        Task::Brackets,
        Task::Reverse,
        Task::Recall,
        Task::CopyDrill,
    ];

    /// The tasks that have a single correct completion and are scored by
    /// exact match: everything but [`Task::Lang`] and the drill.
    pub const SKILLS: [Task; 4] = [Task::Arith, Task::Brackets, Task::Reverse, Task::Recall];

    /// Stable lowercase name, also used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Task::Lang => "lang",
            Task::Arith => "arith",
            Task::Brackets => "brackets",
            Task::Reverse => "reverse",
            Task::Recall => "recall",
            Task::CopyDrill => "copy_drill",
        }
    }

    /// Inverse of [`Task::name`]; `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether samples are a prompt and one correct completion (everything but [`Task::Lang`]).
    pub fn is_skill(self) -> bool {
        self != Task::Lang
    }

    /// Whether this task only exists to help training ([`Task::CopyDrill`]): not scored, and
    /// not in the tokenizer's corpus, so adding it left the tokenizer as it was.
    pub fn is_drill(self) -> bool {
        self == Task::CopyDrill
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One generated example: a prompt and the single correct completion.
///
/// For [`Task::Lang`] the prompt is empty and the completion holds one to
/// three sentences, so [`Sample::text`] is uniform across tasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sample {
    /// The task family this sample belongs to.
    pub task: Task,
    /// Everything the model is shown; for skills it ends with a space.
    pub prompt: String,
    /// The exact expected continuation, without the trailing newline.
    pub completion: String,
}

impl Sample {
    /// The full training line (prompt followed by completion, no newline).
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(self.prompt.len() + self.completion.len());
        s.push_str(&self.prompt);
        s.push_str(&self.completion);
        s
    }

    /// Which split this sample belongs to.
    ///
    /// Skills are split on the problem ([`Sample::problem_key`]), so an eval
    /// problem can never show up in training with any seed. Lang samples are
    /// split per sentence and every sentence of a sample lies in the same
    /// split by construction, so the first sentence decides.
    pub fn split(&self) -> Split {
        match self.task {
            Task::Lang => {
                // Sentences end in '.', so the first one runs up to the first '.'.
                let first = match self.completion.find('.') {
                    Some(i) => &self.completion[..=i],
                    None => self.completion.as_str(),
                };
                corpus::split_of(first)
            }
            _ => corpus::split_of(&self.problem_key()),
        }
    }

    /// The problem a skill prompt poses, written the way prompts were when the split was fixed
    /// (`407 + 1385 = `, `recall: k1=7 q3=2 ; q3 -> `), so that writing problems differently
    /// (zero-padded sums, a recall query in the pairs' own form) keeps every problem on its side
    /// of the split and leaves the held-out sets the same problems. Other prompts are their own key.
    pub fn problem_key(&self) -> Cow<'_, str> {
        let prompt = self.prompt.as_str();
        match self.task {
            Task::Arith => {
                let words: Vec<&str> = prompt.split(' ').collect();
                match words.as_slice() {
                    [a, op, b, "=", ""] => match (a.parse::<u32>(), b.parse::<u32>()) {
                        (Ok(a), Ok(b)) => Cow::Owned(format!("{a} {op} {b} = ")),
                        _ => Cow::Borrowed(prompt),
                    },
                    _ => Cow::Borrowed(prompt),
                }
            }
            Task::Recall => match prompt
                .strip_suffix('=')
                .and_then(|p| p.rsplit_once(" ; -> "))
            {
                Some((pairs, key)) => Cow::Owned(format!("{pairs} ; {key} -> ")),
                None => Cow::Borrowed(prompt),
            },
            _ => Cow::Borrowed(prompt),
        }
    }
}

/// Seed of the fixed eval stream; changing it changes every reported number.
pub const EVAL_SEED: u64 = 0x5eed_e7a1_2024_0001;

/// `n` held-out samples of `task` with pairwise distinct prompts (distinct
/// texts for [`Task::Lang`]), always the same for the same `n`.
///
/// Every sample is in [`Split::Eval`], so no prompt here appears in any
/// training text. Distinctness keeps accuracy from being dominated by a few
/// easy repeated problems. If the eval half of a problem space is smaller than
/// `n` (not the case for the current tasks at sane sizes) fewer samples are
/// returned rather than looping forever.
pub fn eval_set(task: Task, n: usize) -> Vec<Sample> {
    let mut rng = crate::rng::Rng::new(corpus::stream_seed(EVAL_SEED, task, Split::Eval));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    // Each attempt succeeds with high probability; the cap only guards a
    // problem space that is too small for the requested `n`.
    let max_attempts = n.saturating_mul(50).saturating_add(10_000);
    for _ in 0..max_attempts {
        if out.len() == n {
            break;
        }
        let s = corpus::sample_in(task, Split::Eval, &mut rng);
        let key = if task.is_skill() {
            s.prompt.clone()
        } else {
            s.completion.clone()
        };
        if seen.insert(key) {
            out.push(s);
        }
    }
    out
}

/// Exact-match check of a generated continuation against `sample`.
///
/// `generated` is the text produced *after* the prompt. Only its first line
/// counts (anything from the first `'\n'` on is ignored, so a decoder may
/// overrun), and trailing spaces are trimmed; nothing else is normalised.
pub fn is_correct(sample: &Sample, generated: &str) -> bool {
    let line = match generated.split_once('\n') {
        Some((first, _)) => first,
        None => generated,
    };
    line.trim_end_matches(' ') == sample.completion
}

/// Fraction of `samples` whose completion in `completions` (same order) is
/// correct per [`is_correct`].
///
/// A sample without a matching completion counts as wrong, so a short
/// `completions` slice can never inflate the score. Returns `0.0` for no
/// samples.
pub fn accuracy<S: AsRef<str>>(samples: &[Sample], completions: &[S]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let correct = samples
        .iter()
        .zip(completions)
        .filter(|(s, c)| is_correct(s, c.as_ref()))
        .count();
    correct as f64 / samples.len() as f64
}

/// Longest possible completion of `task` in chars, excluding the `'\n'` that
/// ends the line. A greedy decoder can stop after this many chars (or one
/// more, to see the newline) without ever cutting a correct answer short.
pub fn max_completion_chars(task: Task) -> usize {
    match task {
        Task::Lang => corpus::MAX_LANG_SAMPLE_CHARS,
        // Results are written with 5 digits (the largest sum is 9999 + 9999 = 19998).
        Task::Arith => 5,
        // At most MAX_BRACKET_DEPTH closers, separated by single spaces.
        Task::Brackets => 2 * corpus::MAX_BRACKET_DEPTH - 1,
        Task::Reverse => {
            let longest = corpus::REVERSE_WORDS
                .iter()
                .map(|w| w.len())
                .max()
                .unwrap_or(1)
                .max(1);
            corpus::MAX_REVERSE_ITEMS * (longest + 1) - 1
        }
        // Values are single digits.
        Task::Recall => 1,
        // Up to MAX_COPY_ITEMS two-char keys, space separated.
        Task::CopyDrill => corpus::MAX_COPY_ITEMS * 3 - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(task: Task, prompt: &str, completion: &str) -> Sample {
        Sample {
            task,
            prompt: prompt.to_string(),
            completion: completion.to_string(),
        }
    }

    #[test]
    fn names_round_trip() {
        for t in Task::ALL {
            assert_eq!(Task::from_name(t.name()), Some(t));
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!(Task::from_name("nope"), None);
        let scored: Vec<Task> = Task::ALL
            .into_iter()
            .filter(|t| t.is_skill() && !t.is_drill())
            .collect();
        assert_eq!(scored, Task::SKILLS);
    }

    #[test]
    fn evaluator_arith() {
        let s = sample(Task::Arith, "0407 + 1385 = ", "01792");
        assert_eq!(s.text(), "0407 + 1385 = 01792");
        assert!(is_correct(&s, "01792"));
        assert!(is_correct(&s, "01792\n"));
        assert!(is_correct(&s, "01792  \n0003 + 0004 = 00007"));
        // The padding is part of the answer.
        assert!(!is_correct(&s, "1792"));
        assert!(!is_correct(&s, "01793"));
        assert!(!is_correct(&s, "0179"));
        assert!(!is_correct(&s, "017920"));
        assert!(!is_correct(&s, "01792 + 1"));
        assert!(!is_correct(&s, " 01792"));
        assert!(!is_correct(&s, ""));
        assert!(!is_correct(&s, "\n01792"));
    }

    #[test]
    fn evaluator_brackets() {
        let s = sample(Task::Brackets, "brackets: ( [ { } -> ", "] )");
        assert!(is_correct(&s, "] )"));
        assert!(is_correct(&s, "] ) \nbrackets: <"));
        assert!(!is_correct(&s, "]"));
        assert!(!is_correct(&s, "] ) )"));
        assert!(!is_correct(&s, ") ]"));
        assert!(!is_correct(&s, "])"));
    }

    #[test]
    fn evaluator_reverse() {
        let s = sample(Task::Reverse, "reverse: a b c d -> ", "d c b a");
        assert!(is_correct(&s, "d c b a"));
        assert!(is_correct(&s, "d c b a\nreverse"));
        assert!(!is_correct(&s, "d c b"));
        assert!(!is_correct(&s, "d c b a a"));
        assert!(!is_correct(&s, "a b c d"));
    }

    #[test]
    fn evaluator_recall() {
        let s = sample(Task::Recall, "recall: k1=7 q3=2 z9=5 ; -> q3=", "2");
        assert!(is_correct(&s, "2"));
        assert!(is_correct(&s, "2 \n"));
        assert!(!is_correct(&s, "7"));
        assert!(!is_correct(&s, "2 5"));
        assert!(!is_correct(&s, "22"));
    }

    #[test]
    fn a_problem_keeps_its_split_however_it_is_written() {
        let padded = sample(Task::Arith, "0407 + 0085 = ", "00492");
        assert_eq!(padded.problem_key(), "407 + 85 = ");
        let recall = sample(Task::Recall, "recall: k1=7 q3=2 ; -> q3=", "2");
        assert_eq!(recall.problem_key(), "recall: k1=7 q3=2 ; q3 -> ");
        for s in [&padded, &recall] {
            assert_eq!(s.split(), corpus::split_of(&s.problem_key()));
        }
        // Prompts in no known form are their own key.
        let odd = sample(Task::Arith, "x + 1 = ", "1");
        assert_eq!(odd.problem_key(), "x + 1 = ");
        let brackets = sample(Task::Brackets, "brackets: ( -> ", ")");
        assert_eq!(brackets.problem_key(), brackets.prompt);
    }

    #[test]
    fn evaluator_lang() {
        let s = sample(Task::Lang, "", "the cat sleeps.");
        assert!(is_correct(&s, "the cat sleeps.\n"));
        assert!(!is_correct(&s, "the cat sleep."));
        assert!(!is_correct(&s, "the cat sleeps"));
    }

    #[test]
    fn accuracy_counts_missing_as_wrong() {
        let s = vec![
            sample(Task::Recall, "recall: a1=1 ; -> a1=", "1"),
            sample(Task::Recall, "recall: a1=2 ; -> a1=", "2"),
            sample(Task::Recall, "recall: a1=3 ; -> a1=", "3"),
            sample(Task::Recall, "recall: a1=4 ; -> a1=", "4"),
        ];
        assert_eq!(accuracy(&s, &["1", "0", "3\n", "5"]), 0.5);
        assert_eq!(accuracy(&s, &["1".to_string()]), 0.25);
        let none: [&str; 0] = [];
        assert_eq!(accuracy(&s, &none), 0.0);
        assert_eq!(accuracy(&[], &["1"]), 0.0);
    }

    #[test]
    fn eval_sets_are_fixed_distinct_and_held_out() {
        for t in Task::ALL {
            let a = eval_set(t, 300);
            assert_eq!(a.len(), 300, "{t}");
            assert_eq!(a, eval_set(t, 300), "{t} not deterministic");
            let keys: std::collections::HashSet<String> = a
                .iter()
                .map(|s| {
                    if t.is_skill() {
                        s.prompt.clone()
                    } else {
                        s.text()
                    }
                })
                .collect();
            assert_eq!(keys.len(), a.len(), "{t} has duplicate eval prompts");
            assert!(a.iter().all(|s| s.task == t && s.split() == Split::Eval));
        }
    }

    #[test]
    fn completions_respect_max_chars() {
        for t in Task::ALL {
            let max = max_completion_chars(t);
            for s in corpus::generate(t, 11, 3000)
                .iter()
                .chain(&eval_set(t, 500))
            {
                assert!(
                    s.completion.chars().count() <= max,
                    "{t}: {:?} longer than {max}",
                    s.completion
                );
            }
        }
    }
}
