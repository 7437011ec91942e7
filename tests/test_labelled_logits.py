"""The LM loss computed on the labelled positions only equals the model's own causal-LM loss."""

import pytest
import torch
from transformers import TrainingArguments

from cattune.collator import CATCollator, build_examples
from cattune.data.records import parse_record
from cattune.data.stg import generate_splits
from cattune.trainer import LabelledLogitsTrainer
from tiny_models import TINY_MODELS, tiny_tokenizer


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_same_loss_and_gradients_as_the_full_lm_head(kind, tmp_path):
    tok = tiny_tokenizer()
    records = [parse_record(obj) for obj in generate_splits(4, 6, 1)["train"]]
    batch = CATCollator(tok.pad_token_id)(build_examples(records, tok, max_length=96).examples)
    batch = {k: v for k, v in batch.items() if not k.startswith("cat_")}
    assert int((batch["attention_mask"] == 0).sum()) > 0  # padded: rows of different lengths
    model = TINY_MODELS[kind]().float()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = LabelledLogitsTrainer(model=model, args=args)

    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    reference = model(**batch).loss  # the model's own loss over every position's logits
    ref_grads = torch.autograd.grad(reference, [p for p in model.parameters() if p.requires_grad])
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert outputs["logits"].shape[0] == n_labelled < batch["input_ids"].numel() // 4
