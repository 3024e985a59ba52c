import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if "CLSUITE_CACHE" not in os.environ:  # rendered data shared by this session's tests, never the user's cache
    import tempfile

    os.environ["CLSUITE_CACHE"] = tempfile.mkdtemp(prefix="clsuite-test-cache-")

WORLD_TEMPLATES = str(Path(__file__).resolve().parents[1] / "tasks" / "templates" / "world.yaml")


def make_plugin(tmp_path, monkeypatch, name: str, code: str, group: str = "clsuite.methods", entry: str | None = None,
                module: str | None = None) -> str:
    """A temporary distribution on ``sys.path`` whose entry point ``name`` (in ``group``) points at a module holding
    ``code`` (``module``, else a name derived from ``name``); returns the module's name."""
    module = module or f"mod_{abs(hash(name)) % 10**8}"
    pkg = tmp_path / f"plugin_{module}"
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(code)
    dist = pkg / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}{entry or ''}\n")
    monkeypatch.syspath_prepend(str(pkg))
    return module


def small_sequence(track: str = "class-incremental", protocol: str = "task-agnostic", n_tasks: int = 2,
                   train: int = 8, test: int = 6) -> dict:
    """A small world sequence (not embedded: no pins) for fast tests."""
    groups = [["red circle", "blue square"], ["green triangle", "yellow star"], ["purple heart", "cyan cross"]]
    tasks = []
    for i in range(n_tasks):
        if track == "cross-modal":
            tasks.append({"name": f"t{i}",
                          "source": {"adapter": "world", "facet": "scene", "domain": ["solid", "noisy", "outline"][i]},
                          "templates": "caption", "split": {"rule": "generated", "train_size": train * 2, "test_size": test * 2}})
        else:
            tasks.append({"name": f"t{i}",
                          "source": {"adapter": "world", "facet": "object", "domain": ["solid", "textured", "noisy"][i]},
                          "classes": groups[i], "templates": "object",
                          "split": {"rule": "generated", "train_per_class": train, "test_per_class": test}})
    return {"name": f"small-{track}", "version": 1, "track": track, "protocol": protocol, "embedded": False,
            "image_size": 16, "templates_file": WORLD_TEMPLATES,
            "training": {"iterations": 4, "batch_size": 8, "lr": 0.01},
            "tasks": tasks,
            "control_sets": [{"name": "ctrl",
                              "source": {"adapter": "world", "facet": "object", "domain": "solid", "heldout": True},
                              "classes": ["red star", "blue heart"], "templates": "object",
                              "split": {"rule": "generated", "train_per_class": 0, "test_per_class": 4}}]}


MICRO = "embedded:micro-clip@random"


def run_config(seq, tmp_path, **kw):
    """A quick run of the micro model on ``seq`` writing under ``tmp_path`` (fields overridable)."""
    from suite.engine.runner import RunConfig

    base = dict(sequence=seq, model=MICRO, pet="lora", method="seq", out=str(tmp_path / "results"),
                run_dir=str(tmp_path / "runs"), progress=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def seq_file(tmp_path):
    def make(**kw) -> str:
        p = tmp_path / f"seq-{len(list(tmp_path.glob('seq-*')))}.yaml"
        p.write_text(yaml.safe_dump(small_sequence(**kw)))
        return str(p)
    return make


def imagefolder_sequence(root, iterations: int = 3, per_class: int = 6) -> str:
    """A two-task class-incremental sequence over PNG files (file-backed: decoded per batch, by workers if any)."""
    import yaml
    from PIL import Image

    shade = {c: (40 * i, 200 - 40 * i, 30 * i) for i, c in enumerate(["a", "b", "c", "d"])}
    for split in ("train", "test"):
        for c in shade:
            d = root / "img" / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), tuple(v + 5 * i for v in shade[c])).save(d / f"{i}.png")
    tasks = [{"name": f"t{k}", "source": {"adapter": "imagefolder", "root": str(root / "img")},
              "classes": pair, "templates": ["a photo of {}."], "split": {"rule": "official"}}
             for k, pair in enumerate((["a", "b"], ["c", "d"]))]
    seq = root / "files.yaml"
    seq.write_text(yaml.safe_dump({"name": "files", "version": 1, "track": "class-incremental",
                                   "protocol": "task-agnostic", "tasks": tasks,
                                   "training": {"iterations": iterations, "batch_size": 4, "lr": 0.01}}))
    return str(seq)



def method_runner(seq: str, tmp_path, method: str, pet: str | None = "lora", **method_options):
    """A Runner of ``method`` on the micro model (3 steps of batch 8 per task), built but not run: fidelity tests
    drive its hooks themselves."""
    from suite.engine.runner import RunConfig, Runner

    return Runner(RunConfig(sequence=seq, model=MICRO, pet=pet, method=method, method_options=method_options,
                            training={"iterations": 3, "batch_size": 8, "lr": 0.005}, progress=False,
                            out=str(tmp_path / "results"), run_dir=str(tmp_path / "runs")))


def start_task(r, t: int):
    """Enter task ``t`` as the runner does (context, then the method's before_task); returns the task's data."""
    data = r.data[r.seq.tasks[t].name]
    r.ctx.task_index, r.ctx.task_data = t, data
    r.method.before_task(r.ctx, t)
    return data
