"""Baseline for `distillery bench packer`: Python with Hugging Face `tokenizers` (the same
tokenizer.json), jinja2 (the same chat template) and TRL's pack_dataset(strategy="bfd") on the
same traces. Prints one JSON line with timing, tokens and fill."""
import json
import sys
import time

import jinja2
from datasets import Dataset
from tokenizers import Tokenizer
from trl import pack_dataset

traces_path, tokenizer_path, template_path, row_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
traces = [json.loads(line) for line in open(traces_path)]
tokenizer = Tokenizer.from_file(tokenizer_path)
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
template = env.from_string(open(template_path).read())

started = time.perf_counter()
texts = [
    template.render(
        messages=[{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["assistant"]}],
        add_generation_prompt=False,
    )
    for t in traces
]
encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
ids = [e.ids[:row_tokens] for e in encodings]
packed = pack_dataset(Dataset.from_dict({"input_ids": ids}), seq_length=row_tokens, strategy="bfd")
elapsed = time.perf_counter() - started
tokens = sum(len(i) for i in ids)
rows = len(packed)
print(json.dumps({"seconds": elapsed, "tokens": tokens, "rows": rows, "fill": tokens / (rows * row_tokens)}))
