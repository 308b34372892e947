"""A round over two processes (accelerate + gloo on the CPU) matches one process at the same
global batch, and only the main process writes."""

import json
import socket
from pathlib import Path

import pytest
from herdbook.training.components import load_components
from herdbook.training.dreambooth import train
from herdbook.training.launch import launch
from herdbook.training.settings import ModelChain

pytestmark = pytest.mark.slow  # trains tiny models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unet_weights(folder):
    return {k: v.float() for k, v in load_components(ModelChain(str(folder))).unet.state_dict().items()}


def changed_by(weights: dict, settings) -> float:
    """The largest change training made to any weight, from the starting model."""
    start = unet_weights(settings.model.pipeline)
    return max((weights[k] - start[k]).abs().max().item() for k in weights)


def test_two_processes_train_the_same_weights_as_one_at_the_same_global_batch(settings_for):
    one = settings_for("one-process", batch_size=2, steps=4, checkpoint_every=2, mixed_precision="no")
    single = train(one)
    two = settings_for("two-processes", batch_size=1, steps=4, checkpoint_every=2, mixed_precision="no")
    launch(two, processes=2, cpu=True, port=free_port())
    a, b = unet_weights(single.output), unet_weights(two.output / "model")
    import torch

    gaps = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Adam moves a weight by up to ~lr a step whatever its gradient's size: where a gradient is
    # near zero, the rounding of another summation order (two processes) can flip its sign and
    # put the two runs up to 2*lr a step apart. That bounds the worst weight; nearly all the
    # others, with gradients well away from zero, agree to float rounding (here: 5 of 66,844
    # weights beyond 1e-6, the worst 4.7e-6; 3.6e-5 on a loaded machine failed the old 1e-5).
    assert gaps.max().item() <= 2 * two.learning_rate * two.steps, gaps.max()
    assert (gaps > 1e-6).float().mean().item() < 1e-3
    assert changed_by(a, two) > 1e-3  # the weights did move: the match is not two untouched models
    metrics = json.loads((two.output / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_batch"] == 2
    history_one = [round(x, 5) for _, x in single.loss_history]
    assert [round(x, 5) for _, x in metrics["loss_history"]] == history_one


def test_only_the_main_process_writes(settings_for):
    two = settings_for(
        "writers", batch_size=1, steps=3, checkpoint_every=1, mixed_precision="no", validation_prompts=["an ox"]
    )
    launch(two, processes=2, cpu=True, port=free_port())
    written = sorted(str(p.relative_to(two.output)) for p in two.output.rglob("*") if p.is_file())
    # one of each: the two processes never both write (names would clash or duplicate)
    assert "settings.json" in written and "metrics.json" in written
    assert sum(name.startswith("validation/") and name.endswith(".png") for name in written) == 2
    assert not any("checkpoint" in name for name in written)  # removed once the round finished
    assert len([n for n in written if n.startswith("model/unet/")]) == 2  # config + weights, once


def test_a_recorded_round_can_run_over_two_processes(tmp_path, tiny_model):
    from herdbook.feedback.curation import sync
    from herdbook.feedback.votes import cast_vote
    from herdbook.training.rounds import generate_candidates, plan_round, run_round

    from herdbook.config import ProjectConfig
    from herdbook.home import init_home
    from tests.training.tiny import RESOLUTION

    home = init_home(
        tmp_path / "home", ProjectConfig(base_model=str(tiny_model), resolution=RESOLUTION, reference_prompts=[])
    )
    store = home.open_store()
    ids = generate_candidates(store, home.project, "an ox", "base", count=2, steps=2)
    with store.transaction() as session:
        for cid in ids:
            cast_vote(session, cid, "ann", "accept")
        sync(session, home.dataset_repo, home.root, home.config.selection)
        planned = plan_round(session, home.project, mode="lora", steps=2, learning_rate=1e-2, checkpoint_every=0)
    record = run_round(store, home.project, planned.id, processes=2)
    assert record.status == "finished" and record.metrics["processes"] == 2
    assert (Path(record.output_path) / "pytorch_lora_weights.safetensors").exists()
    assert len(record.loss_history) == 2


def test_a_round_over_several_processes_takes_a_port_of_its_own(monkeypatch, settings_for):
    """Two rounds launched on one machine both took accelerate's 29500; the second failed."""
    from herdbook.training import launch as launching

    commands = []
    monkeypatch.setattr(launching.subprocess, "run", lambda command, check: commands.append(command))
    for name in ("one", "two"):
        launching.launch(settings_for(name), processes=2, cpu=True)
    ports = [int(c[c.index("--main_process_port") + 1]) for c in commands]
    assert 29500 not in ports and all(port > 0 for port in ports)
