//! Relations in answers: a variable named on the left (`x = 5`, `f(x) = 2x`, `(p, q) = (3, 2)`,
//! `x \in [1, 2)`), chains of equal numbers (`\frac{6}{4} = \frac32 \approx 1.5`), equations in
//! variables, and inequalities of one variable read as intervals (`-3 < x \le 3`).

use crate::answer::{enclosed, parse_element, split_top_level, top_level_positions};
use crate::answer::{Answer, Bound, Interval, Reading};
use crate::expr::close;
use crate::value::parse_value;

/// `x = 5` -> ("x", "5") when the left side is one variable.
pub(crate) fn assignment(s: &str) -> Option<(String, &str)> {
    match equality_sides(s)?.as_slice() {
        [lhs, rhs] => Some((variable_name(lhs)?, rhs)),
        _ => None,
    }
}

/// The sides of an equation (`=` outside brackets, not `<=`, `>=`, `!=`; also `\in` and
/// `\approx`); `None` when there is no such relation.
pub(crate) fn equality_sides(s: &str) -> Option<Vec<&str>> {
    let mut cuts: Vec<(usize, usize)> = top_level_positions(s, "=")
        .into_iter()
        .filter(|&at| !(at > 0 && matches!(s.as_bytes()[at - 1], b'<' | b'>' | b'!')))
        .map(|at| (at, 1))
        .collect();
    for relation in ["\\in", "\\approx"] {
        let at = top_level_positions(s, relation);
        // Not `\infty`, `\int`: a command ends where its letters do.
        let ends =
            at.into_iter().filter(|&at| !s[at + relation.len()..].starts_with(|c: char| c.is_ascii_alphabetic()));
        cuts.extend(ends.map(|at| (at, relation.len())));
    }
    if cuts.is_empty() {
        return None;
    }
    cuts.sort_unstable();
    let mut sides = Vec::new();
    let mut start = 0;
    for (at, len) in cuts {
        sides.push(s[start..at].trim());
        start = at + len;
    }
    sides.push(s[start..].trim());
    Some(sides)
}

/// `x = 5`, `f(x) = 2x`, `(p, q) = (3, 2)`, `x \in [1, 2]`, `x = \frac{6}{4} = \frac32`,
/// `\frac83 \approx 2.67`: what is named on the left is dropped; of several equal
/// numbers the first is the answer (the exact form, before any approximation).
pub(crate) fn parse_equality(
    sides: &[&str],
    reading: Reading,
    depth: usize,
    ambiguous: &mut bool,
) -> Result<Answer, String> {
    if sides.iter().any(|side| side.is_empty()) {
        return Err("an equation with an empty side".into());
    }
    let swapped;
    let mut sides = sides;
    if let [formula, variable] = sides {
        if variable_name(variable).is_some() && variable_name(formula).is_none() && !function_name(formula) {
            // `x^2 = y` names y on the right.
            swapped = [*variable, *formula];
            sides = &swapped;
        }
    }
    if variable_name(sides[0]).is_some() || function_name(sides[0]) {
        sides = &sides[1..];
    } else if let Some(variables) = enclosed(sides[0], '(', ')').map(|inner| split_top_level(inner, &[','], false)) {
        if variables.len() > 1 && variables.iter().all(|v| variable_name(v).is_some()) {
            return match parse_element(sides[1], reading, depth + 1, ambiguous)? {
                Answer::Tuple(values) if values.len() == variables.len() && sides.len() == 2 => {
                    Ok(Answer::Tuple(values))
                }
                _ => Err("a tuple of variables set to something else".into()),
            };
        }
    }
    match sides {
        [one] => parse_element(one, reading, depth + 1, ambiguous),
        [first, rest @ ..] => {
            let first_value = parse_value(first, reading.mixed_numbers);
            let Ok((value, saw_mixed_number)) = first_value else { return Err("an equation".into()) };
            if let ([rhs], None) = (rest, value.constant) {
                // An equation in variables (a curve, a plane).
                let (rhs, saw_in_rhs) = parse_value(rhs, reading.mixed_numbers)?;
                *ambiguous |= saw_mixed_number || saw_in_rhs;
                return Ok(Answer::Equation(value, rhs));
            }
            for side in rest {
                let (other, _) = parse_value(side, reading.mixed_numbers).map_err(|_| "an equation".to_string())?;
                let equal =
                    matches!((value.constant, other.constant), (Some(x), Some(y)) if close(x, y) || close_enough(x, y));
                if !equal {
                    return Err("an equation".into());
                }
            }
            *ambiguous |= saw_mixed_number;
            Ok(Answer::Value(value))
        }
        [] => Err("an equation".into()),
    }
}

/// Within 1% (`\frac83 \approx 2.67`): an approximation written beside the exact value.
fn close_enough(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-2 * x.abs().max(y.abs())
}

/// `x < 3`, `x \ge -1`, `-3 < x \le 3`, `3 > x` as intervals; `None` when `s` has no
/// inequality sign.
pub(crate) fn inequality(s: &str, reading: Reading, ambiguous: &mut bool) -> Option<Result<Interval, String>> {
    let mut cuts: Vec<(usize, &str)> = Vec::new();
    for sign in ["<=", ">=", "<", ">"] {
        for at in top_level_positions(s, sign) {
            if !cuts.iter().any(|(c, sign)| at >= *c && at < c + sign.len()) {
                cuts.push((at, sign));
            }
        }
    }
    if cuts.is_empty() {
        return None;
    }
    cuts.sort_unstable();
    let mut sides = Vec::new();
    let mut start = 0;
    for (at, sign) in &cuts {
        sides.push(s[start..*at].trim());
        start = at + sign.len();
    }
    sides.push(s[start..].trim());
    let signs: Vec<&str> = cuts.iter().map(|(_, sign)| *sign).collect();
    let mut bound = |text: &str| -> Result<Bound, String> {
        match text {
            "\\infty" | "+\\infty" => Ok(Bound::Infinity),
            "-\\infty" => Ok(Bound::MinusInfinity),
            _ => {
                let (value, saw_mixed_number) = parse_value(text, reading.mixed_numbers)?;
                *ambiguous |= saw_mixed_number;
                Ok(Bound::Finite(value))
            }
        }
    };
    let less = |sign: &str| sign.starts_with('<');
    let closed = |sign: &str| sign.ends_with('=');
    let interval = |low, low_closed, high, high_closed| Interval { low, high, low_closed, high_closed };
    let unbounded = |below: bool| if below { Bound::MinusInfinity } else { Bound::Infinity };
    Some(match (sides.as_slice(), signs.as_slice()) {
        // x < b, x >= a
        ([x, other], [sign]) if variable_name(x).is_some() => bound(other).map(|b| {
            if less(sign) {
                interval(unbounded(true), false, b, closed(sign))
            } else {
                interval(b, closed(sign), unbounded(false), false)
            }
        }),
        // a < x, b >= x
        ([other, x], [sign]) if variable_name(x).is_some() => bound(other).map(|b| {
            if less(sign) {
                interval(b, closed(sign), unbounded(false), false)
            } else {
                interval(unbounded(true), false, b, closed(sign))
            }
        }),
        // a < x <= b, b > x > a
        ([a, x, b], [first, second]) if variable_name(x).is_some() && less(first) == less(second) => {
            let (low, low_sign, high, high_sign) =
                if less(first) { (a, first, b, second) } else { (b, second, a, first) };
            (|| Ok(interval(bound(low)?, closed(low_sign), bound(high)?, closed(high_sign))))()
        }
        _ => Err("an inequality that is not an interval of one variable".into()),
    })
}

/// `f(x)`, `g(t)`, `P(x, y)`: a function named on the left of its formula.
fn function_name(s: &str) -> bool {
    let Some((name, rest)) = s.split_once('(') else { return false };
    let arguments = rest.strip_suffix(')').unwrap_or("");
    name.len() == 1
        && name.chars().all(|c| c.is_ascii_alphabetic())
        && !arguments.is_empty()
        && arguments.split(',').all(|a| variable_name(a).is_some())
}

/// A variable's name: one letter (`x`), with a subscript (`x_1`, `x_{1}`), or a Greek letter.
pub(crate) fn variable_name(s: &str) -> Option<String> {
    let s = s.trim();
    let (base, subscript) = s.split_once('_').unwrap_or((s, ""));
    let letter = base.len() == 1 && base.chars().all(|c| c.is_ascii_alphabetic());
    let greek = base.strip_prefix('\\').is_some_and(|name| {
        matches!(name, "alpha" | "beta" | "gamma" | "delta" | "theta" | "phi" | "lambda" | "mu" | "omega" | "rho")
    });
    let subscript_ok =
        subscript.trim_start_matches('{').trim_end_matches('}').chars().all(|c| c.is_ascii_alphanumeric());
    ((letter || greek) && subscript_ok).then(|| s.replace(['{', '}'], ""))
}
