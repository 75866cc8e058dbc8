"""Baseline for `distillery bench judge`: Hugging Face's math-verify (parse + verify) on the
same labelled answer pairs. Reads JSONL {"gold", "answer", "equivalent"} from PAIRS; prints
one JSON line with timing and agreement."""
import json
import sys
import time

from math_verify import parse, verify

pairs = [json.loads(line) for line in open(sys.argv[1])]
started = time.perf_counter()
verdicts = []
for pair in pairs:
    gold = parse("$" + pair["gold"] + "$")
    answer = parse(pair["answer"])
    verdicts.append(bool(gold) and bool(answer) and verify(gold, answer))
elapsed = time.perf_counter() - started
correct = sum(v == p["equivalent"] for v, p in zip(verdicts, pairs))
false_match = sum(v and not p["equivalent"] for v, p in zip(verdicts, pairs))
print(json.dumps({"pairs": len(pairs), "seconds": elapsed, "agree": correct, "false_match": false_match}))
