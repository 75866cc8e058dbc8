"""distillery's PyTorch FSDP2 trainer engine: a trainer processor (`engine = "torch"`) that
reads the same shards topic, honours the same contract and writes the same records as the
candle trainer, for students that need more than one GPU.

# Layout
- `__main__`: the command line (`python -m distillery_torch`), one rank of a run.
- `train`: the run, top to bottom: settings, resume, the planning loop, steps, checkpoints.
- `settings`: the `[processors.NAME.settings]` table (candle's keys plus `[torch]`).
- `topology`: the topology file: topic names, `[kafka]`, the processor instance.
- `kafka`: Kafka clients, the ordered reader and the publisher (runtime headers, dead letters).
- `avro`: the project's Avro single-object codec (also a command line).
- `records`: the records written, with their deterministic ids.
- `objects`: object stores by URL (obstore; S3 from the `AWS_*` environment).
- `shards`: the packer's shard format, checked, cut into packed rows.
- `feed`: rank 0's in-order shard feed: dedup, read-ahead, checksums, dead letters.
- `plan`: rank 0's step planner and the plan each rank receives.
- `packing`: packed rows inside transformers: attention kernels and Mamba2 boundaries.
- `model`: the student wrapper, the chunked loss, FSDP2 sharding.
- `optim`: AdamW, clipping and the lr schedule, as the candle trainer's.
- `checkpoint`: resumable state (torch DCP), Hugging Face export, trainer_state.json.
- `bench`: `distillery bench trainer --engine torch`'s training-step measurement.
- `gpu_check`: the GPU checks of `scripts/gpu-check-torch.sh`.
"""
