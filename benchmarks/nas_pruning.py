"""Does pruning pay? TPE + Hyperband pruning against random search without pruning.

Both arms run the same number of trials over the same space (models/nas-space.yaml with
more epochs, so early stopping has something to save), on the same texts, with the same
sampler seed, through `sutazai.learning.nas.run_study` (real studies: SQLite storage, MLflow
runs). Compute is counted in trial-epochs (one epoch of one trial), which is what the
nightly budget pays for, independent of how busy the machine is.

For each seed: the threshold is the worse of the two arms' final best validation losses
(so both reach it), and each arm's cost is the trial-epochs it had spent when its best
completed trial first reached the threshold. The ratio random / pruned is the saving.

    .venv/bin/python benchmarks/nas_pruning.py --trials 16 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sutazai.config import Settings  # noqa: E402
from sutazai.learning.nas import StudyReport, load_space, run_study  # noqa: E402
from sutazai.learning.search_space import SearchSpace  # noqa: E402

WORDS_TEXT = ("the a of to in on for with by from at as is was be have do will can model data "
         "pipeline server request token batch stream latency memory cache layer attention head "
         "vector prompt train test metric registry version bundle catalog source local network "
         "quick brown fox jumps over lazy dog river mountain forest ocean city village garden "
         "window door table chair paper letter morning evening night summer winter red green "
         "blue bright dark quiet slow fast small large simple careful clever engineer teacher "
         "doctor farmer writer runs walks reads writes builds measures checks loads saves")
WORDS = WORDS_TEXT.split()


def corpus(lines: int, seed: int = 7) -> list[str]:
    """Pseudo-English with some structure (numbers that follow the line number)."""
    rng = random.Random(seed)
    return [f"{' '.join(rng.choices(WORDS, k=rng.randint(6, 16))).capitalize()} "
            f"{i * 37 % 1009}, line {i}." for i in range(lines)]


def arm_space(base: SearchSpace, *, sampler: str, pruner: str, seed: int, epochs: int
              ) -> SearchSpace:
    data: dict[str, Any] = base.model_dump(mode="json")
    data["training"] |= {"epochs": epochs, "max_batches_per_epoch": 8}
    data["search"] |= {"sampler": sampler, "pruner": pruner, "seed": seed}
    return SearchSpace.model_validate(data)


def cost_to_reach(report: StudyReport, threshold: float) -> int:
    """Trial-epochs spent (in trial order) when a completed trial first reached threshold."""
    spent = 0
    for row in sorted(report.trials, key=lambda r: r.number):
        spent += row.epochs
        if row.state == "COMPLETE" and row.val_loss is not None and row.val_loss <= threshold:
            return spent
    raise AssertionError("threshold never reached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--space", type=Path, default=ROOT / "models" / "nas-space.yaml")
    args = parser.parse_args()

    texts = corpus(480)
    train, held = texts[:432], texts[432:]
    base = load_space(args.space)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(home=Path(folder) / ".sutazai",
                            mlflow_tracking_uri=f"sqlite:///{folder}/mlflow.db")
        for seed in args.seeds:
            result: dict[str, Any] = {"seed": seed}
            for arm, sampler, pruner in (("pruned", "tpe", "hyperband"),
                                         ("random", "random", "none")):
                space = arm_space(base, sampler=sampler, pruner=pruner, seed=seed,
                                  epochs=args.epochs)
                started = time.monotonic()
                report = run_study(settings, space, train, held, study_name=f"{arm}-{seed}",
                                   n_trials=args.trials)
                result[arm] = report
                result[f"{arm}_s"] = time.monotonic() - started
            threshold = max(result["pruned"].best_value, result["random"].best_value)
            result["threshold"] = threshold
            for arm in ("pruned", "random"):
                result[f"{arm}_cost"] = cost_to_reach(result[arm], threshold)
            result["ratio"] = result["random_cost"] / result["pruned_cost"]
            rows.append(result)
            print(f"seed {seed}: done", file=sys.stderr)

    print(f"\nNAS pruning benchmark: {args.trials} trials per arm, {args.epochs} epochs per "
          f"full trial, space {args.space.name}, {len(train)} training texts")
    header = (f"{'seed':>4} | {'best TPE+HB':>11} {'best random':>11} {'threshold':>9} | "
              f"{'TPE+HB ep. to thr':>17} {'random ep. to thr':>17} {'ratio':>6} | "
              f"{'TPE+HB total ep.':>16} {'random total ep.':>16} {'pruned':>6} | "
              f"{'TPE+HB s':>8} {'random s':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        p, q = r["pruned"], r["random"]
        print(f"{r['seed']:>4} | {p.best_value:>11.4f} {q.best_value:>11.4f} "
              f"{r['threshold']:>9.4f} | {r['pruned_cost']:>17} {r['random_cost']:>17} "
              f"{r['ratio']:>5.2f}x | {p.trial_epochs:>16} {q.trial_epochs:>16} "
              f"{p.trials_pruned:>6} | {r['pruned_s']:>8.1f} {r['random_s']:>8.1f}")
    ratios = [r["ratio"] for r in rows]
    totals = [r["random"].trial_epochs / r["pruned"].trial_epochs for r in rows]
    print(f"\ncompute to reach the same best loss, random / TPE+Hyperband: median "
          f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x); "
          f"total trial-epochs ratio: median {statistics.median(totals):.2f}x")
    print("target: >= 2x " + ("MET" if statistics.median(ratios) >= 2 else "NOT MET"))


if __name__ == "__main__":
    main()
