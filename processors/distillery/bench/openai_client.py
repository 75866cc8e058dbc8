"""Baseline for `distillery bench sampler`: the official `openai` Python client (asyncio),
REQUESTS chat completions with CONCURRENCY in flight against BASE_URL. Prints one JSON line."""
import asyncio
import json
import sys
import time

from openai import AsyncOpenAI


async def main(base_url: str, requests: int, concurrency: int) -> None:
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with gate:
            r = await client.chat.completions.create(
                model="test-model",
                messages=[{"role": "user", "content": f"What is {i} + 1?"}],
                temperature=0.6,
                top_p=0.95,
                max_tokens=1024,
            )
            assert r.choices[0].message.content
            done += 1

    await one(0)  # warm-up: connection set-up is not timed
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.perf_counter() - started
    print(json.dumps({"requests": done - 1, "seconds": elapsed}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
