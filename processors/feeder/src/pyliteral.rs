//! A parser for the Python literals Nemotron's `metadata` strings hold (what `repr(dict)`
//! prints): dicts, lists, tuples, quoted strings with escapes, numbers, True/False/None.
//! Nesting depth is bounded so hostile input cannot exhaust the stack.

use serde_json::{Map, Number, Value};

const MAX_DEPTH: usize = 64;

pub fn parse(text: &str) -> Result<Value, String> {
    let mut parser = Parser { chars: text.chars().collect(), pos: 0 };
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != parser.chars.len() {
        return Err(format!("unexpected text at character {}", parser.pos));
    }
    Ok(value)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{c}' at character {}", self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.skip_ws();
        match self.peek() {
            Some('{') => self.dict(depth),
            Some('[') => self.sequence(']', depth),
            Some('(') => self.sequence(')', depth),
            Some('\'') | Some('"') => self.string().map(Value::String),
            Some(c) if c == '-' || c == '+' || c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::Null),
                    "nan" | "inf" => Ok(Value::Null),
                    _ => Err(format!("unknown name '{word}' at character {start}")),
                }
            }
            Some(c) => Err(format!("unexpected '{c}' at character {}", self.pos)),
            None => Err("unexpected end of text".into()),
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.expect('{')?;
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            self.expect(':')?;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(format!("expected ',' or '}}' at character {}", self.pos)),
            }
        }
    }

    fn sequence(&mut self, close: char, depth: usize) -> Result<Value, String> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' or '{close}' at character {}", self.pos)),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.chars[self.pos];
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or_else(|| format!("string starting at character {start} never ends"))?;
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let e = self.peek().ok_or("text ends inside an escape")?;
                    self.pos += 1;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'x' => out.push(self.hex_char(2)?),
                        'u' => out.push(self.hex_char(4)?),
                        'U' => out.push(self.hex_char(8)?),
                        '\n' => {}
                        other => {
                            // Python keeps unknown escapes verbatim ("\f" aside, LaTeX needs this).
                            if !matches!(other, '\\' | '\'' | '"') {
                                out.push('\\');
                            }
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn hex_char(&mut self, digits: usize) -> Result<char, String> {
        let end = self.pos + digits;
        let hex: String = self.chars.get(self.pos..end).ok_or("short escape")?.iter().collect();
        self.pos = end;
        let code = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\{hex}"))?;
        char::from_u32(code).ok_or_else(|| format!("escape {hex} is not a character"))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || "+-.eE_".contains(c)) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().filter(|c| **c != '_').collect();
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        let f: f64 = text.parse().map_err(|_| format!("bad number '{text}' at character {start}"))?;
        Ok(Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_python_repr_prints() {
        let v = parse(r#"{'expected_answer': '\\frac{1}{2}', "n": -3, 'f': 1.5e3, 'l': [1, (2, 3)], 'b': False, 'x': None, 'q': 'it\'s'}"#).unwrap();
        assert_eq!(
            v,
            json!({"expected_answer": "\\frac{1}{2}", "n": -3, "f": 1500.0, "l": [1, [2, 3]], "b": false, "x": null, "q": "it's"})
        );
    }

    #[test]
    fn rejects_broken_and_hostile_input() {
        assert!(parse("{'a': ").is_err());
        assert!(parse("{'a' 1}").is_err());
        assert!(parse("'never ends").is_err());
        assert!(parse("{'a': 1} trailing").is_err());
        assert!(parse("os.system('x')").is_err());
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(parse(&deep).unwrap_err().contains("nested deeper"));
        let dicts = "{'a': ".repeat(10_000) + "1" + &"}".repeat(10_000);
        assert!(parse(&dicts).unwrap_err().contains("nested deeper than 64 levels"));
        let tuples = "(".repeat(10_000);
        assert!(parse(&tuples).unwrap_err().contains("nested deeper"));
        assert!(parse("'\\U0011ffff'").unwrap_err().contains("not a character"));
        assert!(parse("'\\x4'").is_err());
        assert!(parse("1e999").unwrap().is_null(), "an overflowing float is no number, not a panic");
        assert!(parse("nan").unwrap().is_null() && parse("-inf").is_err());
    }

    /// What `repr()` of a metadata dict is made of, in any order.
    fn literal_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            "[{}()\\[\\],:'\" \\\\]".prop_map(|s| s.to_string()),
            Just("True".to_string()),
            Just("None".to_string()),
            Just("'expected_answer'".to_string()),
            Just("\\x".to_string()),
            Just("\\u12".to_string()),
            Just("\\U0010FFFF".to_string()),
            "-?[0-9]{1,3}(\\.[0-9]+)?(e[+-]?[0-9]{1,4})?".prop_map(|s| s.to_string()),
            "\\PC{0,3}".prop_map(|s| s.to_string()),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..Default::default() })]

        #[test]
        fn arbitrary_text_parses_or_says_why(text in "\\PC{0,200}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn literal_like_text_parses_or_says_why(text in literal_like()) {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.is_empty());
            }
        }
    }
}
