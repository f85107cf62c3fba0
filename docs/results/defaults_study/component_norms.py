"""How far one unit of z moves the weight, per decomposition, on the real MiniLM's query/value matrices.

OMP_NUM_THREADS=1 python docs/results/defaults_study/component_norms.py
Another model: ... component_norms.py <model folder> <weight suffixes>, e.g. MPNet's
  ... component_norms.py ~/.cache/loldu_lightning/all-mpnet-base-v2 q.weight,v.weight
"""

import statistics
import sys

import torch
import transformers

from loldu_lightning.loldu import DECOMPOSITIONS
from loldu_lightning.models import minilm_path

folder, suffixes = (sys.argv[1], tuple(sys.argv[2].split(","))) if len(sys.argv) > 2 else (minilm_path(), None)
suffixes = suffixes or ("query.weight", "value.weight")
model = transformers.AutoModel.from_pretrained(folder)
rows: dict[str, list[tuple[float, float]]] = {}
for name, weight in model.named_parameters():
    if name.endswith(suffixes):
        for decomposition, variant in DECOMPOSITIONS.items():
            factors = variant.decompose(weight.detach(), min(weight.shape), torch.float32)
            # Frobenius norm of component i per unit of z_i: ||lower_i|| * ||upper_i||
            per_unit = factors.lower.norm(dim=0) * factors.upper.norm(dim=1)
            rows.setdefault(decomposition, []).append((per_unit.median().item(), factors.diag.abs().median().item()))
for decomposition, values in rows.items():
    print(
        f"{decomposition}: weight change per unit of z {statistics.median(v[0] for v in values):.3g}, "
        f"median |d| {statistics.median(v[1] for v in values):.3g} ({len(values)} matrices)"
    )
