//! The answer shapes that once produced wrong decisions (issue 16), each with near misses
//! that must stay MISMATCH or UNSURE. `same`, `differ` and `unsure` assert the verdict of
//! [`compare`] (final answers) or [`verify`] (whole responses).

use distillery_judge::verify::{compare, verify, RuleVerdict};
use RuleVerdict::*;

fn check(expected: RuleVerdict, pairs: &[(&str, &str)]) {
    for (answer, gold) in pairs {
        let (verdict, rule) = compare(answer, gold);
        assert_eq!(verdict, expected, "{answer:?} against {gold:?}: {rule}");
    }
}

fn check_responses(expected: RuleVerdict, pairs: &[(&str, &str)]) {
    for (response, gold) in pairs {
        let decision = verify(Some(response), gold);
        assert_eq!(decision.verdict, expected, "{response:?} against {gold:?}: {decision:?}");
    }
}

#[test]
fn a_variable_named_on_one_side_only_is_dropped() {
    check(
        Match,
        &[
            ("(p,q)=(3,2)", "(3,2)"),
            ("(3, 2)", "(p, q) = (3, 2)"),
            ("x = 5", "5"),
            ("5", "y=5"),
            ("p = 3, q = 2", "(3, 2)"),
            ("b = 3, a = 2", "a = 2, b = 3"),
            ("f(x) = x^2 + 1", "x^2+1"),
            ("x \\in [1, 2)", "[1, 2)"),
            ("x = \\frac{6}{4} = \\frac{3}{2}", "\\frac32"),
            ("x = \\frac{8}{3} \\approx 2.67", "\\frac{8}{3}"),
            ("x^2 = y", "y = x^2"),
        ],
    );
    check(
        Mismatch,
        &[("(p,q)=(2,3)", "(3,2)"), ("x = -5", "5"), ("a = 3, b = 2", "a = 2, b = 3"), ("p = 5, q = 1", "(3, 2)")],
    );
    // Right values in another order: an ordered pair written out, or the wrong way round?
    check(Unsure, &[("p = 2, q = 3", "(3, 2)"), ("x + y = 5", "y = 5 - x"), ("2 + 3 = 6", "5")]);
}

#[test]
fn several_boxes_and_and_or_are_the_set_of_answers() {
    check_responses(
        Match,
        &[
            ("The roots are $x = \\boxed{2}$ and $x = \\boxed{3}$.", "2, 3"),
            ("so $x=\\boxed{3}$ or $x=\\boxed{-1}$", "-1, 3"),
            ("\\boxed{1 \\quad \\text{and} \\quad 2}", "2, 1"),
            ("\\boxed{x = 1 \\text{ or } x = -2}", "1, -2"),
            ("\\boxed{\\frac12} and again \\boxed{0.5}", "\\frac{1}{2}"),
            ("$\\boxed{(1, 2)}$ and $\\boxed{(2, 1)}$", "(2,1), (1,2)"),
            ("\\boxed{2} \\text{ and } \\boxed{3}", "(2, 3)"),
        ],
    );
    check_responses(
        Mismatch,
        &[
            ("The roots are $\\boxed{2}$ and $\\boxed{4}$.", "2, 3"),
            ("$\\boxed{1}$ and $\\boxed{2}$", "1, 2, 3"),
            ("Case one: $\\boxed{4}$; case two: $\\boxed{6}$.", "5"),
            ("\\boxed{1 \\text{ or } 3}", "1, 2"),
        ],
    );
    // One box is the expected answer, the other is not: two answers, or a correction?
    check_responses(
        Unsure,
        &[("$x = \\boxed{2}$ and $x = \\boxed{-2}$", "2"), ("I got \\boxed{6}; no, correcting, \\boxed{5}.", "5")],
    );
}

#[test]
fn mixed_numbers_are_sums_unless_the_product_reading_is_the_other_answer() {
    check(
        Match,
        &[
            ("918\\frac{1}{2}", "918.5"),
            ("4\\frac{2}{3}", "\\frac{14}{3}"),
            ("\\frac94", "2\\frac14"),
            ("-1\\frac{1}{2}", "-\\frac32"),
            ("7\\frac{1}{2}\\text{ feet}", "7.5"),
        ],
    );
    check(Mismatch, &[("918\\frac{1}{3}", "918.5"), ("3\\frac{2}{3}", "\\frac{14}{3}"), ("4.25", "4\\frac12")]);
    // 2 * 1/4 = 1/2: the product reading equals the other side.
    check(Unsure, &[("\\frac{1}{2}", "2\\frac{1}{4}"), ("12\\frac{1}{2}", "6")]);
}

#[test]
fn decimals_near_an_exact_value_follow_the_rounding_rule() {
    check(
        Match,
        &[
            ("(0.6, 2.6667]", "\\left(\\frac35, \\frac83\\right]"),
            ("2.667", "\\frac83"),
            ("(0.3333, 0.6667)", "(\\frac13, \\frac23)"),
            ("1.4142", "\\sqrt2"),
            ("0.75", "\\frac34"),
        ],
    );
    check(
        Mismatch,
        &[
            ("(0.6, 2.6767]", "(\\frac35, \\frac83]"),
            ("[0.6, 2.6667]", "(\\frac35, \\frac83]"),
            ("0.6", "\\frac16"),
            ("12.05", "12.5"),
            ("4.99", "5"),
        ],
    );
    // Too few digits, truncated, or one decimal rounding another: never a MISMATCH.
    check(
        Unsure,
        &[
            ("0.33", "\\frac13"),
            ("3.14", "\\pi"),
            ("2.6666", "\\frac83"),
            ("0.67", "0.667"),
            ("(-\\infty, 0.333)", "(-\\infty, \\frac13)"),
            ("(0.6, 2.67]", "(\\frac35, \\frac83]"),
        ],
    );
}

#[test]
fn lists_of_solutions_match_in_any_order_with_repeats_and_spacing() {
    check(
        Match,
        &[
            ("3,1,-2", "-2, 1, 3"),
            ("3 ,  2 , 1", "1, 2, 3"),
            ("0, 0, 3", "0, 3"),
            ("\\pm 2", "2, -2"),
            ("1+\\sqrt3, 1-\\sqrt3", "1 \\pm \\sqrt{3}"),
            ("\\{3, 2, 1\\}", "1, 2, 3"),
        ],
    );
    check(Mismatch, &[("-2, 1", "-2, 1, 3"), ("-2, 1, 3, 4", "-2, 1, 3"), ("1 \\pm \\sqrt2", "1 \\pm \\sqrt3")]);
    check(Unsure, &[("2", "2, -2"), ("(2, 1)", "1, 2"), ("20 \\quad 10", "10, 20")]);
}

#[test]
fn a_comma_inside_a_number_decides_only_when_every_reading_agrees() {
    check(Match, &[("32,349", "32349"), ("1,000,000", "1000000"), ("2,500.00", "2500"), ("5,7", "7, 5")]);
    check(Mismatch, &[("32,439", "32349"), ("100,000", "1000000"), ("1,25", "1.5"), ("5, 7, 9", "5, 7")]);
    // A list or one number? A decimal comma or a thousands separator?
    check(Unsure, &[("32, 349", "32349"), ("0,111", "0.111"), ("1,5", "1.5"), ("1,234", "1.234"), ("1,234", "1, 234")]);
}

#[test]
fn intervals_unions_and_inequalities() {
    check(
        Match,
        &[
            ("x \\le 3", "(-\\infty, 3]"),
            ("-3 < x < 3", "(-3, 3)"),
            ("(3,\\infty)\\cup(-\\infty,-2)", "(-\\infty, -2) \\cup (3, \\infty)"),
            ("x < -2 \\text{ or } x > 3", "(-\\infty, -2) \\cup (3, \\infty)"),
            ("\\mathbb{R}", "(-\\infty, \\infty)"),
            ("[-0.5, 2]", "[-\\frac12, 2]"),
        ],
    );
    check(
        Mismatch,
        &[
            ("(-\\infty, 3)", "(-\\infty, 3]"),
            ("x \\ge 3", "(3, \\infty)"),
            ("(1, 2) \\cup (2, 3)", "(1, 3)"),
            ("[5, 2]", "[2, 5]"),
        ],
    );
    check(Unsure, &[("x^2 > 9", "(-\\infty,-3)\\cup(3,\\infty)"), ("x \\neq 2", "(-\\infty,2)\\cup(2,\\infty)")]);
}

#[test]
fn what_is_not_fully_understood_is_unsure() {
    check(
        Unsure,
        &[
            ("\\text{Tuesday}", "\\text{Monday}"),
            ("1.5e3", "1500"),
            ("5 \\text{ dollars and } 30 \\text{ cents}", "5.30"),
            ("\\sin 30^\\circ", "\\frac12"),
            ("12 square units", "12"),
            ("\\{1, 2\\}", "(1, 2)"),
            ("(1+i)^2", "2i"),
            ("C", "12"),
            ("0.5", "50\\%"),
            ("\\frac{\\pi}{6}", "30^\\circ"),
            ("x + 1", "y + 1"),
            ("\\log 100", "2"),
        ],
    );
    check(Match, &[("C", "\\text{(C)}"), ("40", "40\\%")]);
    check(Mismatch, &[("\\textbf{(B)}", "\\text{(C)}")]);
}
