"""How far one unit of z moves the weight, per decomposition, on the real MiniLM's query/value matrices.

OMP_NUM_THREADS=1 python docs/results/defaults_study/component_norms.py
"""

import statistics

import torch
import transformers

from loldu_lightning.loldu import DECOMPOSITIONS
from loldu_lightning.models import minilm_path

model = transformers.AutoModel.from_pretrained(minilm_path())
rows: dict[str, list[tuple[float, float]]] = {}
for name, weight in model.named_parameters():
    if name.endswith(("query.weight", "value.weight")):
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
