"""GPU checks (`python -m pytest -m gpu`); see docs/gpu.md. A package so its module names stay apart from tests/."""
