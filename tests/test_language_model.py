"""A GPT-2-style decoder from ``transformers`` with its causal-LM loss through ``forward=``.

A tiny configuration (random initialisation, nothing downloaded; 1,040 parameters with the
tied embedding / output matrix counted once) in float64, so every number is checked against
plain PyTorch: the dense Hessian by autograd on the model's own parameters
(``tests/reference.py``), losses by calling the model on hand-built weights."""

import copy

import numpy as np
import pytest
import torch
from reference import assert_unchanged, dense_hessian, snapshot

import lossviz as lv

transformers = pytest.importorskip("transformers")


def _lm_loss(model, batch):
    """The causal-LM loss: mean next-token cross-entropy, computed in the model's dtype.

    What ``model(input_ids=ids, labels=ids).loss`` computes, except that transformers'
    loss casts the logits with ``.float()`` (float32, even for a float64 model), which
    would make the float64 checks here float32-accurate; ``test_builtin_lm_loss_is_...``
    shows the two agree to float32 rounding.
    """
    ids = batch[0]
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def _gpt2(seed=0):
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=8,
        vocab_size=11,
        n_positions=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


@pytest.fixture(scope="module")
def lm():
    model = _gpt2()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (6, 6), generator=g)
    data = [(ids[:4],), (ids[4:],)]  # uneven batches: the loss is their sample-weighted mean
    return model, data


def _direct_loss(model, data, state):
    """The full-data loss of ``model`` with ``state`` loaded, by plain calls."""
    m = copy.deepcopy(model)
    m.load_state_dict(state, strict=False)
    with torch.no_grad():
        total = sum(float(_lm_loss(m, b)) * len(b[0]) for b in data)
    return total / sum(len(b[0]) for b in data)


def test_loss_equals_the_model_s_own(lm):
    model, data = lm
    obj = lv.Objective(model, forward=_lm_loss, data=data)
    assert obj.layout.size == sum(p.numel() for p in model.parameters()) == 1040
    assert obj.loss() == pytest.approx(_direct_loss(model, data, {}), rel=1e-12)


def test_builtin_lm_loss_is_the_same_formula_in_float32(lm):
    model, data = lm
    with torch.no_grad():
        for b in data:
            builtin = float(model(input_ids=b[0], labels=b[0]).loss)
            assert builtin == pytest.approx(float(_lm_loss(model, b)), rel=1e-6)
            assert builtin == float(np.float32(builtin))  # float32, although the model is not
    obj = lv.Objective(model, forward=lambda m, b: m(input_ids=b[0], labels=b[0]).loss, data=data)
    assert obj.loss() == pytest.approx(_direct_loss(model, data, {}), rel=1e-6)


def test_eigenpairs_and_density_are_exact_against_the_dense_hessian(lm):
    model, data = lm
    before = snapshot(model)
    obj = lv.Objective(model, forward=_lm_loss, data=data)
    H = dense_hessian(model, data=data, forward=_lm_loss)
    assert torch.allclose(H, H.T, atol=1e-10)
    ev = torch.linalg.eigvalsh(H)
    top = lv.hessian_eigs(obj, k=3, progress=False)
    np.testing.assert_allclose(top.values, ev.flip(0)[:3].numpy(), rtol=1e-6, atol=1e-9)
    low = lv.hessian_eigs(obj, k=2, which="smallest", progress=False)
    np.testing.assert_allclose(low.values, ev[:2].numpy(), rtol=1e-6, atol=1e-8)
    # the reported residuals ||Hv - λv|| / |λ|_max are the dense matrix's, within tol
    for lam, v, res in zip(top.values, top.vectors, top.residuals):
        vf = torch.cat([t.reshape(-1) for t in v.values()])
        true = float((H @ vf - lam * vf).norm() / abs(ev).max())
        assert true == pytest.approx(res, rel=1e-3, abs=1e-7) and true <= 1e-4
    dens = lv.hessian_density(obj, n_probes=4, steps=40, seed=0, progress=False)
    # every Ritz value lies in the spectrum's range and the extremes are found
    assert dens.nodes.min() >= float(ev[0]) - 1e-8 and dens.nodes.max() <= float(ev[-1]) + 1e-8
    assert dens.nodes.max() == pytest.approx(float(ev[-1]), rel=1e-6)
    assert_unchanged(model, before)


def test_surface_and_layerwise_barriers_equal_direct_evaluation(lm):
    model, data = lm
    obj = lv.Objective(model, forward=_lm_loss, data=data)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1, d2 = lv.random_directions(obj, 2, seed=0)
    s = lv.surface(obj, None, [d1, d2], n=(3, 3), span=((-0.5, 0.5), (-0.5, 0.5)), progress=False)
    for i, yv in enumerate(s.y):
        for j, xv in enumerate(s.x):
            st = {n: theta[n] + xv * d1[n] + yv * d2[n] for n in d1}
            assert s.loss[i, j] == pytest.approx(_direct_loss(model, data, st), rel=1e-10)
    # two short fine-tunes of one parent, on different batches
    tunes = []
    for k in range(2):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            _lm_loss(m, data[k]).backward()
            opt.step()
        tunes.append({n: p.detach().clone() for n, p in m.named_parameters()})
    A, B = tunes
    r = lv.layerwise_barriers(obj, A, B, base="A", progress=False)
    mean_ends = 0.5 * (_direct_loss(model, data, A) + _direct_loss(model, data, B))
    full = {n: 0.5 * (A[n] + B[n]) for n in A}
    assert r.full == pytest.approx(_direct_loss(model, data, full) - mean_ends, rel=1e-9)
    assert len(r.groups) == 9  # wte (tied with lm_head), wpe, ln_1, c_attn, ..., ln_f
    for name, params in r.groups.items():
        st = dict(A)
        for p in params:
            st[p] = 0.5 * (A[p] + B[p])
        want = _direct_loss(model, data, st) - mean_ends
        assert r.barriers["A"][name] == pytest.approx(want, abs=1e-10)
