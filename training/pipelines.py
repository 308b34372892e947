"""Sampling pipelines kept loaded between generation jobs, for a long-running worker.

Loading a model is most of a small generation job (seconds of reading weights and moving them
to the GPU against ~0.6 s of drawing 4 images), and a team generates from the same few models
again and again. The cache holds the pipelines used last, least recently used out first, within
a memory budget; an entry whose files changed on disk (a round deleted and its number used again,
a model folder replaced) is loaded afresh, and the worker drops models the project no longer has
(``keep_only``) and frees everything before a round needs the memory (``clear``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herdbook.training.settings import GenerationSettings, ModelChain

Signature = tuple  # what a model's files were when it was loaded


def files_signature(chain: ModelChain) -> Signature:
    """The model's files as they are now: (path, inode, size, modified) of the pipeline's index
    and of each adapter's weights; a hub id is named as it is (its cache does not change under it)."""

    def stat(path: Path):
        try:
            found = path.stat()
        except OSError:
            return (str(path), None)
        return (str(path), found.st_ino, found.st_size, found.st_mtime_ns)

    pipeline = Path(chain.pipeline).expanduser()
    parts = [stat(pipeline / "model_index.json") if pipeline.is_dir() else (chain.pipeline,)]
    for adapter in chain.adapters:
        folder = Path(adapter)
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
        parts += [stat(path) for path in weights] or [(adapter, None)]
    return tuple(parts)


def pipeline_bytes(pipeline) -> int:
    """Bytes of the pipeline's weights (parameters and buffers of each model in it)."""
    total = 0
    for part in getattr(pipeline, "components", {}).values():
        if hasattr(part, "parameters"):
            total += sum(t.numel() * t.element_size() for t in part.parameters())
            total += sum(t.numel() * t.element_size() for t in part.buffers())
    return total


def default_budget() -> int:
    """Half the GPU's memory (the rest is for drawing), or 8 GiB of host memory without a GPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory // 2
    return 8 * 2**30


@dataclass
class Entry:
    signature: Signature
    pipeline: Any
    size: int


class PipelineCache:
    """Loaded pipelines by (model, sampler, fast path). One job draws at a time: ``using``
    holds the cache's lock while the pipeline is in use (a pipeline's sampler has state)."""

    def __init__(self, load: Callable[[GenerationSettings], Any] | None = None, budget: int | None = None) -> None:
        self._load = load
        self.budget = budget
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()
        self.loads = 0  # how many times a model was read from disk
        self.lock = threading.RLock()
        self._judges: tuple[tuple[str, str], Any] | None = None

    def judges(self, settings):
        """The DINO and CLIP models that score candidates (training.evaluation.Embedders for
        ``settings``, an EvaluationSettings), kept between jobs like the pipelines."""
        with self.lock:
            key = (settings.dino_model, settings.clip_model)
            if self._judges is None or self._judges[0] != key:
                from herdbook.training.evaluation import Embedders

                self._judges = None
                self._judges = (key, Embedders(settings))
            return self._judges[1]

    @contextmanager
    def using(self, settings: GenerationSettings) -> Iterator[Any]:
        with self.lock:
            yield self._get(settings)

    def _get(self, settings: GenerationSettings):
        key = (settings.model, settings.scheduler, settings.fast_path)
        signature = files_signature(settings.model)
        entry = self.entries.get(key)
        if entry is not None and entry.signature == signature:
            self.entries.move_to_end(key)
            return entry.pipeline
        self._drop(key)
        if self._load is None:
            from herdbook.training.generate import load_pipeline

            self._load = load_pipeline
        pipeline = self._load(settings)
        self.loads += 1
        size = pipeline_bytes(pipeline)
        budget = self.budget if self.budget is not None else default_budget()
        while self.entries and sum(e.size for e in self.entries.values()) + size > budget:
            self._drop(next(iter(self.entries)))  # the least recently used
        self.entries[key] = Entry(signature, pipeline, size)
        return pipeline

    def preload(self, settings: GenerationSettings) -> None:
        """Load the pipeline ``settings`` draw with now, so the job that asks for it finds it."""
        with self.lock:
            self._get(settings)

    def keep_only(self, chains: set[ModelChain]) -> None:
        """Drop the pipelines of models not in ``chains`` (a deleted round, a replaced base model)."""
        with self.lock:
            for key in [key for key in self.entries if key[0] not in chains]:
                self._drop(key)

    def clear(self) -> None:
        """Free every pipeline (a round is about to need the memory)."""
        with self.lock:
            self._judges = None
            for key in list(self.entries):
                self._drop(key)

    def _drop(self, key: tuple) -> None:
        if self.entries.pop(key, None) is None:
            return
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def models(self) -> list[ModelChain]:
        return [key[0] for key in self.entries]
