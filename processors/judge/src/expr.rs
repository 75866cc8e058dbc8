//! A small parser and evaluator for the math in answers: numbers, `+ - * / ^`, parentheses
//! and braces, `\frac`, `\sqrt` (with an optional index), `\pi`, `e`, common functions, and
//! single-letter variables, with implicit multiplication (`2\sqrt{3}`, `3x`, `2(x+1)`).
//! Expressions compare by value: numerically, or at sample points when they have variables.
//! Nesting is bounded, so hostile input fails cleanly instead of exhausting the stack.
//!
//! An integer written right before a proper fraction of integers (`918\frac{1}{2}`) is a mixed
//! number by default (918.5); [`parse_reading`] can read it as the product instead, and says
//! whether the answer had one, so the verifier can check that both readings agree.

use std::collections::BTreeSet;

const MAX_DEPTH: usize = 100;

/// Longer expressions are refused. Nesting depth alone does not bound the tree: a flat chain
/// `1+1+1+...` or `xxxx...` parses into a left-deep tree as deep as it is long, and evaluating
/// or dropping a tree of 100,000 nodes overflowed the stack. No real answer comes near this.
pub const MAX_EXPRESSION_TOKENS: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Var(char),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Func(Func, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Sqrt,
    Sin,
    Cos,
    Tan,
    Ln,
    Exp,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Var(char),
    Op(char),
    Open(char),
    Close(char),
    Frac,
    Sqrt,
    Pi,
    Func(Func),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if tokens.len() > MAX_EXPRESSION_TOKENS {
            return Err(format!("expression has more than {MAX_EXPRESSION_TOKENS} tokens"));
        }
        let c = chars[i];
        match c {
            ' ' => i += 1,
            '0'..='9' | '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let exponent_follows = |k: usize| chars.get(k).is_some_and(|c| c.is_ascii_digit());
                if matches!(chars.get(i), Some('e' | 'E'))
                    && (exponent_follows(i + 1)
                        || matches!(chars.get(i + 1), Some('+' | '-')) && exponent_follows(i + 2))
                {
                    // `1.5e3`: scientific notation, or 1.5 times Euler's e times 3?
                    return Err(format!("{text}e...: scientific notation or Euler's e"));
                }
                tokens.push(Token::Num(text.parse().map_err(|_| format!("bad number {text}"))?));
            }
            '+' | '-' | '*' | '/' | '^' => {
                tokens.push(Token::Op(c));
                i += 1;
            }
            '(' | '[' | '{' => {
                tokens.push(Token::Open(c));
                i += 1;
            }
            ')' | ']' | '}' => {
                tokens.push(Token::Close(c));
                i += 1;
            }
            '\\' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_alphabetic() {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                tokens.push(match name.as_str() {
                    "frac" => Token::Frac,
                    "sqrt" => Token::Sqrt,
                    "pi" => Token::Pi,
                    "sin" => Token::Func(Func::Sin),
                    "cos" => Token::Func(Func::Cos),
                    "tan" => Token::Func(Func::Tan),
                    "ln" => Token::Func(Func::Ln),
                    // Natural or base 10? Graders differ, so an answer with `\log` is not read.
                    "log" => return Err("\\log without a base".into()),
                    "exp" => Token::Func(Func::Exp),
                    other => return Err(format!("unsupported command \\{other}")),
                });
            }
            c if c.is_ascii_alphabetic() => {
                tokens.push(Token::Var(c));
                i += 1;
            }
            other => return Err(format!("unexpected '{other}'")),
        }
    }
    if tokens.len() > MAX_EXPRESSION_TOKENS {
        return Err(format!("expression has more than {MAX_EXPRESSION_TOKENS} tokens"));
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    /// Read `2\frac{1}{2}` as 2 + 1/2 (else as 2 * 1/2).
    mixed_numbers: bool,
    /// Whether an integer stood right before a proper fraction (the two readings differ).
    saw_mixed_number: bool,
}

/// Parses an expression, reading `2\frac{1}{2}` as the mixed number 2.5.
pub fn parse(s: &str) -> Result<Expr, String> {
    parse_reading(s, true).map(|(expr, _)| expr)
}

/// Parses an expression, reading an integer before a proper fraction as a mixed number or as a
/// product; also returns whether the expression had such a pair.
pub fn parse_reading(s: &str, mixed_numbers: bool) -> Result<(Expr, bool), String> {
    let mut parser = Parser { tokens: tokenize(s)?, pos: 0, depth: 0, mixed_numbers, saw_mixed_number: false };
    if parser.tokens.is_empty() {
        return Err("empty expression".into());
    }
    let expr = parser.expr()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!("unexpected {:?}", parser.tokens[parser.pos]));
    }
    Ok((expr, parser.saw_mixed_number))
}

/// `n` and `a/b` as the mixed number `n a/b` when `n` is a non-negative integer (or its
/// negation) and `a/b` a proper fraction of positive integers.
fn mixed_number(whole: &Expr, fraction: &Expr) -> Option<Expr> {
    let integer = |e: &Expr| matches!(e, Expr::Num(n) if n.fract() == 0.0 && *n >= 0.0);
    let (Expr::Div(a, b), Some((negative, n))) = (
        fraction,
        match whole {
            Expr::Num(_) if integer(whole) => Some((false, whole)),
            Expr::Neg(inner) if integer(inner) => Some((true, &**inner)),
            _ => None,
        },
    ) else {
        return None;
    };
    let (Expr::Num(a_value), Expr::Num(b_value)) = (&**a, &**b) else { return None };
    if !(integer(a) && integer(b) && 0.0 < *a_value && a_value < b_value) {
        return None;
    }
    let sum = Expr::Add(n.clone().into(), fraction.clone().into());
    Some(if negative { Expr::Neg(sum.into()) } else { sum })
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let mut left = self.term()?;
        while let Some(Token::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.pos += 1;
            let right = self.term()?;
            left = if op == '+' { Expr::Add(left.into(), right.into()) } else { Expr::Sub(left.into(), right.into()) };
        }
        self.depth -= 1;
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        let mut first_factor = true;
        loop {
            if first_factor && matches!(self.peek(), Some(Token::Frac)) {
                // `918\frac{1}{2}`: a mixed number, or 918 times a half.
                let fraction = self.power()?;
                match mixed_number(&left, &fraction) {
                    Some(mixed) => {
                        self.saw_mixed_number = true;
                        left = if self.mixed_numbers { mixed } else { Expr::Mul(left.into(), fraction.into()) };
                    }
                    None => left = Expr::Mul(left.into(), fraction.into()),
                }
                first_factor = false;
                continue;
            }
            first_factor = false;
            match self.peek() {
                Some(Token::Op('*')) => {
                    self.pos += 1;
                    left = Expr::Mul(left.into(), self.unary()?.into());
                }
                Some(Token::Op('/')) => {
                    self.pos += 1;
                    left = Expr::Div(left.into(), self.unary()?.into());
                }
                // Implicit multiplication: 2x, 3\sqrt{2}, 2(x+1), x y.
                Some(
                    Token::Num(_)
                    | Token::Var(_)
                    | Token::Open('(')
                    | Token::Frac
                    | Token::Sqrt
                    | Token::Pi
                    | Token::Func(_),
                ) => {
                    left = Expr::Mul(left.into(), self.power()?.into());
                }
                _ => return Ok(left),
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some(Token::Op('-')) => {
                self.pos += 1;
                self.enter()?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Neg(inner.into()))
            }
            Some(Token::Op('+')) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.primary()?;
        if let Some(Token::Op('^')) = self.peek() {
            self.pos += 1;
            self.enter()?;
            let exponent = self.unary_primary()?;
            self.depth -= 1;
            return Ok(Expr::Pow(base.into(), exponent.into()));
        }
        Ok(base)
    }

    /// An exponent: `-2`, `{...}`, a number or a variable.
    fn unary_primary(&mut self) -> Result<Expr, String> {
        if let Some(Token::Op('-')) = self.peek() {
            self.pos += 1;
            return Ok(Expr::Neg(self.unary_primary()?.into()));
        }
        self.power()
    }

    /// One argument of `\frac` or `\sqrt`: a braced group, or a single token (`\frac12`).
    fn argument(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Token::Open('{')) => self.primary(),
            Some(Token::Num(n)) => {
                // `\frac12`: the tokenizer read "12" as one number; split off its first digit.
                self.pos += 1;
                let text = format!("{n}");
                if text.len() > 1 && !text.contains('.') {
                    let (first, rest) = text.split_at(1);
                    self.tokens.insert(self.pos, Token::Num(rest.parse().map_err(|_| "bad number")?));
                    return Ok(Expr::Num(first.parse().map_err(|_| "bad number")?));
                }
                Ok(Expr::Num(n))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let result = match self.next() {
            Some(Token::Num(n)) => Ok(Expr::Num(n)),
            Some(Token::Var('e')) => Ok(Expr::Num(std::f64::consts::E)),
            Some(Token::Var(v)) => Ok(Expr::Var(v)),
            Some(Token::Pi) => Ok(Expr::Num(std::f64::consts::PI)),
            Some(Token::Open(open)) => {
                let inner = self.expr()?;
                match self.next() {
                    Some(Token::Close(_)) => Ok(inner),
                    _ => Err(format!("'{open}' is never closed")),
                }
            }
            Some(Token::Frac) => {
                let numerator = self.argument()?;
                let denominator = self.argument()?;
                Ok(Expr::Div(numerator.into(), denominator.into()))
            }
            Some(Token::Sqrt) => {
                if let Some(Token::Open('[')) = self.peek() {
                    self.pos += 1;
                    let index = self.expr()?;
                    if !matches!(self.next(), Some(Token::Close(']'))) {
                        return Err("\\sqrt[ is never closed".into());
                    }
                    let radicand = self.argument()?;
                    Ok(Expr::Pow(radicand.into(), Expr::Div(Expr::Num(1.0).into(), index.into()).into()))
                } else {
                    Ok(Expr::Func(Func::Sqrt, self.argument()?.into()))
                }
            }
            Some(Token::Func(f)) => Ok(Expr::Func(f, self.power()?.into())),
            other => Err(format!("unexpected {other:?}")),
        };
        self.depth -= 1;
        result
    }
}

impl Expr {
    pub fn variables(&self) -> BTreeSet<char> {
        let mut out = BTreeSet::new();
        self.collect_variables(&mut out);
        out
    }

    fn collect_variables(&self, out: &mut BTreeSet<char>) {
        match self {
            Expr::Num(_) => {}
            Expr::Var(v) => {
                out.insert(*v);
            }
            Expr::Neg(a) | Expr::Func(_, a) => a.collect_variables(out),
            Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) | Expr::Pow(a, b) => {
                a.collect_variables(out);
                b.collect_variables(out);
            }
        }
    }

    pub fn eval(&self, var: &dyn Fn(char) -> f64) -> f64 {
        match self {
            Expr::Num(n) => *n,
            Expr::Var(v) => var(*v),
            Expr::Neg(a) => -a.eval(var),
            Expr::Add(a, b) => a.eval(var) + b.eval(var),
            Expr::Sub(a, b) => a.eval(var) - b.eval(var),
            Expr::Mul(a, b) => a.eval(var) * b.eval(var),
            Expr::Div(a, b) => a.eval(var) / b.eval(var),
            Expr::Pow(a, b) => a.eval(var).powf(b.eval(var)),
            Expr::Func(f, a) => {
                let x = a.eval(var);
                match f {
                    Func::Sqrt => x.sqrt(),
                    Func::Sin => x.sin(),
                    Func::Cos => x.cos(),
                    Func::Tan => x.tan(),
                    Func::Ln => x.ln(),
                    Func::Exp => x.exp(),
                }
            }
        }
    }
}

/// Equal as answers: integers exactly (1450001 is not 1450000), other values within a
/// relative 1e-9, which absorbs floating-point error (2\sqrt{3} against \sqrt{12}) but not a
/// rounded decimal (0.333 is not 1/3).
/// NaN and infinities are never close to anything: `inf - 1` is `inf`, which the relative
/// bound (also `inf`) would have accepted.
pub fn close(a: f64, b: f64) -> bool {
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    let integral = |x: f64| (x - x.round()).abs() < 1e-9;
    if integral(a) && integral(b) {
        return a.round() == b.round();
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> f64 {
        parse(s).unwrap().eval(&|_| f64::NAN)
    }

    #[test]
    fn numbers_fractions_radicals_and_pi() {
        assert_eq!(value("3"), 3.0);
        assert_eq!(value("-2.5"), -2.5);
        assert_eq!(value("\\frac{1}{2}"), 0.5);
        assert_eq!(value("\\frac12"), 0.5);
        assert!(close(value("2\\sqrt{3}"), 2.0 * 3f64.sqrt()));
        assert!(close(value("\\sqrt[3]{8}"), 2.0));
        assert!(close(value("\\frac{\\pi}{2}"), std::f64::consts::FRAC_PI_2));
        assert!(close(value("3\\pi"), 3.0 * std::f64::consts::PI));
        assert_eq!(value("2^{10}"), 1024.0);
        assert_eq!(value("2^-1"), 0.5);
        assert_eq!(value("(1+2)*3"), 9.0);
        assert_eq!(value("2(3+4)"), 14.0);
        assert!(close(value("\\frac{\\sqrt{2}}{2}"), 2f64.sqrt() / 2.0));
    }

    #[test]
    fn variables_are_found_and_evaluated() {
        let e = parse("3x^2+2x-1").unwrap();
        assert_eq!(e.variables(), BTreeSet::from(['x']));
        assert_eq!(e.eval(&|_| 2.0), 15.0);
        assert_eq!(parse("\\frac{x+1}{y}").unwrap().variables(), BTreeSet::from(['x', 'y']));
    }

    #[test]
    fn malformed_and_hostile_input_fails_cleanly() {
        assert!(parse("").is_err());
        assert!(parse("(1+2").is_err());
        assert!(parse("1+").is_err());
        assert!(parse("\\begin{pmatrix}").is_err());
        let deep = "(".repeat(200) + "1" + &")".repeat(200);
        assert!(parse(&deep).unwrap_err().contains("nested deeper"));
        let deeper = "(".repeat(10_000) + "1" + &")".repeat(10_000);
        assert!(parse(&deeper).unwrap_err().contains("more than 1000 tokens"));
    }
}
