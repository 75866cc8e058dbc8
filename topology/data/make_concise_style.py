"""Writes concise-style-math.parquet from nemotron-format-math.parquet: the quickstart's second
teacher style. Same problems and ids; each trace keeps the first third of the reference
reasoning's sentences; every sixth answer is made wrong (so the judge and the agreement filter
have work). Run with pyarrow: python make_concise_style.py (from this folder)."""

import copy
import re

import pyarrow as pa
import pyarrow.parquet as pq

table = pq.read_table("nemotron-format-math.parquet")
rows = []
for i, row in enumerate(table.to_pylist()):
    messages = copy.deepcopy(row["messages"])
    match = re.match(r"<think>\n?(.*?)\n?</think>\n?(.*)", messages[1]["content"], re.S)
    reasoning, answer = match.group(1), match.group(2)
    sentences = re.split(r"(?<=[.!?])\s+", reasoning)
    short = " ".join(sentences[: max(1, len(sentences) // 3)])
    if i % 6 == 5:
        if "\\boxed{" in answer:
            answer = answer.replace("\\boxed{", "\\boxed{-7777+", 1)
        else:
            answer += " \\boxed{-7777}"
    messages[1]["content"] = "<think>\n" + short + "\n</think>\n" + answer
    rows.append(dict(row, generator="concise-style-reference", messages=messages))
pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), "concise-style-math.parquet")
