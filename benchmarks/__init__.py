"""Speed, memory and initialisation-time comparisons of LoLDU against PEFT LoRA/PiSSA.

Run everything with ``python benchmarks/run.py`` (see ``benchmarks/README.md``).
"""
