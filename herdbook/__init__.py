"""herdbook: a human-feedback curation loop for teaching Stable Diffusion a character."""

__version__ = "0.1.0"
