"""What can be known of a model without loading it, and done for it before torch is imported:
whether it can load, its family, and its files read from disk in the background.

No torch here: the CLI checks a model and starts reading its weights while Python is still
importing torch, transformers and diffusers (~15-18 s per process on the H200 machine, a
quarter of a round's wait; bench/startup.txt)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

from herdbook.training.errors import ModelLoadError
from herdbook.training.families import Family, family_of_folder, family_of_index
from herdbook.training.settings import ModelChain


class _PipelineIndex:
    """Reads a pipeline's model_index.json (which names its class), through the same loading path."""

    @staticmethod
    def from_pretrained(name: str, **kwargs) -> dict:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(name, **kwargs)


def model_family(name: str) -> Family:
    """The family of the pipeline ``name`` (a folder, or a hub id read from the cache or the hub)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return family_of_folder(folder)
    return family_of_index(load_pretrained(_PipelineIndex, name), None, name)


def model_sampler(name: str) -> str | None:
    """The sampler class the pipeline ``name`` ships with (its model_index.json's scheduler)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
    else:
        index = load_pretrained(_PipelineIndex, name)
    entry = index.get("scheduler")
    return str(entry[1]) if isinstance(entry, list) and len(entry) == 2 and entry[1] else None


def _is_hub_id(name: str) -> bool:
    """Hub ids look like ``org/name``; anything else is meant as a folder."""
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


def load_pretrained(loader, name: str, setting: str = "base_model", **kwargs):
    """One component. A local folder loads as it is; a hub id is looked for in the local cache
    first, then on the hub, and a failure names what was looked for and what to do (``setting``:
    the herdbook.toml key that names the model)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return loader.from_pretrained(str(folder), **kwargs)
    if not _is_hub_id(name):
        raise ModelLoadError(f"no model folder at {folder}")
    if _in_cache(name):
        try:
            return loader.from_pretrained(name, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            pass  # part of it is cached: the hub may have the rest
    # asked before the library is: where the hub can't be reached, it retried ~50 s a model (for
    # each round's DINO and CLIP, each scoring); a cached model never waits for the question
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE=1" if offline else "the hub is unreachable from this machine"
        raise ModelLoadError(
            f"{name} is not in the local Hugging Face cache and {why}; download it where the hub "
            f"is reachable (`huggingface-cli download {name}`) or set {setting} to a local folder"
        )
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load {name} ({kwargs.get('subfolder', 'pipeline')}) from the Hugging Face hub or its cache: "
            f"{str(error).splitlines()[0]}. On a machine without the hub, point {setting} at a local folder."
        ) from error


def _in_cache(name: str) -> bool:
    """Whether any snapshot of the hub id ``name`` is in the local cache (a pipeline's or a model's)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, f), str) for f in ("model_index.json", "config.json"))


def on_this_machine(chain: ModelChain) -> bool:
    """Whether ``chain`` loads without a download: a folder, or a hub id in the local cache."""
    return model_problem(chain, reachable=lambda: False) is None


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (its endpoint, or HF_ENDPOINT).
    Behind a proxy a direct connection says nothing: then the library is left to try."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True

    host = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def model_problem(chain: ModelChain, reachable=hub_reachable) -> str | None:
    """Why ``chain`` cannot be loaded, found cheaply before any job is queued (a folder that is
    not there, a hub id neither cached nor downloadable, a missing adapter); None when it can
    be tried. The cause is the real one: "the hub is unreachable" is not "config.json missing"."""
    name = chain.pipeline
    folder = Path(name).expanduser()
    for adapter in chain.adapters:
        if not Path(adapter).exists():
            return f"the LoRA adapter {adapter} is missing (was its round's output moved?)"
    if folder.is_dir():
        try:
            family_of_folder(folder)
        except ModelLoadError as error:
            return str(error)
        return None
    if not _is_hub_id(name):
        return f"there is no model folder at {folder}"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "model_index.json"), str):
        return None  # in the local cache
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return f"{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    if not reachable():
        return f"the Hugging Face hub is unreachable from this machine and {name} is not in its cache"
    return None


def model_files(chain: ModelChain) -> list[Path]:
    """The weight files a chain loads: its pipeline folder's (a hub id's from the local cache) and
    its adapters'."""
    folder = Path(chain.pipeline).expanduser()
    if not folder.is_dir() and _is_hub_id(chain.pipeline):
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(chain.pipeline, "model_index.json")
        folder = Path(index).parent if isinstance(index, str) else folder
    roots = [folder, *(Path(adapter) for adapter in chain.adapters)]
    return [path for root in roots if root.is_dir() for path in sorted(root.rglob("*.safetensors"))]


def prefetch(chain: ModelChain) -> threading.Thread:
    """Read the chain's weight files in a background thread, so the model loads from memory: a
    read waits on the disk without holding the GIL, and meanwhile Python imports the libraries."""

    def read() -> None:
        buffer = bytearray(16 * 2**20)
        for path in model_files(chain):
            try:
                with open(path, "rb", buffering=0) as file:
                    while file.readinto(buffer):
                        pass
            except OSError:
                continue  # loading will say what is wrong with it

    thread = threading.Thread(target=read, name="herdbook-prefetch", daemon=True)
    thread.start()
    return thread


def import_training_in_background(chain: ModelChain | None = None, lora: bool = False) -> threading.Thread:
    """Import torch, diffusers, transformers and herdbook's trainer in a background thread, while
    the caller waits on something else (the database, the dataset export's child processes),
    with the classes ``chain``'s family loads with and, for LoRA (``lora`` or adapters), peft.
    The caller joins the thread before importing any of them itself: two threads importing
    transformers at once can each find it half-made (an ImportError)."""

    def load() -> None:
        import herdbook.training.dreambooth  # noqa: F401

        if chain is not None:
            with contextlib.suppress(ModelLoadError):  # loading will say what is wrong with the model
                model_family(chain.pipeline).import_classes()
        if lora or (chain is not None and chain.adapters):
            import peft  # noqa: F401

    thread = threading.Thread(target=load, name="herdbook-imports", daemon=True)
    thread.start()
    return thread
