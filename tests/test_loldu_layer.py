"""LoLDULinear: inits, residual modes, sigma, and the two exact forward paths."""

import copy

import pytest
import torch
from torch import nn

from loldu_lightning.loldu import INITS, LoLDUConfig, LoLDULinear, choose_forward_path, inject, merged_function
from loldu_lightning.loldu.merged_function import merged_linear

SHAPES = {"square": (12, 12), "tall": (20, 8), "wide": (6, 14)}  # (out, in)


class Toy(nn.Module):
    """Two adapted layers and an activation: enough to see every effect of an adapter."""

    def __init__(self, width: int = 12, out: int = 7) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.value = nn.Linear(width, out)

    def forward(self, x):
        return self.value(self.act(self.query(x)))


def _toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


STORAGES = ["dense", "packed", "lu"]


def _layer(shape, mode="auto", seed=0, bias=True, **config) -> LoLDULinear:
    torch.manual_seed(seed)
    out_features, in_features = shape
    # storage "packed" holds full-rank factors only
    rank = min(shape) if config.get("storage") == "packed" else min(shape) - 1
    config = {"rank": rank, "alpha": 3.0, "forward_mode": mode, **config}
    layer = LoLDULinear(nn.Linear(in_features, out_features, bias=bias), LoLDUConfig(**config), name="layer")
    with torch.no_grad():  # move away from step 0 so the update is not zero
        layer.z.add_(torch.randn_like(layer.z))
        layer.sigma.mul_(1.5)
    return layer


def _reference(layer: LoLDULinear, x):
    """y = x W^T + b with W built densely from the factors: the definition, not the implementation.

    ``base_weight()`` is W0 (for ``storage: lu``, which keeps no W0, the product of its factors)."""
    lower, upper = layer.dense_factors()
    weight = layer.base_weight() + lower @ torch.diag(layer.sigma * layer.z - layer.c) @ upper
    return nn.functional.linear(x, weight, layer.base_layer.bias)


@pytest.mark.parametrize("init", sorted(INITS))
@pytest.mark.parametrize("mode", ["factored", "merged"])
@pytest.mark.parametrize(("storage", "rank"), [("dense", 6), ("packed", "full"), ("lu", 6)])
def test_residual_init_leaves_the_model_unchanged_at_step_zero_for_every_init(init, mode, storage, rank):
    base = _toy()
    model = inject(copy.deepcopy(base), LoLDUConfig(rank=rank, alpha=12, init=init, forward_mode=mode, storage=storage))
    x = torch.randn(5, 12)
    if storage == "lu":  # W0 is the product of its float32 factors: equal to float32 rounding
        torch.testing.assert_close(model(x), base(x), atol=2e-6, rtol=0)
    else:
        assert torch.equal(model(x), base(x))


@pytest.mark.parametrize("init", sorted(INITS))
def test_residual_ldu_is_neutral_only_for_the_ldu_init(init):
    base = _toy()
    model = inject(copy.deepcopy(base), LoLDUConfig(rank=6, alpha=12, init=init, residual="ldu"))
    x = torch.randn(5, 12)
    unchanged = torch.allclose(model(x), base(x), atol=1e-6, rtol=0)
    assert unchanged == (init == "ldu")


@pytest.mark.parametrize("init", sorted(INITS))
def test_residual_authors_is_the_released_codes_per_init_split(init):
    """residual=authors: c from z0 for ldu/constant/uniform/normal (step 0 = pretrained model), c from
    d_r for ones/zeros/uniform_unit/normal_unit (the model changes at step 0: Table V's collapsed rows)."""
    base = _toy()
    config = dict(rank=6, alpha=12, init=init)
    model = inject(copy.deepcopy(base), LoLDUConfig(**config, residual="authors"))
    expected = "init" if init in {"ldu", "constant", "uniform", "normal"} else "ldu"
    twin = inject(copy.deepcopy(base), LoLDUConfig(**config, residual=expected))
    for layer, twin_layer in zip(model.modules(), twin.modules(), strict=True):
        if isinstance(layer, LoLDULinear):
            assert torch.equal(layer.c, twin_layer.c) and torch.equal(layer.z, twin_layer.z)
    x = torch.randn(5, 12)
    unchanged = torch.equal(model(x), base(x))
    assert unchanged == (expected == "init")
    if init in ("zeros", "ones", "uniform_unit", "normal_unit"):
        assert not torch.allclose(model(x), base(x), atol=1e-3)


def test_inits_follow_their_definitions():
    weight_layer = nn.Linear(16, 16)
    diag = None
    values = {}
    for init in INITS:
        layer = LoLDULinear(copy.deepcopy(weight_layer), LoLDUConfig(rank=16, init=init), name="q")
        values[init] = layer.z.detach()
        if init == "ldu":
            diag = values[init]
    mean, std = diag.mean(), diag.std()
    half = abs(float(mean)) / 2
    assert torch.equal(values["constant"], torch.full((16,), float(mean)))
    assert values["uniform"].abs().max() <= half and values["uniform"].std() > 0
    assert values["uniform_unit"].abs().max() <= 1.0 and values["uniform_unit"].std() > 0
    assert torch.equal(values["zeros"], torch.zeros(16)) and torch.equal(values["ones"], torch.ones(16))
    assert values["normal"].std() > 0 and values["normal_unit"].std() > 0
    assert abs(float(values["normal"].mean() - mean)) < 3 * float(std)


def test_random_inits_are_reproducible_per_name_and_independent_of_module_order():
    config = LoLDUConfig(rank=6, init="normal_unit", seed=7)
    linear = nn.Linear(12, 12)
    first = LoLDULinear(copy.deepcopy(linear), config, name="encoder.query").z
    again = LoLDULinear(copy.deepcopy(linear), config, name="encoder.query").z
    other_name = LoLDULinear(copy.deepcopy(linear), config, name="encoder.value").z
    other_seed = LoLDULinear(
        copy.deepcopy(linear), LoLDUConfig(rank=6, init="normal_unit", seed=8), name="encoder.query"
    ).z
    assert torch.equal(first, again)
    assert not torch.equal(first, other_name) and not torch.equal(first, other_seed)

    forward_order = inject(_toy(), LoLDUConfig(rank=6, init="uniform"))
    only_value = inject(_toy(), LoLDUConfig(rank=6, init="uniform", target_modules=["value"]))
    assert torch.equal(forward_order.value.z, only_value.value.z)


@pytest.mark.parametrize(
    ("scaling", "trainable", "sigma"), [("learned", True, 0.5), ("fixed", False, 0.5), ("none", False, 1.0)]
)
def test_scaling_modes_set_sigma_and_its_trainability(scaling, trainable, sigma):
    layer = LoLDULinear(nn.Linear(12, 12), LoLDUConfig(rank=8, alpha=4, scaling=scaling), name="q")
    assert isinstance(layer.sigma, nn.Parameter) == trainable
    assert float(layer.sigma.detach()) == sigma
    assert layer.sigma.shape == (1,)  # a length-1 vector: FSDP refuses 0-d parameters


def test_state_dict_holds_the_small_vectors_but_not_the_recomputable_factors():
    layer = LoLDULinear(nn.Linear(12, 10), LoLDUConfig(rank=5, scaling="fixed"), name="q")
    keys = set(layer.state_dict())
    assert {"z", "sigma", "c", "base_layer.weight", "base_layer.bias"} == keys
    assert layer.lower.shape == (10, 5) and layer.upper.shape == (5, 12) and layer.perm.shape == (10,)
    assert (layer.in_features, layer.out_features, layer.rank) == (12, 10, 5)
    assert layer.weight is layer.base_layer.weight and layer.bias is layer.base_layer.bias
    assert not layer.merged and not layer.disabled


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("mode", ["factored", "merged", "auto"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("input_dims", [2, 3])
def test_forward_paths_match_the_dense_definition_in_output_and_gradients(mode, shape, input_dims, storage):
    layer = _layer(SHAPES[shape], mode, storage=storage)
    batch = (4, 3) if input_dims == 3 else (5,)
    x = torch.randn(*batch, layer.in_features, requires_grad=True)
    target = torch.randn(*batch, layer.out_features)

    output = layer(x)
    ((output - target) ** 2).sum().backward()
    grads = (x.grad.clone(), layer.z.grad.clone(), layer.sigma.grad.clone())
    x.grad = layer.z.grad = layer.sigma.grad = None

    expected = _reference(layer, x)
    ((expected - target) ** 2).sum().backward()
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, (x.grad, layer.z.grad, layer.sigma.grad), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("recompute_weight", [True, False])
@pytest.mark.parametrize("use_gram", [True, False])
def test_every_merged_backward_formula_gives_the_same_gradients(monkeypatch, recompute_weight, use_gram):
    monkeypatch.setattr(merged_function, "recompute_weight_for_input_grad", lambda *args: recompute_weight)
    monkeypatch.setattr(merged_function, "gram_for_scale_grad", lambda *args: use_gram)
    layer = _layer(SHAPES["tall"], "merged")
    x = torch.randn(3, 4, layer.in_features, requires_grad=True)
    layer(x).sin().sum().backward()
    grads = (x.grad.clone(), layer.z.grad.clone(), layer.sigma.grad.clone())
    x.grad = layer.z.grad = layer.sigma.grad = None
    _reference(layer, x).sin().sum().backward()
    for got, want in zip(grads, (x.grad, layer.z.grad, layer.sigma.grad), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("use_gram", [True, False])
def test_merged_function_gradients_pass_gradcheck_for_every_input(monkeypatch, use_gram):
    monkeypatch.setattr(merged_function, "gram_for_scale_grad", lambda *args: use_gram)
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    x, weight, bias, lower, upper, scale = (
        tensor(2, 3, 5),
        tensor(4, 5),
        tensor(4),
        tensor(4, 3),
        tensor(3, 5),
        tensor(3),
    )
    assert torch.autograd.gradcheck(
        lambda *inputs: merged_linear(*inputs, torch.float64), (x, weight, bias, lower, upper, scale)
    )


def test_merged_path_saves_no_dense_weight_for_backward():
    layer = _layer((24, 16), "merged")
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(torch.randn(2, 16, requires_grad=True)).sum().backward()
    dense = [t for t in saved if t.shape == (24, 16) and t.data_ptr() != layer.base_layer.weight.data_ptr()]
    assert saved and not dense


def test_merged_path_supports_a_trainable_base_weight_and_bias():
    layer = _layer(SHAPES["wide"], "merged")
    layer.base_layer.requires_grad_(True)
    x = torch.randn(7, layer.in_features)
    layer(x).square().sum().backward()
    got = (layer.base_layer.weight.grad.clone(), layer.base_layer.bias.grad.clone())
    layer.base_layer.zero_grad()
    _reference(layer, x).square().sum().backward()
    torch.testing.assert_close(got[0], layer.base_layer.weight.grad)
    torch.testing.assert_close(got[1], layer.base_layer.bias.grad)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("mode", ["factored", "merged"])
def test_layer_without_bias_works(mode, storage):
    layer = _layer((10, 8), mode, bias=False, storage=storage)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), _reference(layer, x), atol=1e-5, rtol=1e-5)


def test_auto_mode_prefers_factored_for_few_tokens_and_merged_for_many():
    assert choose_forward_path(768, 768, 768, tokens=16, needs_grad=True) == "factored"
    assert choose_forward_path(768, 768, 768, tokens=32 * 128, needs_grad=True) == "merged"
    assert choose_forward_path(768, 768, 8, tokens=128, needs_grad=False) == "factored"
    assert choose_forward_path(768, 768, 8, tokens=32 * 128, needs_grad=False) == "merged"
    layer = _layer((64, 64), "auto")
    assert layer.forward_path(torch.randn(2, 64)) == "factored"
    assert layer.forward_path(torch.randn(4096, 64)) == "merged"
    with torch.no_grad():
        assert layer.forward_path(torch.randn(64, 64)) == "merged"


def test_forward_mode_is_validated_when_changed():
    layer = _layer((8, 8))
    layer.forward_mode = "merged"
    assert layer.forward_mode == "merged"
    with pytest.raises(ValueError, match="forward_mode.*auto, factored, merged"):
        layer.forward_mode = "dense"


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dtype", [torch.bfloat16])
@pytest.mark.parametrize("mode", ["factored", "merged"])
def test_autocast_runs_both_paths_in_the_autocast_dtype(dtype, mode, storage):
    layer = _layer((16, 12), mode, storage=storage)
    x = torch.randn(6, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        output = layer(x)
    assert output.dtype == dtype
    output.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.z.grad.dtype == torch.float32
    assert torch.isfinite(layer.z.grad).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(output.float(), _reference(layer, x), atol=0.1, rtol=0.05)


def test_a_checkpoint_with_a_0d_sigma_resumes():
    """Model state and optimizer state written when sigma was 0-d load into the length-1 sigma."""
    from loldu_lightning.tasks.base import match_state_shapes

    layer = LoLDULinear(nn.Linear(6, 4), LoLDUConfig(rank=2, target_modules=["x"]), "x")
    old_sigma = nn.Parameter(torch.tensor(0.75))
    old_optimizer = torch.optim.AdamW([old_sigma])
    old_sigma.grad = torch.tensor(0.5)
    old_optimizer.step()
    state = {key: value.reshape(()) if key == "sigma" else value for key, value in layer.state_dict().items()}
    state["sigma"] = old_sigma.detach().clone()
    layer.load_state_dict(state)
    assert layer.sigma.shape == (1,) and float(layer.sigma) == float(old_sigma)

    optimizer = torch.optim.AdamW([layer.sigma])
    optimizer.register_load_state_dict_post_hook(match_state_shapes)
    optimizer.load_state_dict(old_optimizer.state_dict())
    assert optimizer.state[layer.sigma]["exp_avg"].shape == (1,)
    assert optimizer.state[layer.sigma]["step"].shape == ()
    layer.sigma.grad = torch.tensor([0.5])
    old_sigma.grad = torch.tensor(0.5)
    optimizer.step()
    old_optimizer.step()
    assert float(layer.sigma) == float(old_sigma)
