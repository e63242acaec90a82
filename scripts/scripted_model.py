"""Serve scripted chat-completions answers on loopback: a stand-in model for end-to-end runs on a GPU box.

    python scripts/scripted_model.py --rounds 20 &      # prints its base URL, then serves until killed
    kgen attention --score-mod examples/specs/rel_pos.py --model fake-model --base-url <that URL>

The script cycles through a wrong kernel, a correct one, an answer with no code, and a faster correct one,
so every branch of the loop (feedback on a mismatch, format feedback, improvement) runs on real hardware.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI, reply  # noqa: E402
from kernels import flash_source  # noqa: E402


def answers(score: str | None, mask: str | None) -> list:
    def fenced(src: str) -> str:
        return f"Here is the kernel.\n\n```python\n{src}```\n"

    return [reply(fenced(flash_source(None, mask, bm=64, bn=64)), reasoning="(scripted) forgot the score_mod"),
            reply(fenced(flash_source(score, mask, bm=64, bn=64)), reasoning="(scripted) fixed"),
            reply("I would tile the keys by 128.", reasoning="(scripted) no code"),
            reply(fenced(flash_source(score, mask, bm=128, bn=64)), reasoning="(scripted) bigger query tiles")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score", default="rel_pos", help="a SCORES key of tests/kernels (or 'none')")
    parser.add_argument("--mask", default="none", help="a MASKS key of tests/kernels (or 'none')")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    score = None if args.score == "none" else args.score
    mask = None if args.mask == "none" else args.mask
    with FakeOpenAI(models=["fake-model"]) as server:
        for _ in range(args.rounds):
            server.script(*answers(score, mask))
        print(server.base_url, flush=True)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
