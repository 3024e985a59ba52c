"""Quick start: one run from Python, then its accuracy matrix, aggregates and record.

    python examples/quickstart.py

Records go to ``example-results/`` and checkpoints to ``example-runs/`` in the current folder. The tests run this
file with a micro model and sequence (``CLSUITE_EXAMPLE_MODEL``, ``CLSUITE_EXAMPLE_SEQUENCE``; tests/test_api.py).
"""
import os

import suite

SEQUENCE = os.environ.get("CLSUITE_EXAMPLE_SEQUENCE", "world-class-incremental")
MODEL = os.environ.get("CLSUITE_EXAMPLE_MODEL", "embedded:tiny-clip")

# the options of `clsuite run`, as keywords; a refused option raises suite.ConfigError before anything is built
record = suite.run(sequence=SEQUENCE, model=MODEL, pet="lora", method="seq", seed=0, iterations=2, max_eval=16,
                   out="example-results", run_dir="example-runs", progress=False)

print(record.table())  # what `clsuite run` prints
print("Last:", record.aggregates["last"], "Avg:", record.aggregates["avg"])
print("accuracy on each task after the first one was learned:", record.matrix[0])
print("zero-shot retention after the last task:", record.summary.get("zero_shot_retention"))
print("trainable parameters:", record.efficiency["trainable_parameters"])
print("record file:", record.path)
