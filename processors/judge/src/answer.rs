//! Reading a final answer as a mathematical object: a value (number or expression), a tuple,
//! an interval or a union of intervals, a set, a matrix, values named by distinct variables
//! (`x = 2, y = 3`), several answers (`2, 3`, `2 \text{ or } 3`, several boxes,
//! `1 \pm \sqrt2`), or words. What is not understood completely is an error, and the verifier
//! says UNSURE for it.
//!
//! Some answers read two ways. A comma between digits is a thousands separator (`32,349`), a
//! list separator (`32, 349`) or a decimal point (`0,111`); an integer before a fraction is a
//! mixed number (`918\frac12`) or a product. [`Reading`] names one choice for each; the usual
//! one is [`Reading::USUAL`], and [`Parsed::ambiguous`] says whether another could differ.

use crate::normalize::{compact, strip_units};
use crate::relation::{assignment, equality_sides, inequality, parse_equality};
use crate::value::{parse_value, Value};

/// Lists nested deeper than this are not read (each level is a recursion).
pub const MAX_NESTING: usize = 16;

/// How a comma between two digits (outside brackets) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commas {
    /// `1,234` and `12,345,678` (no spaces, groups of three) are numbers; other commas separate.
    Thousands,
    /// Also `32, 349` (a space after the comma, groups of three) is one number.
    SpacedThousands,
    /// `0,111`: a single comma between digits is a decimal point.
    Decimal,
    /// Every comma separates answers.
    Separators,
}

/// One way of reading the ambiguous parts of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub commas: Commas,
    /// `2\frac{1}{2}` is 2.5 (else 1).
    pub mixed_numbers: bool,
}

impl Reading {
    /// How an English-writing model most likely means it.
    pub const USUAL: Reading = Reading { commas: Commas::Thousands, mixed_numbers: true };

    /// The other readings, for an answer whose usual reading was [`Parsed::ambiguous`].
    pub const OTHERS: [Reading; 7] = [
        Reading { commas: Commas::SpacedThousands, mixed_numbers: true },
        Reading { commas: Commas::Decimal, mixed_numbers: true },
        Reading { commas: Commas::Separators, mixed_numbers: true },
        Reading { commas: Commas::Thousands, mixed_numbers: false },
        Reading { commas: Commas::SpacedThousands, mixed_numbers: false },
        Reading { commas: Commas::Decimal, mixed_numbers: false },
        Reading { commas: Commas::Separators, mixed_numbers: false },
    ];
}

#[derive(Debug, Clone)]
pub enum Answer {
    /// A number or an expression.
    Value(Value),
    /// `(a, b, ...)` in order; with two elements also an open interval.
    Tuple(Vec<Answer>),
    Interval(Interval),
    /// `I \cup J \cup ...`
    Union(Vec<Interval>),
    /// `\{a, b\}`: order and repeats do not matter.
    Set(Vec<Answer>),
    /// Several answers (`2, 3`, `2 or 3`, several boxes): order and repeats do not matter.
    Several(Vec<Answer>),
    /// `x = 2, y = 3`: values named by distinct variables, in the order written.
    Named(Vec<(String, Answer)>),
    /// `\begin{pmatrix} ... \end{pmatrix}`: rows of cells.
    Matrix(Vec<Vec<Answer>>),
    /// Words, compared only as equal text.
    Text(String),
    /// `x^2 + y^2 = 25`: an equation whose left side is not just a variable.
    Equation(Value, Value),
}

#[derive(Debug, Clone)]
pub struct Interval {
    pub low: Bound,
    pub high: Bound,
    pub low_closed: bool,
    pub high_closed: bool,
}

#[derive(Debug, Clone)]
pub enum Bound {
    MinusInfinity,
    Infinity,
    Finite(Value),
}

/// An answer read one way, and whether another [`Reading`] could read it differently.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub answer: Answer,
    pub ambiguous: bool,
}

/// Reads a [`clean`](crate::normalize::clean)ed answer.
pub fn parse_answer(cleaned: &str, reading: Reading) -> Result<Parsed, String> {
    let mut ambiguous = false;
    let text = read_commas(cleaned, reading.commas, &mut ambiguous);
    let answer = parse_several(&text, reading, 0, &mut ambiguous)?;
    Ok(Parsed { answer, ambiguous })
}

/// Rewrites the runs of digits and commas outside brackets (`1,234`, `32, 349`, `0,111`) as
/// `commas` reads them; commas left in place separate answers.
fn read_commas(s: &str, commas: Commas, ambiguous: &mut bool) -> String {
    if !s.contains(',') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let (mut i, mut depth) = (0, 0i32);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        let starts_number = c.is_ascii_digit()
            && depth == 0
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || matches!(chars[i - 1], '.' | '_' | '^' | '\\')));
        if !starts_number {
            out.push(c);
            i += 1;
            continue;
        }
        // The run: digit groups joined by "," or ", ".
        let mut groups: Vec<String> = Vec::new();
        let mut spaced = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            groups.push(chars[start..j].iter().collect());
            let digit_at = |k: usize| chars.get(k).is_some_and(|c| c.is_ascii_digit());
            if chars.get(j) == Some(&',') && digit_at(j + 1) {
                spaced.push(false);
                j += 1;
            } else if chars.get(j) == Some(&',') && chars.get(j + 1) == Some(&' ') && digit_at(j + 2) {
                spaced.push(true);
                j += 2;
            } else {
                break;
            }
        }
        let decimals_follow = chars.get(j) == Some(&'.') && chars.get(j + 1).is_some_and(|c| c.is_ascii_digit());
        let grouped = groups[0].len() <= 3
            && !(groups[0].starts_with('0'))
            && groups[1..].iter().all(|g| g.len() == 3)
            && chars.get(j).is_none_or(|c| !c.is_ascii_digit());
        let any_spaced = spaced.contains(&true);
        let unspaced_only = !spaced.is_empty() && !any_spaced;
        if unspaced_only || (any_spaced && grouped) {
            *ambiguous = true;
        }
        let joined = match commas {
            Commas::Thousands if unspaced_only && grouped => Some(groups.concat()),
            Commas::SpacedThousands if grouped && !spaced.is_empty() => Some(groups.concat()),
            Commas::Decimal if unspaced_only && groups.len() == 2 && !decimals_follow => {
                Some(format!("{}.{}", groups[0], groups[1]))
            }
            _ => None,
        };
        match joined {
            Some(number) => out.push_str(&number),
            None => out.extend(&chars[i..j]),
        }
        i = j;
    }
    out
}

/// Splits at the top level on `,`, `;` and the words "and" / "or"; one element is read alone,
/// several are [`Answer::Several`] (or [`Answer::Named`] when each names its own variable).
fn parse_several(s: &str, reading: Reading, depth: usize, ambiguous: &mut bool) -> Result<Answer, String> {
    let mut elements = Vec::new();
    for piece in split_top_level(s, &[',', ';'], true) {
        elements.extend(expand_plus_minus(&piece)?);
    }
    if elements.is_empty() {
        return Err("no answer".into());
    }
    if elements.len() == 1 {
        return parse_element(&elements[0], reading, depth, ambiguous);
    }
    // `x = 2, y = 3` names values; `x = 2 or x = 3` (or `x = 2, 3`) lists them.
    let mut named: Vec<(String, Answer)> = Vec::new();
    let mut plain = Vec::new();
    for element in &elements {
        let element = element.trim();
        if strip_units(element) != element {
            // `5 dollars and 30 cents`, `2 hours, 15 minutes`: one quantity, not two answers.
            return Err("several quantities with units".into());
        }
        match assignment(element) {
            Some((variable, value)) => named.push((variable, parse_element(value, reading, depth, ambiguous)?)),
            None => plain.push(parse_element(element, reading, depth, ambiguous)?),
        }
    }
    let mut names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let several = match (names.len(), plain.is_empty()) {
        (n, true) if n == named.len() => return Ok(Answer::Named(named)),
        (0 | 1, _) => named.into_iter().map(|(_, v)| v).chain(plain).collect::<Vec<_>>(),
        _ => return Err("values named by several variables, some more than once".into()),
    };
    // `x < -2 or x > 3`: the union of the intervals.
    if several.iter().all(|a| matches!(a, Answer::Interval(_))) {
        let intervals = several.into_iter().filter_map(|a| if let Answer::Interval(i) = a { Some(i) } else { None });
        return Ok(Answer::Union(intervals.collect()));
    }
    Ok(Answer::Several(several))
}

/// One answer: a set, a union of intervals, a tuple or interval, a matrix, words or a value,
/// after dropping a variable named on the left (`x = 5`, `(p, q) = (3, 2)`, `x \in [1, 2]`).
pub(crate) fn parse_element(s: &str, reading: Reading, depth: usize, ambiguous: &mut bool) -> Result<Answer, String> {
    if depth > MAX_NESTING {
        return Err(format!("lists nested deeper than {MAX_NESTING}"));
    }
    let s = strip_units(s.trim());
    let s = s.trim().trim_end_matches('.').trim();
    if s.is_empty() {
        return Err("an empty element".into());
    }
    // The character checks first: most answers have no relation, and searching is the cost.
    let commands = s.contains('\\');
    if let Some(sides) = (commands || s.contains('=')).then(|| equality_sides(s)).flatten() {
        return parse_equality(&sides, reading, depth, ambiguous);
    }
    if let Some(interval) = s.contains(['<', '>']).then(|| inequality(s, reading, ambiguous)).flatten() {
        return interval.map(Answer::Interval);
    }
    if (commands || s.contains('!')) && top_level_contains(s, &["\\neq", "!="]) {
        return Err("an inequation".into());
    }
    if s == "\\emptyset" || s == "\\varnothing" || s == "\\{\\}" {
        return Ok(Answer::Set(Vec::new()));
    }
    if matches!(s, "\\mathbb{R}" | "\\mathbb R" | "\\R") {
        let everything =
            Interval { low: Bound::MinusInfinity, high: Bound::Infinity, low_closed: false, high_closed: false };
        return Ok(Answer::Interval(everything));
    }
    if let Some(inner) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")).filter(|i| balanced(i)) {
        let items = split_top_level(inner, &[',', ';'], false);
        let items = items.iter().map(|i| parse_element(i, reading, depth + 1, ambiguous));
        return Ok(Answer::Set(items.collect::<Result<_, _>>()?));
    }
    if commands && top_level_contains(s, &["\\cup"]) {
        let parts = split_top_level_on(s, "\\cup");
        let intervals = parts.iter().map(|p| match parse_element(p, reading, depth + 1, ambiguous)? {
            Answer::Interval(i) => Ok(i),
            Answer::Tuple(t) => open_interval(t).ok_or_else(|| "a union of something other than intervals".into()),
            _ => Err("a union of something other than intervals".to_string()),
        });
        return Ok(Answer::Union(intervals.collect::<Result<_, _>>()?));
    }
    if let Some(matrix) = matrix_rows(s) {
        let mut rows = Vec::new();
        for row in matrix? {
            let cells = row.iter().map(|cell| parse_element(cell, reading, depth + 1, ambiguous));
            rows.push(cells.collect::<Result<Vec<_>, _>>()?);
        }
        return Ok(Answer::Matrix(rows));
    }
    if let Some(answer) = tuple_or_interval(s, reading, depth, ambiguous) {
        return answer;
    }
    if has_words(s) {
        return Ok(Answer::Text(compact(s)));
    }
    let (value, saw_mixed_number) = parse_value(s, reading.mixed_numbers)?;
    *ambiguous |= saw_mixed_number;
    Ok(Answer::Value(value))
}

/// `(a, b, ...)`, `[a, b)`, `(a, b]`, `[a, b]`, `[a, b, c]`; `None` when `s` is not one
/// bracketed list (`(1+2)` is a value).
fn tuple_or_interval(s: &str, reading: Reading, depth: usize, ambiguous: &mut bool) -> Option<Result<Answer, String>> {
    let open = s.chars().next().filter(|c| matches!(c, '(' | '['))?;
    let close = s.chars().last().filter(|c| matches!(c, ')' | ']'))?;
    let inner = &s[1..s.len() - 1];
    if !balanced(inner) {
        return None;
    }
    let items = split_top_level(inner, &[','], false);
    if items.len() < 2 {
        return None;
    }
    let bound = |item: &str, ambiguous: &mut bool| -> Result<Bound, String> {
        match item.trim() {
            "\\infty" | "+\\infty" | "infty" => Ok(Bound::Infinity),
            "-\\infty" | "-infty" => Ok(Bound::MinusInfinity),
            other => {
                let (value, saw_mixed_number) = parse_value(other, reading.mixed_numbers)?;
                *ambiguous |= saw_mixed_number;
                Ok(Bound::Finite(value))
            }
        }
    };
    let infinite = items.iter().any(|i| i.contains("\\infty"));
    let interval_brackets = open == '[' && close == ')' || open == '(' && close == ']';
    if items.len() == 2 && (interval_brackets || (open == '[' && close == ']') || infinite) {
        let interval = (|| {
            Ok(Answer::Interval(Interval {
                low: bound(&items[0], ambiguous)?,
                high: bound(&items[1], ambiguous)?,
                low_closed: open == '[',
                high_closed: close == ']',
            }))
        })();
        return Some(interval);
    }
    if interval_brackets || infinite {
        return Some(Err("interval brackets around other than two bounds".into()));
    }
    let items = items.iter().map(|i| parse_element(i, reading, depth + 1, ambiguous));
    Some(items.collect::<Result<_, _>>().map(Answer::Tuple))
}

/// A two-element tuple read as an open interval.
pub fn open_interval(tuple: Vec<Answer>) -> Option<Interval> {
    let [low, high]: [Answer; 2] = tuple.try_into().ok()?;
    match (low, high) {
        (Answer::Value(low), Answer::Value(high)) => {
            Some(Interval { low: Bound::Finite(low), high: Bound::Finite(high), low_closed: false, high_closed: false })
        }
        _ => None,
    }
}

/// Rows of cells of `\begin{pmatrix} a & b \\ c & d \end{pmatrix}` (also bmatrix, matrix);
/// `None` when `s` is not a matrix.
fn matrix_rows(s: &str) -> Option<Result<Vec<Vec<String>>, String>> {
    const KINDS: [(&str, &str); 3] = [
        ("\\begin{pmatrix}", "\\end{pmatrix}"),
        ("\\begin{bmatrix}", "\\end{bmatrix}"),
        ("\\begin{matrix}", "\\end{matrix}"),
    ];
    let (begin, end) = KINDS.into_iter().find(|(begin, _)| s.starts_with(begin))?;
    let inner = s.strip_prefix(begin).and_then(|r| r.strip_suffix(end)).filter(|inner| !inner.contains("\\begin"));
    let Some(inner) = inner else { return Some(Err("a matrix with more than its rows".into())) };
    let rows: Vec<Vec<String>> = inner
        .split("\\\\")
        .filter(|row| !row.trim().is_empty())
        .map(|row| row.split('&').map(|c| c.trim().to_string()).collect())
        .collect();
    let width = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || rows.iter().any(|r| r.len() != width) {
        return Some(Err("a matrix with rows of different lengths".into()));
    }
    Some(Ok(rows))
}

/// `1 \pm \sqrt2` -> `1 + \sqrt2` and `1 - \sqrt2`; more than one `\pm` is not read.
fn expand_plus_minus(s: &str) -> Result<Vec<String>, String> {
    let count = s.matches("\\pm").count() + s.matches("\\mp").count();
    match count {
        0 => Ok(vec![s.to_string()]),
        1 => {
            let (first, second) = if s.contains("\\pm") { ("+", "-") } else { ("-", "+") };
            let command = if s.contains("\\pm") { "\\pm" } else { "\\mp" };
            Ok(vec![s.replacen(command, first, 1), s.replacen(command, second, 1)])
        }
        _ => Err("more than one \\pm".into()),
    }
}

/// Whether brackets and braces balance (never closing more than was opened).
pub(crate) fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// The inside of `s` when it is `open ... close` with the first bracket closed by the last.
pub(crate) fn enclosed(s: &str, open: char, close: char) -> Option<&str> {
    let inner = s.strip_prefix(open)?.strip_suffix(close)?;
    balanced(inner).then_some(inner)
}

/// Byte positions of `needle` outside brackets and braces.
pub(crate) fn top_level_positions(s: &str, needle: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let Some(first) = needle.chars().next().filter(|_| s.contains(needle)) else { return found };
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if c == first && depth == 0 && s[i..].starts_with(needle) => found.push(i),
            _ => {}
        }
    }
    found
}

fn top_level_contains(s: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| !top_level_positions(s, n).is_empty())
}

fn split_top_level_on<'a>(s: &'a str, separator: &str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for at in top_level_positions(s, separator) {
        parts.push(&s[start..at]);
        start = at + separator.len();
    }
    parts.push(&s[start..]);
    parts
}

/// Splits on `separators` outside brackets, and also on the words "and" / "or" when `words`;
/// drops empty pieces (`1, 2, and 3`).
pub(crate) fn split_top_level(s: &str, separators: &[char], words: bool) -> Vec<String> {
    let mut pieces = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if depth == 0 && separators.contains(&c) => {
                pieces.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&s[start..]);
    let mut out = Vec::new();
    for piece in pieces {
        let mut piece = piece.trim();
        if !words || !piece.contains(' ') {
            out.push(piece);
            continue;
        }
        for word in ["and ", "or "] {
            piece = piece.strip_prefix(word).unwrap_or(piece);
        }
        let mut at_words: Vec<(usize, usize)> = [" and ", " or "]
            .iter()
            .flat_map(|w| top_level_positions(piece, w).into_iter().map(move |at| (at, w.len())))
            .collect();
        at_words.sort_unstable();
        let mut from = 0;
        for (at, len) in at_words {
            if at >= from {
                out.push(&piece[from..at]);
                from = at + len;
            }
        }
        out.push(&piece[from..]);
    }
    out.into_iter().map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

/// A run of three or more letters that is not a LaTeX command: a word.
pub fn has_words(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let command = start > 0 && bytes[start - 1] == b'\\';
            if !command && i - start >= 3 {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::clean;

    fn read(s: &str, reading: Reading) -> Parsed {
        parse_answer(&clean(s), reading).unwrap()
    }

    fn kind(s: &str) -> &'static str {
        match read(s, Reading::USUAL).answer {
            Answer::Value(_) => "value",
            Answer::Tuple(_) => "tuple",
            Answer::Interval(_) => "interval",
            Answer::Union(_) => "union",
            Answer::Set(_) => "set",
            Answer::Several(_) => "several",
            Answer::Named(_) => "named",
            Answer::Matrix(_) => "matrix",
            Answer::Text(_) => "text",
            Answer::Equation(..) => "equation",
        }
    }

    #[test]
    fn each_shape_reads_as_its_kind() {
        assert_eq!(kind("\\frac{1}{2}"), "value");
        assert_eq!(kind("(1, 2, 3)"), "tuple");
        assert_eq!(kind("(p, q) = (3, 2)"), "tuple");
        assert_eq!(kind("[1, 2)"), "interval");
        assert_eq!(kind("x \\ge 2"), "interval");
        assert_eq!(kind("(-\\infty, 1) \\cup (2, \\infty)"), "union");
        assert_eq!(kind("x < 1 \\text{ or } x > 2"), "union");
        assert_eq!(kind("\\{1, 2\\}"), "set");
        assert_eq!(kind("1, 2, \\text{and } 3"), "several");
        assert_eq!(kind("x = 1 \\text{ or } x = 2"), "several");
        assert_eq!(kind("1 \\pm \\sqrt{2}"), "several");
        assert_eq!(kind("x = 1, y = 2"), "named");
        assert_eq!(kind("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"), "matrix");
        assert_eq!(kind("\\text{Monday}"), "text");
        assert_eq!(kind("x^2 + y^2 = 1"), "equation");
    }

    #[test]
    fn commas_between_digits_read_as_the_reading_says() {
        let rewritten = |s: &str, commas| read_commas(s, commas, &mut false);
        assert_eq!(rewritten("32,349", Commas::Thousands), "32349");
        assert_eq!(rewritten("32, 349", Commas::Thousands), "32, 349");
        assert_eq!(rewritten("32, 349", Commas::SpacedThousands), "32349");
        assert_eq!(rewritten("0,111", Commas::Thousands), "0,111", "a leading zero is no thousands group");
        assert_eq!(rewritten("0,111", Commas::Decimal), "0.111");
        assert_eq!(rewritten("1,234", Commas::Separators), "1,234");
        assert_eq!(rewritten("(1,000, 2)", Commas::Thousands), "(1,000, 2)", "inside brackets commas separate");
        assert!(read("32,349", Reading::USUAL).ambiguous);
        assert!(read("918\\frac12", Reading::USUAL).ambiguous);
        assert!(!read("1, 2", Reading::USUAL).ambiguous);
    }

    #[test]
    fn what_is_not_understood_is_an_error_that_says_why() {
        let why = |s: &str| parse_answer(&clean(s), Reading::USUAL).unwrap_err();
        assert_eq!(why("x \\neq 2"), "an inequation");
        assert_eq!(why("1 \\pm 2 \\pm 3"), "more than one \\pm");
        assert_eq!(why("5 \\text{ hours and } 30 \\text{ minutes}"), "several quantities with units");
        assert_eq!(why("(1, 2]3"), "unexpected ','");
        let nested = (0..20).fold("1".to_string(), |inner, i| format!("({inner}, {i})"));
        assert_eq!(why(&nested), "lists nested deeper than 16");
    }
}
