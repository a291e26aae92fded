//! Deterministic synthetic corpus for the model zoo: the English-like grammar,
//! the skill generators, the train/eval split and the RNG that drives them.
//!
//! Everything here is a pure function of its seed (no std hashing, no
//! clocks), so a corpus can be regenerated bit for bit instead of stored.
//!
//! # Line formats
//!
//! Every sample is one line; [`Sample::text`] is `prompt + completion` and
//! [`training_text`] ends each line with `'\n'`. Skill prompts end in a space
//! (`recall`'s in `=`) and completions never start with one.
//!
//! | task         | prompt                                   | completion |
//! |--------------|------------------------------------------|------------|
//! | `lang`       | *(empty)*                                | `the old dogs that see a bird sleep. every girl knows that the foxes run.` |
//! | `arith`      | `0407 + 1385 = `                         | `01792`    |
//! | `brackets`   | `brackets: ( [ { } -> `                  | `] )`      |
//! | `reverse`    | `reverse: cat owl jam -> `               | `jam owl cat` |
//! | `recall`     | `recall: k1=7 q3=2 z9=5 ; -> q3=`        | `2`        |
//! | `copy_drill` | `copy: k1 q3 z9 -> `                     | `k1 q3 z9` |
//!
//! * `lang`: one to three sentences separated by one space, lowercase, each
//!   ending in `.`; a fronted subordinate clause is followed by `,`. Present
//!   tense with subject-verb agreement (`the cat sees` / `the cats see`,
//!   `does not` / `do not`), determiner-noun agreement (`a cat`, `these cats`)
//!   and `a`/`an`. Sentences are at most [`MAX_SENTENCE_CHARS`] chars.
//! * `arith`: `A + B = C` or `A - B = C`; operands have 1–4 digits (digit
//!   count uniform, then value uniform), subtraction never goes negative.
//!   Operands are zero-padded to 4 digits and results to 5.
//! * `brackets`: 2–10 space-separated tokens from `( ) [ ] { } < >` forming a
//!   prefix of a balanced string, nesting depth ≤ [`MAX_BRACKET_DEPTH`], with
//!   at least one bracket left open. The completion is the unique *shortest*
//!   closing sequence, innermost first, space separated.
//! * `reverse`: 3–[`MAX_REVERSE_ITEMS`] distinct items, either all single
//!   letters or all three-letter words from [`REVERSE_WORDS`].
//! * `recall`: 3–6 `key=value` pairs (distinct keys, one letter + one digit;
//!   single-digit values), then ` ; -> ` and the queried key with `=`: the
//!   pairs' own form, so the answer is what followed that key before.
//! * `copy_drill` (training only, never scored): 3–[`MAX_COPY_ITEMS`] distinct
//!   keys of `recall`'s form (one letter + one digit), copied in order.
//!
//! The character set is lowercase letters, digits, space and
//! `+ - = ( ) [ ] { } < > : ; , .` only.
//!
//! # Train / eval split
//!
//! The split is a property of the problem, not of the seed: a skill sample is
//! eval iff a fixed hash of its problem is `0 mod 10` ([`split_of`] of
//! [`Sample::problem_key`]); a lang
//! sentence likewise by its own text. Generators reject samples of the other
//! split, so no eval prompt or eval sentence can appear in any training text
//! whatever seeds are used.

use super::tasks::{Sample, Task};
use crate::rng::{Rng, mix64};

/// Which side of the held-out split a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Problems that may appear in training text (about 90%).
    Train,
    /// Held-out problems, only used for evaluation (about 10%).
    Eval,
}

/// Longest lang sentence in chars; longer draws are rejected so that
/// [`MAX_LANG_SAMPLE_CHARS`] is a hard bound.
pub const MAX_SENTENCE_CHARS: usize = 160;
/// Most sentences in one lang sample.
pub const MAX_LANG_SENTENCES: usize = 3;
/// Hard bound on a lang sample's length (sentences plus separating spaces).
pub const MAX_LANG_SAMPLE_CHARS: usize =
    MAX_LANG_SENTENCES * MAX_SENTENCE_CHARS + (MAX_LANG_SENTENCES - 1);
/// Deepest nesting in a brackets prompt, hence the most closers needed.
pub const MAX_BRACKET_DEPTH: usize = 4;
/// Most items in a reverse prompt.
pub const MAX_REVERSE_ITEMS: usize = 6;
/// Most keys in a copy drill line.
pub const MAX_COPY_ITEMS: usize = 8;
/// Word pool of the reverse task (three letters each, so lengths stay small).
pub const REVERSE_WORDS: &[&str] = &[
    "cat", "sun", "red", "box", "hat", "map", "cup", "pen", "egg", "owl", "ant", "bee", "fig",
    "jam", "key", "log", "net", "oak", "pig", "rug", "toy", "van", "web", "yak", "zip",
];

/// Seed of [`lang_eval_text`]; fixed so perplexities are comparable.
pub const LANG_EVAL_SEED: u64 = 0x1a9e_e7a1_2024_0002;

// ---------------------------------------------------------------------------
// Splits and streams
// ---------------------------------------------------------------------------

/// Split of a problem identified by `key` (a skill prompt or a lang sentence).
///
/// FNV-1a over the bytes, then the SplitMix64 finaliser so the residue mod 10 uses all bits.
/// The function must never change: that would silently move eval problems
/// into training.
pub fn split_of(key: &str) -> Split {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if mix64(h).is_multiple_of(10) {
        Split::Eval
    } else {
        Split::Train
    }
}

/// Seed of the stream of `task` samples in `split` derived from a user seed,
/// so different tasks and splits never share random draws.
pub fn stream_seed(seed: u64, task: Task, split: Split) -> u64 {
    let task_salt: u64 = match task {
        Task::Lang => 1,
        Task::Arith => 2,
        Task::Brackets => 3,
        Task::Reverse => 4,
        Task::Recall => 5,
        Task::CopyDrill => 6,
    };
    let split_salt: u64 = match split {
        Split::Train => 0x7472_6169_6e00_0000,
        Split::Eval => 0x6576_616c_0000_0000,
    };
    mix64(seed ^ mix64(task_salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ split_salt))
}

// ---------------------------------------------------------------------------
// Public generators
// ---------------------------------------------------------------------------

/// `n` training samples of `task` from `seed`; same arguments, same samples.
pub fn generate(task: Task, seed: u64, n: usize) -> Vec<Sample> {
    generate_split(task, Split::Train, seed, n)
}

/// `n` samples of `task` that all lie in `split`, deterministic in `seed`.
/// Repeats are possible (they are natural in training data); use
/// [`super::tasks::eval_set`] for a distinct, fixed eval set.
pub fn generate_split(task: Task, split: Split, seed: u64, n: usize) -> Vec<Sample> {
    let mut rng = Rng::new(stream_seed(seed, task, split));
    (0..n).map(|_| sample_in(task, split, &mut rng)).collect()
}

/// One sample of `task` lying in `split`, drawn by rejection from `rng`.
///
/// Rejection keeps each split's distribution equal to the unsplit one
/// restricted to its problems; eval costs about ten draws per sample.
pub fn sample_in(task: Task, split: Split, rng: &mut Rng) -> Sample {
    let draw: fn(&mut Rng) -> Sample = match task {
        // Lang is split per sentence, not per sample; see `lang_sample`.
        Task::Lang => return lang_sample(split, rng),
        Task::Arith => arith,
        Task::Brackets => brackets,
        Task::Reverse => reverse,
        Task::Recall => recall,
        Task::CopyDrill => copy_drill,
    };
    loop {
        let s = draw(rng);
        if s.split() == split {
            return s;
        }
    }
}

/// Training samples mixing tasks in the given proportions: exactly `n_lines`
/// samples in a seeded random order.
///
/// Weights are relative; non-positive or non-finite ones are ignored and
/// repeated tasks are summed. Sample counts per task are the largest-remainder
/// rounding of `n_lines * weight / total`, so proportions are exact up to one
/// sample. Returns no samples when no weight is usable.
pub fn training_samples(mix: &[(Task, f32)], seed: u64, n_lines: usize) -> Vec<Sample> {
    let mut weights = [0f64; Task::ALL.len()];
    for &(task, w) in mix {
        if w.is_finite() && w > 0.0 {
            weights[task_slot(task)] += f64::from(w);
        }
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Vec::new();
    }

    // Largest-remainder allocation: floor everything, then hand the leftover
    // lines to the largest fractional parts (ties go to the earlier task).
    let exact: Vec<f64> = weights.iter().map(|w| w / total * n_lines as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let assigned: usize = counts.iter().sum();
    let mut order: Vec<usize> = (0..counts.len()).filter(|&i| weights[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(n_lines.saturating_sub(assigned)) {
        counts[i] += 1;
    }

    let mut schedule: Vec<usize> = Vec::with_capacity(n_lines);
    let mut streams: Vec<std::vec::IntoIter<Sample>> = Vec::with_capacity(counts.len());
    for (i, &c) in counts.iter().enumerate() {
        schedule.extend(std::iter::repeat_n(i, c));
        streams.push(generate(Task::ALL[i], seed, c).into_iter());
    }
    Rng::new(mix64(seed ^ 0x5c4e_d01e_5000_0001)).shuffle(&mut schedule);
    // Each stream holds exactly as many samples as its task is scheduled.
    schedule
        .into_iter()
        .filter_map(|i| streams[i].next())
        .collect()
}

/// [`training_samples`] as text: one line per sample, each ended by `'\n'`.
pub fn training_text(mix: &[(Task, f32)], seed: u64, n_lines: usize) -> String {
    let mut out = String::new();
    for s in training_samples(mix, seed, n_lines) {
        out.push_str(&s.prompt);
        out.push_str(&s.completion);
        out.push('\n');
    }
    out
}

/// Held-out lang text for perplexity: `n_sentences` eval-split sentences, one
/// per line (each ended by `'\n'`), always the same for the same `n`.
pub fn lang_eval_text(n_sentences: usize) -> String {
    let mut rng = Rng::new(stream_seed(LANG_EVAL_SEED, Task::Lang, Split::Eval));
    let mut out = String::new();
    for _ in 0..n_sentences {
        out.push_str(&sentence_in(Split::Eval, &mut rng));
        out.push('\n');
    }
    out
}

fn task_slot(task: Task) -> usize {
    Task::ALL.iter().position(|&t| t == task).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Skill generators
// ---------------------------------------------------------------------------

/// An operand with a uniformly chosen digit count (1–4), so short and long
/// numbers are equally common instead of 90% four-digit ones.
fn operand(rng: &mut Rng) -> u32 {
    match rng.range(1, 4) {
        1 => rng.below(10) as u32,
        2 => 10 + rng.below(90) as u32,
        3 => 100 + rng.below(900) as u32,
        _ => 1000 + rng.below(9000) as u32,
    }
}

/// Operands are written zero-padded to 4 digits and results to 5, so a digit's place is its
/// position in the line: without that, a model of the zoo's size must first work out which
/// digits line up, and at the zoo's compute it did not (`arith` stayed under 20 %).
fn arith(rng: &mut Rng) -> Sample {
    let a = operand(rng);
    let b = operand(rng);
    let (prompt, result) = if rng.chance(0.5) {
        (format!("{a:04} + {b:04} = "), a + b)
    } else {
        // Order the operands so the result is never negative.
        let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
        (format!("{hi:04} - {lo:04} = "), hi - lo)
    };
    Sample {
        task: Task::Arith,
        prompt,
        completion: format!("{result:05}"),
    }
}

const OPENERS: [char; 4] = ['(', '[', '{', '<'];
const CLOSERS: [char; 4] = [')', ']', '}', '>'];

fn brackets(rng: &mut Rng) -> Sample {
    let len = rng.range(2, 10);
    let mut stack: Vec<usize> = Vec::with_capacity(MAX_BRACKET_DEPTH);
    let mut prompt = String::from("brackets: ");
    for step in 0..len {
        let last = step + 1 == len;
        let can_open = stack.len() < MAX_BRACKET_DEPTH;
        // Never close the last open bracket on the final token, so something
        // is always left to complete.
        let can_close = if last {
            stack.len() > 1
        } else {
            !stack.is_empty()
        };
        // MAX_BRACKET_DEPTH > 1 means at least one of the two is possible.
        let open = !can_close || (can_open && rng.chance(0.55));
        if open {
            let k = rng.below(OPENERS.len());
            stack.push(k);
            prompt.push(OPENERS[k]);
        } else if let Some(k) = stack.pop() {
            prompt.push(CLOSERS[k]);
        }
        prompt.push(' ');
    }
    prompt.push_str("-> ");
    let completion = stack
        .iter()
        .rev()
        .map(|&k| CLOSERS[k].to_string())
        .collect::<Vec<_>>()
        .join(" ");
    Sample {
        task: Task::Brackets,
        prompt,
        completion,
    }
}

const LETTERS: [&str; 26] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
    "t", "u", "v", "w", "x", "y", "z",
];

/// `k` distinct elements of `pool` in random order (partial Fisher-Yates).
fn distinct<'a>(rng: &mut Rng, pool: &[&'a str], k: usize) -> Vec<&'a str> {
    let mut v = pool.to_vec();
    let k = k.min(v.len());
    for i in 0..k {
        let j = i + rng.below(v.len() - i);
        v.swap(i, j);
    }
    v.truncate(k);
    v
}

fn reverse(rng: &mut Rng) -> Sample {
    let k = rng.range(3, MAX_REVERSE_ITEMS);
    let pool: &[&str] = if rng.chance(0.5) {
        &LETTERS
    } else {
        REVERSE_WORDS
    };
    let items = distinct(rng, pool, k);
    let reversed: Vec<&str> = items.iter().rev().copied().collect();
    Sample {
        task: Task::Reverse,
        prompt: format!("reverse: {} -> ", items.join(" ")),
        completion: reversed.join(" "),
    }
}

/// `k` distinct keys of one letter and one digit.
fn recall_keys(rng: &mut Rng, k: usize) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(k);
    while keys.len() < k {
        let key = format!("{}{}", rng.pick(&LETTERS), rng.below(10));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn recall(rng: &mut Rng) -> Sample {
    let k = rng.range(3, 6);
    // Distinct keys make the answer unique even when values repeat.
    let keys = recall_keys(rng, k);
    let values: Vec<usize> = (0..k).map(|_| rng.below(10)).collect();
    let q = rng.below(k);
    let pairs: Vec<String> = keys
        .iter()
        .zip(&values)
        .map(|(key, v)| format!("{key}={v}"))
        .collect();
    Sample {
        task: Task::Recall,
        prompt: format!("recall: {} ; -> {}=", pairs.join(" "), keys[q]),
        completion: values[q].to_string(),
    }
}

fn copy_drill(rng: &mut Rng) -> Sample {
    let k = rng.range(3, MAX_COPY_ITEMS);
    let keys = recall_keys(rng, k).join(" ");
    Sample {
        task: Task::CopyDrill,
        prompt: format!("copy: {keys} -> "),
        completion: keys,
    }
}

// ---------------------------------------------------------------------------
// Lang grammar
// ---------------------------------------------------------------------------
//
// S      -> Clause [Conj Clause] "." | Conj Clause "," Clause "."
// Clause -> NP(animate) VP(number of NP)
// NP     -> Det Adj{0,2} Noun [Prep NP | "that" VP(number of Noun)]
// VP     -> ["does not" | "do not"] V (Intrans [Adv] [Prep NP]
//                                     | Trans NP | Clausal "that" Clause)
//
// A depth budget bounds recursion. Word lists are disjoint across categories
// (checked by a test) so the sentences parse unambiguously.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Sg,
    Pl,
}

/// (singular, plural); animate nouns can be subjects and take relatives.
const ANIMATE_NOUNS: &[(&str, &str)] = &[
    ("cat", "cats"),
    ("dog", "dogs"),
    ("bird", "birds"),
    ("fox", "foxes"),
    ("horse", "horses"),
    ("mouse", "mice"),
    ("child", "children"),
    ("man", "men"),
    ("woman", "women"),
    ("girl", "girls"),
    ("boy", "boys"),
    ("teacher", "teachers"),
    ("farmer", "farmers"),
    ("doctor", "doctors"),
    ("king", "kings"),
    ("queen", "queens"),
    ("baker", "bakers"),
    ("sailor", "sailors"),
    ("student", "students"),
    ("friend", "friends"),
    ("neighbor", "neighbors"),
    ("wolf", "wolves"),
    ("owl", "owls"),
    ("rabbit", "rabbits"),
    ("frog", "frogs"),
    ("duck", "ducks"),
    ("lion", "lions"),
    ("bear", "bears"),
    ("goat", "goats"),
    ("baby", "babies"),
    ("puppy", "puppies"),
    ("tiger", "tigers"),
];

/// (singular, plural); places appear as objects and in prepositional phrases.
const PLACE_NOUNS: &[(&str, &str)] = &[
    ("tree", "trees"),
    ("house", "houses"),
    ("river", "rivers"),
    ("garden", "gardens"),
    ("table", "tables"),
    ("hill", "hills"),
    ("bridge", "bridges"),
    ("box", "boxes"),
    ("road", "roads"),
    ("forest", "forests"),
    ("field", "fields"),
    ("window", "windows"),
];

/// Adjectives that fit any noun.
const ADJ_ANY: &[&str] = &[
    "big", "small", "old", "little", "tall", "quiet", "dark", "green", "red", "brown", "white",
    "black",
];
/// Adjectives that only fit animate nouns.
const ADJ_ANIMATE: &[&str] = &[
    "happy", "sad", "young", "clever", "lazy", "brave", "hungry", "sleepy", "angry", "kind", "loud",
];

/// Determiners by number; "the" is repeated to make it the most common.
const DET_SG: &[&str] = &["the", "the", "the", "a", "this", "every", "my", "her"];
const DET_PL: &[&str] = &[
    "the", "the", "the", "some", "these", "those", "many", "two", "three", "my", "her",
];

/// (third person singular, base form).
const INTRANSITIVE: &[(&str, &str)] = &[
    ("sleeps", "sleep"),
    ("runs", "run"),
    ("sings", "sing"),
    ("waits", "wait"),
    ("laughs", "laugh"),
    ("smiles", "smile"),
    ("jumps", "jump"),
    ("swims", "swim"),
    ("dances", "dance"),
    ("cries", "cry"),
    ("rests", "rest"),
    ("hides", "hide"),
    ("plays", "play"),
    ("walks", "walk"),
    ("falls", "fall"),
];
/// (third person singular, base form, whether a place is a natural object).
const TRANSITIVE: &[(&str, &str, bool)] = &[
    ("sees", "see", true),
    ("likes", "like", true),
    ("finds", "find", true),
    ("follows", "follow", false),
    ("watches", "watch", true),
    ("helps", "help", false),
    ("chases", "chase", false),
    ("loves", "love", true),
    ("visits", "visit", true),
    ("calls", "call", false),
    ("meets", "meet", false),
    ("hears", "hear", true),
];
/// Verbs taking a "that" clause: (third person singular, base form).
const CLAUSAL: &[(&str, &str)] = &[
    ("knows", "know"),
    ("thinks", "think"),
    ("says", "say"),
    ("hopes", "hope"),
    ("believes", "believe"),
];
const PREPOSITIONS: &[&str] = &["near", "behind", "under", "beside", "with", "above"];
const ADVERBS: &[&str] = &["quietly", "slowly", "often", "again", "today", "happily"];
const CONJUNCTIONS: &[&str] = &["because", "while", "when", "although", "after", "before"];

fn form(pair: (&'static str, &'static str), number: Number) -> &'static str {
    match number {
        Number::Sg => pair.0,
        Number::Pl => pair.1,
    }
}

/// Builds one sentence as a word list; punctuation marks are separate words
/// and get attached when rendering.
struct Lang<'r> {
    rng: &'r mut Rng,
    words: Vec<&'static str>,
}

impl Lang<'_> {
    fn number(&mut self) -> Number {
        if self.rng.chance(0.55) {
            Number::Sg
        } else {
            Number::Pl
        }
    }

    fn np(&mut self, number: Number, animate: bool, depth: u32) {
        let det = *self.rng.pick(match number {
            Number::Sg => DET_SG,
            Number::Pl => DET_PL,
        });
        let mut adjs: Vec<&'static str> = Vec::with_capacity(2);
        let n_adj = match self.rng.below(10) {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2,
        };
        while adjs.len() < n_adj {
            let a = if animate && self.rng.chance(0.5) {
                *self.rng.pick(ADJ_ANIMATE)
            } else {
                *self.rng.pick(ADJ_ANY)
            };
            if !adjs.contains(&a) {
                adjs.push(a);
            }
        }
        let noun = form(
            *self
                .rng
                .pick(if animate { ANIMATE_NOUNS } else { PLACE_NOUNS }),
            number,
        );
        let next = adjs.first().copied().unwrap_or(noun);
        let det = if det == "a" && next.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            det
        };
        self.words.push(det);
        self.words.extend(adjs);
        self.words.push(noun);

        // At most one modifier per NP keeps the attachment unambiguous.
        if depth > 0 {
            let r = self.rng.below(100);
            if r < 20 {
                self.words.push(*self.rng.pick(PREPOSITIONS));
                let n = self.number();
                let a = self.rng.chance(0.4);
                self.np(n, a, depth - 1);
            } else if animate && r < 35 {
                self.words.push("that");
                self.vp(number, depth - 1);
            }
        }
    }

    fn vp(&mut self, number: Number, depth: u32) {
        // Negation uses the auxiliary for agreement and the base verb form.
        let verb_number = if self.rng.chance(0.1) {
            self.words.push(match number {
                Number::Sg => "does",
                Number::Pl => "do",
            });
            self.words.push("not");
            Number::Pl
        } else {
            number
        };
        let r = self.rng.below(100);
        if depth > 0 && r < 12 {
            self.words.push(form(*self.rng.pick(CLAUSAL), verb_number));
            self.words.push("that");
            self.clause(depth - 1);
        } else if r < 55 {
            let &(sg, base, place_ok) = self.rng.pick(TRANSITIVE);
            self.words.push(form((sg, base), verb_number));
            let n = self.number();
            let animate = !place_ok || self.rng.chance(0.6);
            self.np(n, animate, depth.saturating_sub(1));
        } else {
            self.words
                .push(form(*self.rng.pick(INTRANSITIVE), verb_number));
            if self.rng.chance(0.2) {
                self.words.push(*self.rng.pick(ADVERBS));
            }
            if self.rng.chance(0.2) {
                self.words.push(*self.rng.pick(PREPOSITIONS));
                let n = self.number();
                let a = self.rng.chance(0.4);
                self.np(n, a, 0);
            }
        }
    }

    fn clause(&mut self, depth: u32) {
        let n = self.number();
        self.np(n, true, depth);
        self.vp(n, depth);
    }

    fn sentence(&mut self) {
        let r = self.rng.below(100);
        if r < 10 {
            self.words.push(*self.rng.pick(CONJUNCTIONS));
            self.clause(1);
            self.words.push(",");
            self.clause(1);
        } else {
            self.clause(2);
            if r < 35 {
                self.words.push(*self.rng.pick(CONJUNCTIONS));
                self.clause(1);
            }
        }
        self.words.push(".");
    }
}

fn render(words: &[&str]) -> String {
    let mut s = String::new();
    for w in words {
        if !s.is_empty() && *w != "," && *w != "." {
            s.push(' ');
        }
        s.push_str(w);
    }
    s
}

/// One grammatical sentence, unconstrained by split or length.
fn raw_sentence(rng: &mut Rng) -> String {
    let mut g = Lang {
        rng,
        words: Vec::with_capacity(32),
    };
    g.sentence();
    render(&g.words)
}

/// One sentence in `split` and within [`MAX_SENTENCE_CHARS`], by rejection.
fn sentence_in(split: Split, rng: &mut Rng) -> String {
    loop {
        let s = raw_sentence(rng);
        if s.len() <= MAX_SENTENCE_CHARS && split_of(&s) == split {
            return s;
        }
    }
}

fn lang_sample(split: Split, rng: &mut Rng) -> Sample {
    let k = match rng.below(10) {
        0..=4 => 1,
        5..=7 => 2,
        _ => MAX_LANG_SENTENCES,
    };
    // Every sentence is drawn from the same split, so a held-out sentence
    // never hides inside a training line.
    let sentences: Vec<String> = (0..k).map(|_| sentence_in(split, rng)).collect();
    Sample {
        task: Task::Lang,
        prompt: String::new(),
        completion: sentences.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rng_basics() {
        let mut a = Rng::new(0);
        let mut b = Rng::new(0);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        let mut hits = [0usize; 7];
        for _ in 0..7000 {
            hits[a.below(7)] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert_eq!(a.below(0), 0);
        assert!((0..100).all(|_| (3..=6).contains(&a.range(3, 6))));
        assert!(!(0..100).any(|_| a.chance(0.0)));
        assert!((0..100).all(|_| a.chance(1.0)));
        let heads = (0..10_000).filter(|_| a.chance(0.3)).count();
        assert!((2700..3300).contains(&heads), "{heads}");
    }

    #[test]
    fn determinism() {
        for t in Task::ALL {
            assert_eq!(generate(t, 7, 50), generate(t, 7, 50), "{t}");
            assert_ne!(generate(t, 7, 50), generate(t, 8, 50), "{t}");
        }
        let mix = [(Task::Lang, 2.0), (Task::Arith, 1.0), (Task::Recall, 1.0)];
        assert_eq!(training_text(&mix, 3, 200), training_text(&mix, 3, 200));
        assert_ne!(training_text(&mix, 3, 200), training_text(&mix, 4, 200));
        assert_eq!(lang_eval_text(50), lang_eval_text(50));
    }

    #[test]
    fn split_is_disjoint() {
        for t in Task::ALL {
            let train = generate_split(t, Split::Train, 1, 2000);
            let eval = generate_split(t, Split::Eval, 1, 2000);
            assert!(train.iter().all(|s| s.split() == Split::Train), "{t}");
            assert!(eval.iter().all(|s| s.split() == Split::Eval), "{t}");
            if t.is_skill() {
                let seen: HashSet<&str> = train.iter().map(|s| s.prompt.as_str()).collect();
                assert!(
                    eval.iter().all(|s| !seen.contains(s.prompt.as_str())),
                    "{t}"
                );
            } else {
                let sentences = |v: &[Sample]| -> HashSet<String> {
                    v.iter()
                        .flat_map(|s| {
                            s.completion
                                .split_inclusive('.')
                                .map(|x| x.trim().to_string())
                                .collect::<Vec<_>>()
                        })
                        .collect()
                };
                let tr = sentences(&train);
                let ev = sentences(&eval);
                assert!(tr.iter().all(|s| split_of(s) == Split::Train));
                assert!(ev.iter().all(|s| split_of(s) == Split::Eval));
                assert!(tr.is_disjoint(&ev));
            }
        }
        // The held-out perplexity text is eval-only too.
        assert!(
            lang_eval_text(300)
                .lines()
                .all(|l| split_of(l) == Split::Eval)
        );
        // Roughly 10% of problems are held out.
        let share = (0..20_000)
            .filter(|i| split_of(&format!("k{i}")) == Split::Eval)
            .count();
        assert!((1700..2300).contains(&share), "{share}");
    }

    #[test]
    fn training_text_proportions() {
        let mix = [
            (Task::Lang, 0.5),
            (Task::Arith, 0.25),
            (Task::Brackets, 0.125),
            (Task::Reverse, 0.125),
            (Task::Recall, 0.0),
            (Task::Recall, f32::NAN),
        ];
        let text = training_text(&mix, 9, 1000);
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        let count = |f: &dyn Fn(&str) -> bool| lines.iter().filter(|l| f(l)).count();
        assert_eq!(count(&|l| l.starts_with("brackets: ")), 125);
        assert_eq!(count(&|l| l.starts_with("reverse: ")), 125);
        assert_eq!(count(&|l| l.starts_with("recall: ")), 0);
        assert_eq!(count(&|l| l.contains(" = ")), 250);
        assert_eq!(count(&|l| l.ends_with('.')), 500);
        // Interleaved, not blocked by task.
        assert!(lines[..100].iter().any(|l| l.ends_with('.')));
        assert!(lines[..100].iter().any(|l| l.contains(" = ")));

        // Rounding still yields exactly n lines; duplicates are summed.
        let odd = [(Task::Arith, 1.0), (Task::Recall, 1.0), (Task::Arith, 1.0)];
        let t = training_text(&odd, 1, 7);
        assert_eq!(t.lines().count(), 7);
        assert_eq!(t.lines().filter(|l| l.starts_with("recall")).count(), 2);
        assert_eq!(training_text(&[(Task::Lang, 0.0)], 1, 10), "");
        assert_eq!(training_text(&[], 1, 10), "");
    }

    #[test]
    fn arithmetic_is_right() {
        for s in generate(Task::Arith, 2, 3000).iter().chain(&generate_split(
            Task::Arith,
            Split::Eval,
            2,
            500,
        )) {
            let line = s.text();
            let t: Vec<&str> = line.split(' ').collect();
            assert_eq!(t.len(), 5, "{line}");
            assert_eq!(t[3], "=", "{line}");
            assert!(s.prompt.ends_with("= "));
            let a: u32 = t[0].parse().unwrap();
            let b: u32 = t[2].parse().unwrap();
            let c: u32 = t[4].parse().unwrap();
            assert!(a <= 9999 && b <= 9999, "{line}");
            let widths = [t[0], t[2], t[4]].map(str::len);
            assert_eq!(widths, [4, 4, 5], "{line}");
            match t[1] {
                "+" => assert_eq!(a + b, c, "{line}"),
                "-" => assert_eq!(a - b, c, "{line}"),
                op => panic!("bad op {op}"),
            }
        }
        // Operands of every length are common once the padding is taken off.
        let lens: HashSet<usize> = generate(Task::Arith, 2, 500)
            .iter()
            .map(|s| s.prompt.split(' ').next().unwrap().parse::<u32>().unwrap())
            .map(|a| a.to_string().len())
            .collect();
        assert_eq!(lens, HashSet::from([1, 2, 3, 4]));
    }

    #[test]
    fn brackets_complete_and_balance() {
        for s in generate(Task::Brackets, 3, 3000) {
            let body = s
                .prompt
                .strip_prefix("brackets: ")
                .and_then(|p| p.strip_suffix(" -> "))
                .unwrap();
            let prompt: Vec<&str> = body.split(' ').collect();
            assert!((2..=10).contains(&prompt.len()), "{}", s.prompt);
            let mut stack = Vec::new();
            let mut max_depth = 0;
            for tok in &prompt {
                let c = tok.chars().next().unwrap();
                assert_eq!(tok.len(), 1);
                if let Some(k) = OPENERS.iter().position(|&o| o == c) {
                    stack.push(k);
                    max_depth = max_depth.max(stack.len());
                } else {
                    let k = CLOSERS.iter().position(|&o| o == c).unwrap();
                    assert_eq!(stack.pop(), Some(k), "{}", s.prompt);
                }
            }
            assert!(max_depth <= MAX_BRACKET_DEPTH);
            assert!(!stack.is_empty(), "nothing to close: {}", s.prompt);
            let completion: Vec<&str> = s.completion.split(' ').collect();
            // Shortest completion: exactly one closer per open bracket.
            assert_eq!(completion.len(), stack.len(), "{}", s.text());
            for tok in completion {
                let k = CLOSERS.iter().position(|&o| tok == o.to_string()).unwrap();
                assert_eq!(stack.pop(), Some(k), "{}", s.text());
            }
            assert!(stack.is_empty());
        }
    }

    #[test]
    fn reverse_and_recall_are_right() {
        for s in generate(Task::Reverse, 4, 2000) {
            let items: Vec<&str> = s
                .prompt
                .strip_prefix("reverse: ")
                .and_then(|p| p.strip_suffix(" -> "))
                .unwrap()
                .split(' ')
                .collect();
            assert!((3..=MAX_REVERSE_ITEMS).contains(&items.len()));
            let want: Vec<&str> = items.iter().rev().copied().collect();
            assert_eq!(s.completion, want.join(" "));
        }
        for s in generate(Task::Recall, 4, 2000) {
            let body = s
                .prompt
                .strip_prefix("recall: ")
                .and_then(|p| p.strip_suffix('='))
                .unwrap();
            let (pairs, query) = body.split_once(" ; -> ").unwrap();
            let pairs: Vec<(&str, &str)> = pairs
                .split(' ')
                .map(|p| p.split_once('=').unwrap())
                .collect();
            assert!((3..=6).contains(&pairs.len()));
            let keys: HashSet<&str> = pairs.iter().map(|p| p.0).collect();
            assert_eq!(keys.len(), pairs.len(), "keys not distinct: {}", s.prompt);
            let hits: Vec<&str> = pairs.iter().filter(|p| p.0 == query).map(|p| p.1).collect();
            assert_eq!(hits, vec![s.completion.as_str()]);
        }
    }

    #[test]
    fn copy_drill_copies_distinct_keys() {
        for s in generate(Task::CopyDrill, 4, 2000) {
            let keys = s
                .prompt
                .strip_prefix("copy: ")
                .and_then(|p| p.strip_suffix(" -> "));
            let keys: Vec<&str> = keys.unwrap().split(' ').collect();
            assert!((3..=MAX_COPY_ITEMS).contains(&keys.len()), "{}", s.text());
            assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
            assert_eq!(s.completion, keys.join(" "));
        }
    }

    #[test]
    fn small_alphabet_and_single_lines() {
        let allowed = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || " +-=()[]{}<>:;,.".contains(c)
        };
        for t in Task::ALL {
            for s in generate(t, 6, 1000) {
                assert!(s.text().chars().all(allowed), "{}", s.text());
                assert!(!s.text().contains('\n'));
                assert!(!s.text().contains("  "), "{:?}", s.text());
                assert!(!s.completion.starts_with(' ') && !s.completion.ends_with(' '));
                if t.is_skill() {
                    assert!(
                        s.prompt.ends_with(' ') || t == Task::Recall && s.prompt.ends_with('=')
                    );
                    assert!(!s.completion.is_empty());
                } else {
                    assert!(s.prompt.is_empty());
                }
            }
        }
    }

    #[test]
    fn vocabulary_sizes_and_disjointness() {
        assert!(ANIMATE_NOUNS.len() + PLACE_NOUNS.len() >= 40);
        assert!(INTRANSITIVE.len() + TRANSITIVE.len() + CLAUSAL.len() >= 30);
        assert!(ADJ_ANY.len() + ADJ_ANIMATE.len() >= 20);
        // A word in two categories would make sentences ambiguous to parse.
        let mut seen = HashSet::new();
        let all = ANIMATE_NOUNS
            .iter()
            .chain(PLACE_NOUNS)
            .chain(INTRANSITIVE)
            .chain(CLAUSAL)
            .flat_map(|&(a, b)| [a, b])
            .chain(TRANSITIVE.iter().flat_map(|&(a, b, _)| [a, b]))
            .chain(ADJ_ANY.iter().chain(ADJ_ANIMATE).copied())
            .chain(
                PREPOSITIONS
                    .iter()
                    .chain(ADVERBS)
                    .chain(CONJUNCTIONS)
                    .copied(),
            )
            .chain(["that", "does", "do", "not", "a", "an"]);
        for w in all {
            assert!(seen.insert(w), "{w} is in two categories");
        }
    }

    /// Recursive-descent parser for the grammar above; it accepts exactly the
    /// generator's language and checks every agreement on the way.
    struct Parser<'a> {
        toks: Vec<&'a str>,
        i: usize,
    }

    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Intrans,
        Trans,
        Clausal,
    }

    impl<'a> Parser<'a> {
        fn new(text: &'a str) -> Self {
            let toks = text
                .split(' ')
                .flat_map(|w| match w.strip_suffix([',', '.']) {
                    Some(stem) => vec![stem, &w[stem.len()..]],
                    None => vec![w],
                })
                .collect();
            Parser { toks, i: 0 }
        }
        fn peek(&self) -> &'a str {
            self.toks.get(self.i).copied().unwrap_or("")
        }
        fn next(&mut self) -> &'a str {
            let t = self.peek();
            self.i += 1;
            t
        }
        fn expect(&mut self, w: &str) -> Result<(), String> {
            let t = self.next();
            if t == w {
                Ok(())
            } else {
                Err(format!("expected {w:?} at {}, got {t:?}", self.i - 1))
            }
        }
        fn noun(w: &str) -> Option<Number> {
            let nouns = || ANIMATE_NOUNS.iter().chain(PLACE_NOUNS);
            if nouns().any(|n| n.0 == w) {
                Some(Number::Sg)
            } else if nouns().any(|n| n.1 == w) {
                Some(Number::Pl)
            } else {
                None
            }
        }
        fn verb(w: &str) -> Option<(Kind, Number)> {
            let pairs = INTRANSITIVE
                .iter()
                .map(|&p| (Kind::Intrans, p))
                .chain(TRANSITIVE.iter().map(|&(a, b, _)| (Kind::Trans, (a, b))))
                .chain(CLAUSAL.iter().map(|&p| (Kind::Clausal, p)));
            for (k, (sg, base)) in pairs {
                if w == sg {
                    return Some((k, Number::Sg));
                }
                if w == base {
                    return Some((k, Number::Pl));
                }
            }
            None
        }
        fn np(&mut self) -> Result<Number, String> {
            let det = self.next();
            let sg_only = ["a", "an", "this", "every"];
            let pl_only = ["some", "these", "those", "many", "two", "three"];
            if !(DET_SG.contains(&det) || DET_PL.contains(&det) || det == "an") {
                return Err(format!("expected determiner, got {det:?}"));
            }
            let first = self.peek();
            if det == "a" && first.starts_with(['a', 'e', 'i', 'o', 'u']) {
                return Err(format!("'a {first}'"));
            }
            if det == "an" && !first.starts_with(['a', 'e', 'i', 'o', 'u']) {
                return Err(format!("'an {first}'"));
            }
            while ADJ_ANY.contains(&self.peek()) || ADJ_ANIMATE.contains(&self.peek()) {
                self.i += 1;
            }
            let noun = self.next();
            let n = Self::noun(noun).ok_or(format!("expected noun, got {noun:?}"))?;
            if (n == Number::Pl && sg_only.contains(&det))
                || (n == Number::Sg && pl_only.contains(&det))
            {
                return Err(format!("determiner disagreement '{det} {noun}'"));
            }
            if PREPOSITIONS.contains(&self.peek()) {
                self.i += 1;
                self.np()?;
            } else if self.peek() == "that" {
                self.i += 1;
                self.vp(n)?;
            }
            Ok(n)
        }
        fn vp(&mut self, subject: Number) -> Result<(), String> {
            let mut w = self.next();
            let want = if w == "does" || w == "do" {
                let aux = if w == "does" { Number::Sg } else { Number::Pl };
                if aux != subject {
                    return Err(format!("auxiliary disagreement at {w:?}"));
                }
                self.expect("not")?;
                w = self.next();
                Number::Pl // base form after the auxiliary
            } else {
                subject
            };
            let (kind, n) = Self::verb(w).ok_or(format!("expected verb, got {w:?}"))?;
            if n != want {
                return Err(format!("verb {w:?} disagrees with its subject"));
            }
            match kind {
                Kind::Intrans => {
                    if ADVERBS.contains(&self.peek()) {
                        self.i += 1;
                    }
                    if PREPOSITIONS.contains(&self.peek()) {
                        self.i += 1;
                        self.np()?;
                    }
                }
                Kind::Trans => {
                    self.np()?;
                }
                Kind::Clausal => {
                    self.expect("that")?;
                    self.clause()?;
                }
            }
            Ok(())
        }
        fn clause(&mut self) -> Result<(), String> {
            let n = self.np()?;
            self.vp(n)
        }
        fn sentence(&mut self) -> Result<(), String> {
            if CONJUNCTIONS.contains(&self.peek()) {
                self.i += 1;
                self.clause()?;
                self.expect(",")?;
                self.clause()?;
            } else {
                self.clause()?;
                if CONJUNCTIONS.contains(&self.peek()) {
                    self.i += 1;
                    self.clause()?;
                }
            }
            self.expect(".")?;
            match self.toks.get(self.i) {
                None => Ok(()),
                Some(t) => Err(format!("trailing {t:?}")),
            }
        }
    }

    #[test]
    fn parser_rejects_disagreement() {
        let bad = [
            "the cats sees a dog.",
            "the cat see a dog.",
            "the cat that see the dogs sleeps.",
            "the cats near the dog sleeps.",
            "the cat does not sleeps.",
            "the cats does not sleep.",
            "a old cat sleeps.",
            "these cat sleeps.",
            "the cat sleeps",
        ];
        for s in bad {
            assert!(Parser::new(s).sentence().is_err(), "accepted {s:?}");
        }
        let good = [
            "the cats near the dog sleep.",
            "an old cat that sees the dogs sleeps.",
            "while the children do not run, every girl knows that the mice hide.",
        ];
        for s in good {
            assert_eq!(Parser::new(s).sentence(), Ok(()), "{s}");
        }
    }

    #[test]
    fn lang_parses_with_agreement() {
        let mut shapes = HashSet::new();
        for s in generate(Task::Lang, 10, 1500).iter().chain(&generate_split(
            Task::Lang,
            Split::Eval,
            10,
            300,
        )) {
            for sent in s.completion.split_inclusive('.') {
                let sent = sent.trim_start();
                assert!(sent.len() <= MAX_SENTENCE_CHARS);
                let mut p = Parser::new(sent);
                if let Err(e) = p.sentence() {
                    panic!("{sent:?}: {e}");
                }
                for key in ["that", ",", "does", "do", "because", "while"] {
                    if p.toks.contains(&key) {
                        shapes.insert(key);
                    }
                }
            }
        }
        // The grammar's optional constructions all actually occur.
        assert_eq!(shapes.len(), 6, "{shapes:?}");
        for line in lang_eval_text(200).lines() {
            assert_eq!(Parser::new(line).sentence(), Ok(()), "{line}");
        }
    }

    #[test]
    fn show_examples() {
        // Not an assertion test: `cargo test -- --nocapture show_examples`
        // prints one line per task for eyeballing.
        for t in Task::ALL {
            for s in generate(t, 1, 2) {
                println!("{t}: {}", s.text());
            }
        }
    }
}
