//! The judge: reads `samples`, writes `judged` (the sample plus MATCH / MISMATCH / ERROR, the
//! extracted final answer, which method decided, and the judge model's raw reply).
//!
//! # Layout
//! - `extract`: the final answer in a response (its `\boxed{}`es, fallbacks).
//! - `normalize`: LaTeX normalisation. `expr`: parsing and evaluating math expressions.
//! - `answer`: reading an answer as a value, tuple, interval, set, list of answers, ...;
//!   `relation`: the equations and inequalities in answers.
//! - `value`: numbers and expressions as written, and how two compare (the rounding rule).
//! - `verify`: the rule-based verifier (MATCH / MISMATCH / UNSURE) and its discipline.
//! - `llm`: the LLM judge's message and verdict parsing, and [`llm::LlmJudge`], which asks the
//!   judge model (also used by the evaluator for what its rule verifier cannot decide).
//! - `config`: settings. `processor`: sample in -> judged sample out.

pub mod answer;
pub mod config;
pub mod expr;
pub mod extract;
pub mod llm;
pub mod normalize;
mod processor;
mod relation;
pub mod value;
pub mod verify;

pub use config::JudgeSettings;
pub use processor::Judge;
