"""Engine benchmark on SmolLM2 with 2 threads (prints figures; not a test). Same as `lede bench-engine`."""

import argparse

import torch

from lede_env.bench_engine import run

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--heads", default="default", help="'default', 'identity' or a path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run(n_prompts=args.prompts, max_new_tokens=args.max_new_tokens, heads=args.heads)
