"""``python -m workers.providers.fake --port P [--mode replay --replay-dir DIR] [--config JSON-FILE]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workers.providers.fake.config import FakeConfig
from workers.providers.fake.server import serve


def build_config(args: argparse.Namespace) -> FakeConfig:
    """The config file (if any), with the mode, replay folder and seed given on the command line laid over it."""
    data = json.loads(Path(args.config).read_text()) if args.config else {}
    given = {"mode": args.mode, "replay_dir": args.replay_dir, "seed": args.seed}
    patch = {key: value for key, value in given.items() if value is not None}
    if "mode" not in patch and "replay_dir" in patch and "mode" not in data:
        patch["mode"] = "replay"
    return FakeConfig.model_validate({**data, **patch})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m workers.providers.fake", description="The fake LLM provider on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--mode", choices=["simulated", "replay"])
    parser.add_argument("--replay-dir")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--config", help="a JSON file with a full or partial FakeConfig")
    args = parser.parse_args(argv)
    serve(build_config(args), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
