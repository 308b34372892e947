"""The worker's cache of loaded sampling pipelines, with a stand-in loader: no model is drawn."""

from types import SimpleNamespace

import torch
from herdbook.training.pipelines import PipelineCache
from herdbook.training.settings import GenerationSettings, ModelChain


def settings(pipeline: str, *adapters: str, scheduler: str = "DPMSolverMultistepScheduler") -> GenerationSettings:
    return GenerationSettings(prompt="an ox", model=ModelChain(pipeline, adapters), scheduler=scheduler)


def model_folder(path, text="{}"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(text)
    return str(path)


class Loader:
    """Pipelines of one float32 weight of ``size`` elements each; counts what it loaded."""

    def __init__(self, size: int = 256) -> None:
        self.size, self.loaded = size, []

    def __call__(self, generation: GenerationSettings):
        self.loaded.append(generation.model)
        return SimpleNamespace(components={"unet": torch.nn.Linear(self.size, 1, bias=False)})


def use(cache: PipelineCache, generation: GenerationSettings):
    with cache.using(generation) as pipeline:
        return pipeline


def test_a_second_job_on_the_same_model_loads_nothing_and_another_model_loads(tmp_path):
    loader = Loader()
    cache = PipelineCache(loader, budget=10**9)
    base = model_folder(tmp_path / "base")
    first = use(cache, settings(base))
    assert use(cache, settings(base)) is first and cache.loads == 1
    use(cache, settings(base, scheduler="EulerDiscreteScheduler"))  # another sampler: its own pipeline
    use(cache, settings(model_folder(tmp_path / "other")))
    assert cache.loads == 3


def test_the_least_recently_used_goes_first_when_the_budget_is_full(tmp_path):
    cache = PipelineCache(Loader(size=256), budget=2 * 256 * 4)  # room for two
    a, b, c = (settings(model_folder(tmp_path / name)) for name in "abc")
    use(cache, a), use(cache, b), use(cache, a)  # b is now the least recently used
    use(cache, c)
    assert cache.models == [a.model, c.model]


def test_a_model_whose_files_changed_is_loaded_again(tmp_path):
    """A deleted round's number used again by a new round: same path, other weights."""
    base = model_folder(tmp_path / "base")
    adapter = tmp_path / "round-001" / "lora"
    adapter.mkdir(parents=True)
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"first")
    cache = PipelineCache(Loader(), budget=10**9)
    use(cache, settings(base, str(adapter)))
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"second, longer")
    use(cache, settings(base, str(adapter)))
    assert cache.loads == 2 and len(cache.models) == 1


def test_models_the_project_no_longer_has_are_dropped_and_clear_frees_all(tmp_path):
    cache = PipelineCache(Loader(), budget=10**9)
    old, new = settings(model_folder(tmp_path / "old")), settings(model_folder(tmp_path / "new"))
    use(cache, old), use(cache, new)
    cache.keep_only({new.model})
    assert cache.models == [new.model]
    cache.clear()
    assert cache.models == []
