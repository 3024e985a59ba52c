"""One typed configuration and a command line that is one thing: bad settings are one line naming the field,
nested options reach methods, and only the suite's own errors are shortened to a line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from suite.cli import main
from suite.config.train import TRAINING_DEFAULTS, TrainConfig, lr_factor
from suite.errors import ConfigError, SuiteError


@pytest.mark.parametrize("training, field", [({"learning_rate": 0.1}, "training.learning_rate"),
                                             ({"optimizer": "adam"}, "training.optimizer"),
                                             ({"schedule": "step"}, "training.schedule"),
                                             ({"lr": -1}, "training.lr"),
                                             ({"iterations": "many"}, "training.iterations"),
                                             ({"batch_size": 0}, "training.batch_size")])
def test_a_bad_training_setting_in_a_config_file_is_one_line_naming_it(tmp_path, capsys, training, field):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"sequence": "world-class-incremental", "training": training}))
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(cfg) in err and field in err, err


def test_train_config_types_and_defaults():
    assert TrainConfig.from_dict({}).to_dict() == TRAINING_DEFAULTS
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0 and isinstance(TrainConfig.from_dict({"lr": 1}).lr, float)
    with pytest.raises(ConfigError, match="seq.yaml: training.warmup"):
        TrainConfig.from_dict({"warmup": -2}, "seq.yaml")
    assert lr_factor(0, 10, warmup=2) == 0.5 and lr_factor(2, 10, warmup=2) == 1.0
    assert lr_factor(9, 10, schedule="constant") == 1.0 and lr_factor(10, 10) == pytest.approx(0.0)


def test_method_options_can_set_a_per_space_threshold():
    from suite.cli.runs import _kv

    opts = _kv("threshold=0.9,thresholds={vision.*: 0.8, text.0.*: 0.99},basis=gpm")
    assert opts == {"threshold": 0.9, "thresholds": {"vision.*": 0.8, "text.0.*": 0.99}, "basis": "gpm"}
    from suite.methods import make_method

    m = make_method("pegp", opts)
    assert m.threshold_for("vision.3.attn") == 0.8 and m.threshold_for("text.0.attn") == 0.99
    assert m.threshold_for("text.5.attn") == 0.9
    with pytest.raises(ConfigError, match="--method-options"):
        _kv("threshold", "method-options")


def test_only_the_suites_errors_are_shortened(monkeypatch, capsys):
    from suite.cli import verbs

    def bug(args):
        raise ValueError("a shape bug deep inside")

    def refused(args):
        raise SuiteError("file.yaml: field: refused")

    monkeypatch.setitem(verbs.HANDLERS, "summarize", bug)
    with pytest.raises(ValueError, match="shape bug"):
        main(["summarize", "x"])
    monkeypatch.setitem(verbs.HANDLERS, "summarize", refused)
    assert main(["summarize", "x"]) == 2
    assert capsys.readouterr().err.strip() == "clsuite: error: file.yaml: field: refused"
    with pytest.raises(SuiteError):
        main(["--debug", "summarize", "x"])


def test_metrics_runs_without_pil_or_torch(tmp_path):
    m = tmp_path / "m.json"
    m.write_text("[[0.5, 0.4], [0.3, 0.6]]")
    code = ("import sys; from suite.cli import main; rc = main(['metrics', sys.argv[1]]); "
            "assert rc == 0; assert 'PIL' not in sys.modules and 'torch' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code, str(m)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "forgetting" in out.stdout


@pytest.mark.parametrize("options, says", [("threshold=1.5", "threshold"), ("threshold=0", "threshold"),
                                           ("nonsense=1", "unknown option"), ("project_update=maybe", "project_update"),
                                           ("basis=magic", "basis"), ("collect_batches=0", "collect_batches")])
def test_method_options_are_refused_before_any_model_or_data(tmp_path, options, says):
    """Typed method options are checked when the method is built, which the runner does first: a bad value or an
    unknown option is one line, and no backbone is built, no data materialised, open_clip never imported."""
    code = ("import sys; import suite.engine.runner as r\n"
            "def built(*a, **k): raise AssertionError('built before the options were checked')\n"
            "r.create_model_and_transforms = r.materialize = r.load_sequence = built\n"
            "from suite.cli import main\n"
            f"rc = main(['run', '--sequence', 'world-class-incremental', '--pet', 'lora', '--method', 'pegp', "
            f"'--method-options', {options!r}, '--out', {str(tmp_path)!r}])\n"
            "assert rc == 2, rc\n"
            "assert 'open_clip' not in sys.modules, 'heavy import'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("clsuite: error: method pegp") and says in out.stderr and "\n" == out.stderr[-1:]
    assert out.stderr.count("\n") == 1, out.stderr


def test_the_cli_modules_import_without_a_cycle():
    code = ("import suite.cli.runs, suite.cli.verbs; import suite.cli.main; from suite.cli.verbs import HANDLERS; "
            "assert 'run' in HANDLERS and 'tasks list' in HANDLERS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_an_installed_backbone_loader_is_used_for_its_kind(monkeypatch):
    """``clsuite.backbones`` entry points: ``mine:micro-clip`` builds through the plug-in; unknown kinds are refused."""
    from importlib.metadata import EntryPoint

    from suite import registry
    from suite.models import ModelError, create_model_and_transforms

    calls = []

    def loader(name, tag):
        calls.append((name, tag))
        return create_model_and_transforms(f"embedded:{name}@random")

    monkeypatch.setattr("test_config._loader", loader, raising=False)
    ep = EntryPoint(name="mine", value="test_config:_loader", group=registry.BACKBONES.group)
    monkeypatch.setattr(registry, "plugins", lambda group: {"mine": ep} if group == registry.BACKBONES.group else {})
    bb = create_model_and_transforms("mine:micro-clip@v1")
    assert calls == [("micro-clip", "v1")] and all(not p.requires_grad for p in bb.parameters())
    with pytest.raises(ModelError, match="unknown model kind 'theirs'.*mine:"):
        create_model_and_transforms("theirs:x")


@pytest.mark.parametrize("name, local, want", [("cuda", "2", "cuda:2"), ("auto", "3", "cuda:3"), ("cuda:1", "3", "cuda:1"),
                                               ("cuda", None, "cuda:0")])
def test_each_torchrun_process_gets_its_own_gpu(monkeypatch, name, local, want):
    import torch

    from suite.engine.distributed import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(str(d)))
    if local is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local)
    assert str(resolve_device(name)) == want and current == [want]


def test_devices_that_do_not_exist_are_refused(monkeypatch):
    import torch

    from suite.engine.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ConfigError, match="cuda:5 but this machine has 2"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert str(resolve_device("auto")) == "cpu"
