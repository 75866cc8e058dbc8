"""`python -m distillery_torch --topology FILE --processor NAME [--bootstrap-servers HOSTS]`:
one rank of a torch-engine trainer. Under torchrun it joins the run's process group (RANK,
WORLD_SIZE, LOCAL_RANK); alone it is a run of one rank. Parses flags and calls `train.run`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .topology import BOOTSTRAP_ENV


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (torchrun) dies. torchrun starts each
    worker in a session of its own, so a SIGKILL of torchrun alone would otherwise leave the
    workers training, and publishing, beside the restarted run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distillery_torch", description=__doc__)
    parser.add_argument("--topology", required=True, help="the topology file (TOML)")
    parser.add_argument("--processor", required=True, help="the trainer's name, as under [processors.NAME]")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(BOOTSTRAP_ENV),
        help=f"Kafka bootstrap servers; overrides the topology's [kafka] bootstrap_servers (default: ${BOOTSTRAP_ENV})",
    )
    parser.add_argument("--replica", help="label in the distillery-producer header (default: host-pid)")
    args = parser.parse_args(argv)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=os.environ.get("DISTILLERY_LOG", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s rank={rank} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Imported after logging is set up: torch and transformers take seconds to import.
    from .train import run

    try:
        return run(args.topology, args.processor, args.bootstrap_servers, args.replica)
    except Exception:
        logging.getLogger("distillery_torch").exception("the trainer failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
