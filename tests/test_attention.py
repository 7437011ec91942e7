"""The row-recompute attention backend against the eager reference, and the capture's contract."""

import copy
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cattune.attention import (
    CAT_ATTENTION,
    CATAttentionError,
    RowSupervision,
    capture_row_attention,
    prepare_model_for_cat,
    resolve_layers,
)
from cattune.loss import reattention_loss
from tiny_models import TINY_MODELS, tiny_gpt2, tiny_llama, tiny_qwen2

B, T = 3, 14


def padded_batch(seed=0, *, left=False):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (B, T), generator=gen)
    lengths = [T, T - 4, T - 7]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    return ids, mask


def supervision_for(mask, seed=0):
    """Two or three rows per example at real positions, causes among earlier (and some later) keys."""
    gen = torch.Generator().manual_seed(seed)
    rows, pairs = [], []
    for b in range(mask.shape[0]):
        real = mask[b].nonzero().flatten().tolist()
        for pos in real[-3:] if b == 0 else real[-2:]:
            rows.append((b, pos))
            k = len(rows) - 1
            for col in torch.randint(0, T, (4,), generator=gen).tolist():
                pairs.append((k, col))  # some fall at j > i or on padding: they must not count
    return RowSupervision(torch.tensor(rows), {"cause": torch.tensor(pairs)})


def lm_labels(ids, mask):
    """Next-token labels on real tokens that follow a real token (with left padding, the first real
    token would be predicted from a fully masked row, whose output differs between kernels)."""
    previous_real = torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1)
    return ids.masked_fill((mask == 0) | (previous_real == 0), -100)


def cat_step(model, backend, ids, mask, sup, *, layers=None, per_head=False, loss_type="div", backward_inside=True):
    """Loss and parameter gradients of LM loss + attention loss with one backend."""
    prepare_model_for_cat(model, backend)
    model.zero_grad(set_to_none=True)
    with capture_row_attention(model, sup, backend=backend, layers=layers) as cap:
        out = model(input_ids=ids, attention_mask=mask, labels=lm_labels(ids, mask), **cap.forward_kwargs)
        masses = cap.masses(out, mask)
        result = reattention_loss(*masses.row_statistics(per_head=per_head), alpha=2.0, loss_type=loss_type)
        total = out.loss + result.loss
        if backward_inside:
            total.backward()
    if not backward_inside:
        total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return result, masses, grads


def assert_same_grads(a, b, atol=1e-5):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("layers", [None, [-1]])
def test_recompute_matches_eager_loss_and_gradients(kind, per_head, layers):
    model = TINY_MODELS[kind]()
    ids, mask = padded_batch(1)
    sup = supervision_for(mask, 1)
    eager, eager_masses, eager_grads = cat_step(model, "eager", ids, mask, sup, layers=layers, per_head=per_head)
    recomputed, masses, grads = cat_step(model, "recompute", ids, mask, sup, layers=layers, per_head=per_head)
    assert masses.mass["cause"].dtype == torch.float32
    assert masses.mass["cause"].shape == (1 if layers else 2, len(sup), model.config.num_attention_heads)
    torch.testing.assert_close(masses.mass["cause"], eager_masses.mass["cause"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masses.other, eager_masses.other, atol=1e-6, rtol=1e-5)
    assert torch.equal(masses.n_allowed, eager_masses.n_allowed)
    assert recomputed.loss.item() == pytest.approx(eager.loss.item(), abs=1e-5)
    assert recomputed.loss.item() != 0.0
    assert_same_grads(grads, eager_grads)


@pytest.mark.parametrize("loss_type", ["hinge", "nll"])
def test_backends_agree_with_left_padding(loss_type):
    model = tiny_llama()
    ids, mask = padded_batch(2, left=True)
    sup = supervision_for(mask, 2)
    eager, _, eager_grads = cat_step(model, "eager", ids, mask, sup, loss_type=loss_type)
    recomputed, _, grads = cat_step(model, "recompute", ids, mask, sup, loss_type=loss_type)
    assert recomputed.loss.item() == pytest.approx(eager.loss.item(), abs=1e-5)
    assert_same_grads(grads, eager_grads)


def test_backends_agree_when_a_row_is_supervised_twice():
    # Two entries for the same query row (e.g. two effects sharing a position) each count, and
    # their gradients add up.
    model = tiny_llama()
    ids, mask = padded_batch(11)
    rows = torch.tensor([[0, 9], [0, 9], [2, 5]])
    pairs = torch.tensor([[0, 1], [1, 3], [1, 4], [2, 0]])
    sup = RowSupervision(rows, {"cause": pairs})
    eager, _, eager_grads = cat_step(model, "eager", ids, mask, sup, loss_type="hinge")
    recomputed, _, grads = cat_step(model, "recompute", ids, mask, sup, loss_type="hinge")
    assert recomputed.loss.item() == pytest.approx(eager.loss.item(), abs=1e-5)
    assert_same_grads(grads, eager_grads)


def test_backends_agree_on_sliding_window_layers():
    # Layer 1 attends to a window of 4 keys: the recompute must use the layer's own mask.
    model = tiny_qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    ids, mask = padded_batch(3)
    sup = supervision_for(mask, 3)
    eager, eager_masses, eager_grads = cat_step(model, "eager", ids, mask, sup)
    recomputed, masses, grads = cat_step(model, "recompute", ids, mask, sup)
    torch.testing.assert_close(masses.mass["cause"], eager_masses.mass["cause"], atol=1e-6, rtol=1e-5)
    assert recomputed.loss.item() == pytest.approx(eager.loss.item(), abs=1e-5)
    assert_same_grads(grads, eager_grads)


def test_recompute_sees_the_probabilities_before_attention_dropout():
    # GPT-2 drops out attention probabilities in train mode; the recompute backend reports the
    # probabilities themselves (their expectation under dropout), the same as in eval mode. Only
    # the first layer is compared: dropout there changes what later layers receive.
    model = tiny_gpt2(attn_pdrop=0.5)
    prepare_model_for_cat(model, "recompute")
    ids, mask = padded_batch(12)
    sup = supervision_for(mask, 12)
    found, logits = {}, {}
    for training in (True, False):
        model.train(training)
        with torch.no_grad(), capture_row_attention(model, sup, layers=[0]) as cap:
            out = model(input_ids=ids, attention_mask=mask)
            found[training], logits[training] = cap.masses(out, mask), out.logits
    assert not torch.allclose(logits[True], logits[False])  # dropout was active in train mode
    torch.testing.assert_close(found[True].mass["cause"], found[False].mass["cause"])


def test_cat_sdpa_outside_a_capture_is_sdpa():
    sdpa = tiny_llama()
    cat = copy.deepcopy(sdpa)
    prepare_model_for_cat(cat, "recompute")
    assert cat.config._attn_implementation == CAT_ATTENTION
    ids, mask = padded_batch(4, left=True)
    with torch.no_grad():
        expected = sdpa(input_ids=ids, attention_mask=mask).logits
        got = cat(input_ids=ids, attention_mask=mask).logits
        unmasked = cat(input_ids=ids).logits
    assert torch.equal(got, expected)
    # The padding mask reaches the custom function (it would be dropped without a registered mask builder).
    assert not torch.allclose(unmasked[1], expected[1])
    gen = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(cat.generate(ids, **gen), sdpa.generate(ids, **gen))


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_recompute_never_builds_a_dense_attention_tensor():
    model = tiny_llama(num_attention_heads=4, num_key_value_heads=1)
    prepare_model_for_cat(model, "recompute")
    ids, mask = padded_batch(5)
    sup = supervision_for(mask, 5)
    with capture_row_attention(model, sup) as cap:
        out = model(input_ids=ids, attention_mask=mask)
        recorder = _Recorder()
        with recorder:
            masses = cap.masses(out, mask)
            reattention_loss(*masses.row_statistics(), alpha=2.0, loss_type="div")
    dense = B * model.config.num_attention_heads * T * T
    assert 0 < recorder.largest < dense // 2


@pytest.mark.parametrize("backend", ["recompute", "eager"])
@pytest.mark.parametrize("backward_inside", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(backend, backward_inside):
    model = tiny_llama().train()
    ids, mask = padded_batch(6)
    sup = supervision_for(mask, 6)
    plain, _, plain_grads = cat_step(model, backend, ids, mask, sup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed, _, grads = cat_step(model, backend, ids, mask, sup, backward_inside=backward_inside)
    assert checkpointed.loss.item() == pytest.approx(plain.loss.item(), abs=1e-6)
    assert_same_grads(grads, plain_grads, atol=1e-6)


def test_reentrant_checkpointing_is_refused():
    model = tiny_llama().train()
    prepare_model_for_cat(model, "recompute")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    ids, mask = padded_batch(0)
    with pytest.raises(CATAttentionError, match="use_reentrant"):
        with capture_row_attention(model, supervision_for(mask)):
            pass


def test_lora_wrapped_model():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                           lora_dropout=0.0, init_lora_weights=False))
    ids, mask = padded_batch(7)
    sup = supervision_for(mask, 7)
    eager, _, eager_grads = cat_step(lora, "eager", ids, mask, sup)
    recomputed, _, grads = cat_step(lora, "recompute", ids, mask, sup)
    assert base.config._attn_implementation == CAT_ATTENTION
    assert all("lora_" in name for name in grads)
    assert recomputed.loss.item() == pytest.approx(eager.loss.item(), abs=1e-5)
    assert_same_grads(grads, eager_grads)


def test_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    ids, mask = padded_batch(8)
    sup = supervision_for(mask, 8)
    reference = tiny_llama().train()
    _, _, expected = cat_step(reference, "recompute", ids, mask, sup)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for enter_with_wrapper in (True, False):
            model = tiny_llama().train()
            ddp = DistributedDataParallel(model)
            prepare_model_for_cat(ddp, "recompute")
            with capture_row_attention(ddp if enter_with_wrapper else model, sup) as cap:
                out = ddp(input_ids=ids, attention_mask=mask, labels=lm_labels(ids, mask))
                masses = cap.masses(out, mask)
                loss = out.loss + reattention_loss(*masses.row_statistics(), alpha=2.0, loss_type="div").loss
            loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters()}
            assert_same_grads(grads, expected)
    finally:
        dist.destroy_process_group()


def test_masses_are_fp32_under_bf16_autocast():
    model = tiny_llama()
    ids, mask = padded_batch(9)
    sup = supervision_for(mask, 9)
    reference, _, _ = cat_step(model, "recompute", ids, mask, sup)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with capture_row_attention(model, sup) as cap:
            out = model(input_ids=ids, attention_mask=mask)
            masses = cap.masses(out, mask)
            probs = cap.row_probabilities(out)
            result = reattention_loss(*masses.row_statistics(), alpha=2.0, loss_type="div")
    assert probs.dtype == torch.float32 and masses.mass["cause"].dtype == torch.float32
    assert result.loss.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert result.loss.item() == pytest.approx(reference.loss.item(), abs=2e-2)


def test_batch_without_supervised_rows():
    model = tiny_llama()
    prepare_model_for_cat(model, "recompute")
    ids, mask = padded_batch(0)
    sup = RowSupervision(torch.zeros(0, 2, dtype=torch.long), {"cause": torch.zeros(0, 2, dtype=torch.long)})
    with capture_row_attention(model, sup) as cap:
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        masses = cap.masses(out, mask)
    assert masses.mass["cause"].shape == (2, 0, model.config.num_attention_heads)
    result = reattention_loss(*masses.row_statistics(), alpha=2.0, loss_type="div")
    assert result.loss.item() == 0.0
    (out.loss + result.loss).backward()


def test_layer_selection():
    model = tiny_llama()
    prepare_model_for_cat(model, "recompute")
    ids, mask = padded_batch(10)
    sup = supervision_for(mask, 10)
    found = {}
    for layers in ([-1], [1], None):
        with torch.no_grad(), capture_row_attention(model, sup, layers=layers) as cap:
            out = model(input_ids=ids, attention_mask=mask)
            found[str(layers)] = cap.masses(out, mask)
    assert found["[-1]"].layers == (1,) and found["None"].layers == (0, 1)
    assert torch.equal(found["[-1]"].mass["cause"], found["[1]"].mass["cause"])
    assert torch.equal(found["None"].mass["cause"][1:], found["[1]"].mass["cause"])
    assert resolve_layers([0, -2, 1], 2) == (0, 1)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([2], 2)


def test_clear_errors():
    model = tiny_llama()  # still on plain SDPA
    ids, mask = padded_batch(0)
    sup = supervision_for(mask)
    with pytest.raises(CATAttentionError, match="prepare_model_for_cat"):
        with capture_row_attention(model, sup):
            pass
    with pytest.raises(ValueError, match="backend"):
        prepare_model_for_cat(model, "flash")

    prepare_model_for_cat(model, "recompute")
    with capture_row_attention(model, sup) as cap:
        with pytest.raises(CATAttentionError, match="did not pass layers"):
            cap.masses(None, mask)
        model(input_ids=ids, attention_mask=mask)
        with pytest.raises(CATAttentionError, match="ran twice"):
            model(input_ids=ids, attention_mask=mask)
    with pytest.raises(CATAttentionError, match="inside the capture_row_attention block"):
        cap.masses(None, mask)
    assert not any(hasattr(m, "_cattune_row_capture") for m in model.modules())

    prepare_model_for_cat(model, "eager")
    with capture_row_attention(model, sup, backend="eager") as cap:
        out = model(input_ids=ids, attention_mask=mask)  # forgot **cap.forward_kwargs
        with pytest.raises(CATAttentionError, match=r"LlamaForCausalLM returned 0 attention maps.*'recompute'"):
            cap.masses(out, mask)


def test_model_without_attention_interface_names_the_model_and_the_option():
    from transformers import LlamaForCausalLM

    class HandRolledLlama(LlamaForCausalLM):
        _supports_attention_backend = False

    model = HandRolledLlama(tiny_llama().config)
    with pytest.raises(CATAttentionError, match=r"HandRolledLlama.*attention_backend='eager'"):
        prepare_model_for_cat(model, "recompute")


def test_supervision_from_row_columns():
    sup = RowSupervision.from_row_columns([{5: (1, 2), 3: (0,)}, {}, {7: (4, 4, 6)}],
                                          {"spurious": [{3: (2,)}, {}, {7: (1,)}]})
    assert sup.rows.tolist() == [[0, 3], [0, 5], [2, 7]]
    assert sup.column_sets["cause"].tolist() == [[0, 0], [1, 1], [1, 2], [2, 4], [2, 6]]
    assert sup.column_sets["spurious"].tolist() == [[0, 2], [2, 1]]
    with pytest.raises(ValueError, match="no causes"):
        RowSupervision.from_row_columns([{5: (1,)}], {"spurious": [{4: (0,)}]})
    with pytest.raises(ValueError, match="'cause'"):
        RowSupervision(torch.zeros(0, 2), {"spurious": torch.zeros(0, 2)})
