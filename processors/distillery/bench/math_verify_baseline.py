"""Baseline for `distillery bench judge`: Hugging Face's math-verify (parse + verify, default
settings) on the same labelled answer pairs. Reads JSONL {"gold", "answer"} from PAIRS; prints
one JSON line: the CPU seconds taken and one verdict (equivalent or not) per pair, in order."""
import json
import sys
import time

from math_verify import parse, verify


def judge(pair):
    gold = parse("$" + pair["gold"] + "$")
    answer = parse(pair["answer"])
    return bool(gold) and bool(answer) and verify(gold, answer)


pairs = [json.loads(line) for line in open(sys.argv[1])]
# Untimed warm-up: the first call builds the LaTeX grammar and imports sympy's modules.
for pair in pairs[:5]:
    judge(pair)
# CPU time, like the Rust side: load from other processes on a shared machine does not count.
started = time.process_time()
verdicts = [judge(pair) for pair in pairs]
elapsed = time.process_time() - started
print(json.dumps({"seconds": elapsed, "verdicts": verdicts}))
