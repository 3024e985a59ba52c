"""A notebook-style walk-through of the Python API: cells (``# %%``) that run in VS Code, Jupyter (jupytext) or
as a plain script, top to bottom.

    python examples/walkthrough.py

1. a small sweep (sequential LoRA and PEGP, two seeds) with a CSV tracker;
2. a method written here, registered without a package, and run;
3. the records summarized, compared paired by seed, and plotted, as ``clsuite summarize|compare|plot`` would.

Everything is written under ``walkthrough-results/`` in the current folder. The tests run this file with a micro
model and sequence (``CLSUITE_EXAMPLE_MODEL``, ``CLSUITE_EXAMPLE_SEQUENCE``; tests/test_api.py).
"""
# %% Settings: the embedded tiny CLIP on a shipped sequence, with a quick budget
import csv
import os
from pathlib import Path

import suite
from suite.methods import Method, Option

SEQUENCE = os.environ.get("CLSUITE_EXAMPLE_SEQUENCE", "world-class-incremental")
MODEL = os.environ.get("CLSUITE_EXAMPLE_MODEL", "embedded:tiny-clip")
OUT = Path("walkthrough-results")
QUICK = dict(model=MODEL, iterations=2, max_eval=16, out=str(OUT / "records"), run_dir=str(OUT / "runs"),
             progress=False)

# %% 1. A sweep: the grid methods x PETs x seeds (suite.plan lists the runs, suite.sweep runs them)
runs = suite.plan(sequence=SEQUENCE, methods=["seq", "pegp"], pets=["lora"], seeds=[0, 1], log=["csv"], **QUICK)
print(f"{len(runs)} runs:", [r.run_id() for r in runs])
records = suite.sweep(runs, jobs=1)
for r in records:
    print(f"{r.method:5s} seed {r.seed}: Last {r.aggregates['last']:.3f}  forgetting {r.aggregates['forgetting']:.3f}")

# %% The CSV tracker wrote one row per task (accuracy row, retention, hallucination, ECE, times) per run
first = records[0]
with open(OUT / "runs" / first.run_id / "csv" / "tasks.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
print("logged after each task:", [k for k in rows[0] if k.startswith(("accuracy/", "calibration/"))])
assert [float(rows[-1][f"accuracy/{t}"]) for t in first.tasks] == first.matrix[-1]


# %% 2. A method written here: sequential PET with an L2 pull towards earlier tasks' weights
@suite.register_method
class Anchor(Method):
    """Sequential PET with an L2 pull towards the weights learned on earlier tasks (an example)."""

    name = "anchor"
    OPTIONS = {"strength": Option(10.0, (float,), low=0)}

    def before_task(self, ctx, t):
        self.anchor = [p.detach().clone() for p in self.trainable(ctx)] if t > 0 else None

    def loss(self, ctx, batch):
        loss = ctx.task_loss(batch)
        if self.anchor:
            pull = sum(((p - a) ** 2).sum() for p, a in zip(self.trainable(ctx), self.anchor))
            loss = loss + self.options["strength"] * pull
        return loss


anchored = suite.run(sequence=SEQUENCE, pet="lora", method="anchor", method_options={"strength": 1.0}, seed=0, **QUICK)
print(anchored)  # Record(run id, status, Last)

# %% 3. Every record of the folder: summarized over seeds, compared paired by seed, plotted
recs = suite.load_records(OUT / "records", sequence=anchored.sequence)
print(recs.summarize())  # the table `clsuite summarize` prints
comparison = recs.compare(pairs=[("pegp/lora", "seq/lora")])
print(comparison)  # the table `clsuite compare --pair pegp/lora:seq/lora` prints
print("Last, PEGP - seq, paired by seed:",
      next(d.mean for d in comparison.differences if d.metric == "last"))
print("figure:", recs.plot(kind="curves", out=OUT / "curves.svg"))

# %% Per-step measures of one run: what the record keeps after each task
step = anchored.steps[-1]
print("after the last task: accuracy", step["accuracy"], "ECE", step["ece"]["value"],
      "retention", step["retention"])
