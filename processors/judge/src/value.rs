//! Values (numbers and expressions) as written, and how two compare.
//!
//! Numbers written as plain decimals (`2.6667`, `918.5`, `32349`) compare exactly, digit by
//! digit, so size does not matter. Other values compare by their floating-point value
//! ([`close`]). A decimal can be a rounding of the other side's exact value; the rule is:
//! - correctly rounded (off by at most half a unit in its last digit) with at least
//!   [`ROUNDED_SIGNIFICANT_DIGITS`] significant digits, against an exact value that is not
//!   itself a plain decimal: MATCH (`2.6667` for `\frac83`);
//! - correctly rounded with fewer digits (`0.33` for `\frac13`), off by less than one unit
//!   (`2.6666`), or one decimal rounding another (`0.67` and `0.667`): UNSURE;
//! - otherwise the values differ: MISMATCH.
//!
//! A percentage against its fraction (`50\%` and `0.5`), and degrees against radians, are
//! UNSURE; so are differences that the imaginary unit `i` or decimals inside an expression
//! could explain.

use crate::expr::{close, parse_reading, Expr};
use crate::normalize::compact;
use crate::verify::RuleVerdict;

/// A decimal needs this many significant digits to MATCH the exact value it rounds.
pub const ROUNDED_SIGNIFICANT_DIGITS: usize = 4;

/// Integers beyond this are not exact in floating point.
const LARGEST_EXACT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Clone)]
pub struct Value {
    pub expr: Expr,
    /// The value, when the expression has no variables.
    pub constant: Option<f64>,
    /// The number as written, when the value is one plain decimal number.
    pub literal: Option<Literal>,
    /// Written with a decimal point somewhere (then it may be rounded).
    pub decimals: bool,
    pub percent: bool,
    pub degrees: bool,
}

impl Value {
    /// A multiple-choice letter: `C`, `(C)`, `\text{(C)}` (one capital letter alone).
    fn choice(&self) -> Option<char> {
        match self.expr {
            Expr::Var(c) if c.is_ascii_uppercase() => Some(c),
            _ => None,
        }
    }
}

/// A plain decimal number as written: `-12.50` is (negative, "12", "50").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    pub negative: bool,
    pub integer: String,
    pub fraction: String,
}

impl Literal {
    fn parse(s: &str) -> Option<Literal> {
        let (negative, digits) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (integer, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        let well_formed = all_digits(integer) && all_digits(fraction) && !(integer.is_empty() && fraction.is_empty());
        well_formed.then(|| Literal { negative, integer: integer.to_string(), fraction: fraction.to_string() })
    }

    /// Digits after the decimal point, as written.
    pub fn places(&self) -> usize {
        self.fraction.len()
    }

    /// Digits from the first non-zero one (`0.0450` has 3).
    pub fn significant(&self) -> usize {
        let digits = format!("{}{}", self.integer, self.fraction);
        digits.trim_start_matches('0').len()
    }

    /// The same number (`5`, `5.00`, `05`; `-0` and `0`).
    fn same_number(&self, other: &Literal) -> bool {
        let canonical = |l: &Literal| {
            let integer = l.integer.trim_start_matches('0').to_string();
            let fraction = l.fraction.trim_end_matches('0').to_string();
            let zero = integer.is_empty() && fraction.is_empty();
            (l.negative && !zero, integer, fraction)
        };
        canonical(self) == canonical(other)
    }
}

/// Reads a value: percent and degree signs noted and removed, then the expression. Also
/// returns whether an integer stood before a proper fraction (see [`crate::expr`]).
pub fn parse_value(s: &str, mixed_numbers: bool) -> Result<(Value, bool), String> {
    let percent = s.contains('%');
    let degrees = s.contains('°');
    let s: String = s.chars().filter(|c| *c != '%' && *c != '°').collect();
    let chars: Vec<char> = s.trim().chars().collect();
    if chars.windows(3).any(|w| w[0].is_ascii_digit() && w[1] == ' ' && w[2].is_ascii_digit()) {
        return Err("two numbers side by side".into());
    }
    let text = compact(&s);
    if degrees && ["\\sin", "\\cos", "\\tan"].iter().any(|f| text.contains(f)) {
        return Err("degrees inside a trigonometric function".into());
    }
    let (expr, saw_mixed_number) = parse_reading(&text, mixed_numbers)?;
    let constant = if expr.variables().is_empty() {
        let v = expr.eval(&|_| f64::NAN);
        if !v.is_finite() {
            return Err("not a finite number".into());
        }
        Some(v)
    } else {
        None
    };
    let value =
        Value { literal: Literal::parse(&text), decimals: text.contains('.'), constant, expr, percent, degrees };
    Ok((value, saw_mixed_number))
}

/// A plain decimal number (`18`, `-2.50`, `x = 7 cm`): the [`compact`] text of a cleaned
/// answer with no comma, percent or degree sign that could read it otherwise. The verifier's
/// fast path: most answers are such numbers, and reading them needs no parser.
pub fn plain_number(cleaned: &str, compacted: &str) -> Option<Value> {
    if cleaned.contains([',', '%', '°']) {
        return None;
    }
    let literal = Literal::parse(compacted)?;
    let value: f64 = compacted.parse().ok().filter(|v: &f64| v.is_finite())?;
    Some(Value {
        expr: Expr::Num(value),
        constant: Some(value),
        decimals: !literal.fraction.is_empty() || compacted.contains('.'),
        literal: Some(literal),
        percent: false,
        degrees: false,
    })
}

/// Compares two values.
pub fn compare_values(a: &Value, b: &Value) -> (RuleVerdict, &'static str) {
    match (a.choice(), b.choice()) {
        (Some(x), Some(y)) if x == y => return (RuleVerdict::Match, "the same choice"),
        (Some(_), Some(_)) => return (RuleVerdict::Mismatch, "different choices"),
        (Some(_), None) | (None, Some(_)) => return (RuleVerdict::Unsure, "a choice letter against another answer"),
        (None, None) => {}
    }
    match (a.constant, b.constant) {
        (Some(x), Some(y)) => compare_numbers(a, x, b, y),
        (None, None) => {
            let variables = a.expr.variables();
            if variables != b.expr.variables() {
                return (RuleVerdict::Unsure, "expressions in different variables");
            }
            match same_function(&a.expr, &b.expr) {
                Some(true) => (RuleVerdict::Match, "equal expressions at sample points"),
                Some(false) if variables.contains(&'i') => {
                    (RuleVerdict::Unsure, "expressions with i (imaginary?) differ")
                }
                Some(false) if a.decimals || b.decimals => (RuleVerdict::Unsure, "expressions with decimals differ"),
                Some(false) => (RuleVerdict::Mismatch, "different expressions at sample points"),
                None => (RuleVerdict::Unsure, "expressions undefined at the sample points"),
            }
        }
        _ => (RuleVerdict::Unsure, "a number against an expression"),
    }
}

fn compare_numbers(a: &Value, x: f64, b: &Value, y: f64) -> (RuleVerdict, &'static str) {
    if let (Some(la), Some(lb)) = (&a.literal, &b.literal) {
        if la.same_number(lb) {
            return (RuleVerdict::Match, "equal numbers");
        }
    } else if close(x, y) {
        if x.abs() >= LARGEST_EXACT {
            return (RuleVerdict::Unsure, "numbers too large to compare exactly");
        }
        return (RuleVerdict::Match, "equal values");
    }
    if a.percent != b.percent && (close(x / 100.0, y) || close(x, y / 100.0)) {
        return (RuleVerdict::Unsure, "a percentage against its fraction");
    }
    if a.degrees != b.degrees && (close(x.to_radians(), y) || close(x, y.to_radians())) {
        return (RuleVerdict::Unsure, "degrees against radians");
    }
    if let Some(decided) = rounding(a, x, b, y).or_else(|| rounding(b, y, a, x)) {
        return decided;
    }
    let inexact = |v: &Value| v.decimals && v.literal.is_none();
    if (inexact(a) || inexact(b)) && (x - y).abs() <= 1e-2 * x.abs().max(y.abs()) {
        return (RuleVerdict::Unsure, "expressions with decimals within 1% of each other");
    }
    if x.abs().max(y.abs()) >= LARGEST_EXACT && (a.literal.is_none() || b.literal.is_none()) {
        return (RuleVerdict::Unsure, "numbers too large to compare exactly");
    }
    (RuleVerdict::Mismatch, "different values")
}

/// The rounding rule (module doc) for `decimal` (value `x`) against `exact` (value `y`);
/// `None` when it is not a rounding question.
fn rounding(decimal: &Value, x: f64, exact: &Value, y: f64) -> Option<(RuleVerdict, &'static str)> {
    let written = decimal.literal.as_ref().filter(|l| l.places() > 0)?;
    if exact.literal.as_ref().is_some_and(|l| l.places() <= written.places()) {
        // The other number is as short: different numbers, not a rounding.
        return None;
    }
    let unit = 10f64.powi(-(written.places() as i32));
    let off = (x - y).abs();
    let slack = 1e-9 * x.abs().max(1.0);
    if off <= unit / 2.0 + slack {
        return Some(if exact.literal.is_some() {
            (RuleVerdict::Unsure, "one decimal rounds the other")
        } else if written.significant() >= ROUNDED_SIGNIFICANT_DIGITS {
            (RuleVerdict::Match, "a decimal rounding the exact value to 4 or more significant digits")
        } else {
            (RuleVerdict::Unsure, "a decimal with under 4 significant digits rounds the exact value")
        });
    }
    (off < unit + slack).then_some((RuleVerdict::Unsure, "a decimal within one unit of its last digit"))
}

/// Two equations `a_lhs = a_rhs` and `b_lhs = b_rhs` in the same variables: MATCH when
/// `a_lhs - a_rhs` is a constant multiple of `b_lhs - b_rhs` at every sample point; else
/// UNSURE (equations that are not proportional may still have the same solutions).
pub fn same_equation(a_lhs: &Value, a_rhs: &Value, b_lhs: &Value, b_rhs: &Value) -> (RuleVerdict, &'static str) {
    let difference = |l: &Value, r: &Value| Expr::Sub(l.expr.clone().into(), r.expr.clone().into());
    let (a, b) = (difference(a_lhs, a_rhs), difference(b_lhs, b_rhs));
    if a.variables().is_empty() || a.variables() != b.variables() {
        return (RuleVerdict::Unsure, "equations in different variables");
    }
    let ratio = Expr::Div(a.into(), b.into());
    let constant_ratio = (1..=3).any(|shift| {
        let c = ratio.eval(&|v| 0.41 * f64::from(shift) + f64::from(v as u8 % 7) * 0.29);
        c.is_finite() && c != 0.0 && same_function(&ratio, &Expr::Num(c)).unwrap_or(false)
    });
    if constant_ratio {
        (RuleVerdict::Match, "equations with proportional sides")
    } else {
        (RuleVerdict::Unsure, "equations that are not proportional")
    }
}

/// Evaluates both at fixed sample points; None when too few points are defined for both.
pub fn same_function(a: &Expr, b: &Expr) -> Option<bool> {
    const POINTS: [f64; 6] = [0.37, 1.13, 2.71, -0.59, 3.3, 0.82];
    let vars: Vec<char> = a.variables().into_iter().collect();
    let mut defined = 0;
    for (k, _) in POINTS.iter().enumerate() {
        let value_of = |v: char| {
            let i = vars.iter().position(|x| *x == v).unwrap_or(0);
            POINTS[(k + i * 2) % POINTS.len()] + i as f64 * 0.5
        };
        let (x, y) = (a.eval(&value_of), b.eval(&value_of));
        if !x.is_finite() || !y.is_finite() {
            continue;
        }
        if !close(x, y) {
            return Some(false);
        }
        defined += 1;
    }
    (defined >= 3).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RuleVerdict::*;

    fn v(a: &str, b: &str) -> RuleVerdict {
        compare_values(&parse_value(a, true).unwrap().0, &parse_value(b, true).unwrap().0).0
    }

    #[test]
    fn plain_numbers_compare_digit_by_digit() {
        assert_eq!(v("12345678901234567", "12345678901234568"), Mismatch, "beyond f64's exact integers");
        assert_eq!(v("5.00", "5"), Match);
        assert_eq!(v("-0", "0"), Match);
        assert_eq!(v("2.5", "2.6"), Mismatch);
        assert_eq!(v("4.99", "5"), Mismatch, "a decimal against a shorter number is not a rounding");
    }

    #[test]
    fn decimals_rounding_an_exact_value() {
        assert_eq!(v("2.6667", "\\frac{8}{3}"), Match);
        assert_eq!(v("1.414", "\\sqrt{2}"), Match);
        assert_eq!(v("0.6", "\\frac35"), Match, "exact");
        assert_eq!(v("0.33", "\\frac{1}{3}"), Unsure, "too few digits to call it the same");
        assert_eq!(v("2.6666", "\\frac{8}{3}"), Unsure, "truncated, within one unit");
        assert_eq!(v("0.67", "0.667"), Unsure, "one decimal rounds the other");
        assert_eq!(v("2.6767", "\\frac{8}{3}"), Mismatch);
        assert_eq!(v("3.14", "\\pi"), Unsure);
        assert_eq!(v("5", "\\frac92"), Mismatch, "integers are not roundings");
    }

    #[test]
    fn percent_degrees_and_mixed_numbers() {
        assert_eq!(v("50%", "50"), Match);
        assert_eq!(v("50%", "0.5"), Unsure);
        assert_eq!(v("40%", "0.5"), Mismatch);
        assert_eq!(v("90°", "\\frac{\\pi}{2}"), Unsure);
        assert_eq!(v("918\\frac{1}{2}", "918.5"), Match);
        assert_eq!(v("-2\\frac{1}{4}", "-2.25"), Match);
        assert!(parse_value("918\\frac{1}{2}", true).unwrap().1, "the product reading differs");
        assert!(!parse_value("\\frac{1}{2}", true).unwrap().1);
        assert_eq!(v("2\\frac{\\pi}{3}", "\\frac{2\\pi}{3}"), Match, "not a proper fraction of integers: a product");
    }

    #[test]
    fn expressions_by_sample_points() {
        assert_eq!(v("x^2+2x+1", "(x+1)^2"), Match);
        assert_eq!(v("x^2+1", "(x+1)^2"), Mismatch);
        assert_eq!(v("(1+i)^2", "2i"), Unsure, "i may be the imaginary unit");
        assert_eq!(v("0.33x", "\\frac{x}{3}"), Unsure);
        assert_eq!(v("x+1", "y+1"), Unsure);
        assert_eq!(v("x", "5"), Unsure);
        assert!(parse_value("1 2", true).is_err(), "two numbers side by side");
    }
}
