"""The tiny models of herdbook.training.tiny, under the name the tests have always used."""

from herdbook.training.tiny import RESOLUTION, TOKENIZER, save_tiny_pipeline, tiny_components

__all__ = ["RESOLUTION", "TOKENIZER", "save_tiny_pipeline", "tiny_components"]
