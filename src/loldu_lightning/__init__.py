"""LoLDU Lightning: LoLDU parameter-efficient fine-tuning as a Hydra + Lightning framework."""

__version__ = "0.1.0"
