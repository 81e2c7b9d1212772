"""Span masking (xvl.data.masking.mask_spans) and CCLM's conditional MLM objective (cmlm)."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from xvl.config import FusionConfig
from xvl.data.masking import IGNORE_INDEX, add_mlm_inputs, mask_spans, span_selection
from xvl.objectives.base import build_objective
from xvl.objectives.conditional_mlm import ConditionalMLM  # noqa: F401  (registers "cmlm")
from conftest import tiny_model_config

SPECIALS = [0, 1, 2, 3, 4]  # <s> <pad> </s> <unk> <mask>


class FakeTokenizer:
    """What the maskers need: 300 ids, XLM-R special ids."""

    mask_token_id, pad_token_id, all_special_ids = 4, 1, [0, 2, 3, 1, 4]

    def __len__(self):
        return 300


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def random_batch(bsz=256, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (bsz, length), generator=g)
    lengths = torch.randint(8, length + 1, (bsz,), generator=g)
    am = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(bsz), lengths - 1] = 2
    ids[am == 0] = 1
    ids[:, 5] = 3  # an <unk> in every row: special, never selected, splits the row in two
    return ids, am


def runs(row):
    """Lengths of the maximal runs of True in a 1-D bool list."""
    out, n = [], 0
    for x in list(row) + [False]:
        if x:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


# ----------------------------------------------------------------------------------- mask_spans
@pytest.mark.parametrize("span_probability", [0.0, 0.5, 1.0])
def test_mask_spans_rate_labels_and_specials(span_probability):
    ids, am = random_batch()
    masked, labels = mask_spans(ids, am, FakeTokenizer(), 0.4, span_probability, [2, 3],
                                generator=torch.Generator().manual_seed(1))
    maskable = (am == 1) & ~torch.isin(ids, torch.tensor(SPECIALS))
    sel = labels != IGNORE_INDEX
    assert torch.equal(labels[sel], ids[sel]) and (labels[~sel] == IGNORE_INDEX).all()
    assert not (sel & ~maskable).any(), "a special token or padding was masked"
    assert torch.equal(masked[~sel], ids[~sel])
    rate = sel.sum().item() / maskable.sum().item()
    assert abs(rate - 0.4) < 0.01, rate
    # per row: the budget floor(0.4 n + u) is met exactly
    n, k = maskable.sum(1).double(), sel.sum(1).double()
    assert ((k >= torch.floor(0.4 * n)) & (k <= torch.ceil(0.4 * n))).all()


def test_mask_spans_80_10_10():
    ids, am = random_batch(512)
    masked, labels = mask_spans(ids, am, FakeTokenizer(), 0.4, 1.0, generator=torch.Generator().manual_seed(2))
    sel = labels != IGNORE_INDEX
    n = sel.sum().item()
    to_mask = (masked[sel] == 4).sum().item() / n
    unchanged = (masked[sel] == ids[sel]).sum().item() / n
    replaced = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015 and abs(replaced - 0.1) < 0.015
    repl = masked[sel][(masked[sel] != 4) & (masked[sel] != ids[sel])]
    assert not torch.isin(repl, torch.tensor(SPECIALS)).any() and int(repl.max()) < 300


def test_spans_are_contiguous():
    """With span_probability=1 every span has 2-3 tokens, cut short only by the row's budget (once
    per row) or a non-maskable neighbour (two maskable stretches per row here): at most 3 isolated
    masked tokens per row. Token-level masking at the same rate has many more."""
    ids, am = random_batch()
    tok = FakeTokenizer()
    _, lab_span = mask_spans(ids, am, tok, 0.4, 1.0, [2, 3], generator=torch.Generator().manual_seed(3))
    _, lab_tok = mask_spans(ids, am, tok, 0.4, 0.0, generator=torch.Generator().manual_seed(3))
    span_runs = [runs(r) for r in (lab_span != IGNORE_INDEX).tolist()]
    tok_runs = [runs(r) for r in (lab_tok != IGNORE_INDEX).tolist()]
    assert max(r.count(1) for r in span_runs) <= 3
    assert sum(r.count(1) for r in tok_runs) > 5 * sum(r.count(1) for r in span_runs)
    mean_span = sum(map(sum, span_runs)) / sum(map(len, span_runs))
    mean_tok = sum(map(sum, tok_runs)) / sum(map(len, tok_runs))
    assert mean_span > 2.5 and mean_tok < 1.9, (mean_span, mean_tok)


def test_one_span_on_a_hand_made_row():
    # 12 maskable tokens, budget exactly 0.25 * 12 = 3, spans of exactly 3: one contiguous run of 3
    # unless the span started at position 10 or 11 and was cut by the row end (2 of 12 starts)
    maskable = torch.ones(1, 12, dtype=torch.bool)
    whole = 0
    for seed in range(60):
        sel = span_selection(maskable, 0.25, 1.0, [3], generator=torch.Generator().manual_seed(seed))
        assert sel.sum() == 3
        if runs(sel[0].tolist()) == [3]:
            whole += 1
        else:
            assert sel[0, 11], sel
    assert whole >= 40
    # token-level masking at the same budget rarely forms one run of 3
    singles = sum(runs(span_selection(maskable, 0.25, 0.0, generator=torch.Generator().manual_seed(s))[0].tolist())
                  == [3] for s in range(60))
    assert singles < 15


def test_mask_spans_reproducible_and_at_least_one():
    ids, am = random_batch(16, 30)
    tok = FakeTokenizer()
    a = mask_spans(ids, am, tok, 0.4, 0.5, generator=torch.Generator().manual_seed(7))
    b = mask_spans(ids, am, tok, 0.4, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    tiny = torch.tensor([[0, 7, 2, 1], [0, 2, 1, 1]])
    for seed in range(10):
        _, lab = mask_spans(tiny, (tiny != 1).long(), tok, 0.05, 1.0, generator=torch.Generator().manual_seed(seed))
        assert (lab != IGNORE_INDEX).sum(1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="span_lengths"):
        mask_spans(ids, am, tok, 0.4, 0.5, span_lengths=[])
    with pytest.raises(ValueError, match="mask_probability"):
        mask_spans(ids, am, tok, 0.0)


# ------------------------------------------------------------------------------------ objective
@pytest.fixture
def fused_model(tiny_tokenizer):
    from xvl.models.model import XVLModel

    torch.manual_seed(0)
    return XVLModel(tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0)), tiny_tokenizer).eval()


def caption_batch(model, captions, translations, pair_kind=None, seed=0):
    tok = model.tokenizer
    a = tok(captions, padding=True, return_tensors="pt")
    b = tok(translations, padding=True, return_tensors="pt")
    n = len(captions)
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "input_ids": a["input_ids"],
            "attention_mask": a["attention_mask"], "lang": torch.zeros(n, dtype=torch.long),
            "pair_input_ids": b["input_ids"], "pair_attention_mask": b["attention_mask"],
            "pair_lang": torch.ones(n, dtype=torch.long),
            "pair_kind": torch.tensor(pair_kind if pair_kind is not None else [2] * n)}


EN = ["one red circle", "two blue square", "three green circle"]
DE = ["eins rot Kreis", "zwei blau Quadrat", "drei grün Kreis"]


def reference_loss(model, batch, condition):
    """Plain CCLM conditional MLM from the model's parts."""
    text = model.text(batch["cmlm_input_ids"], batch["attention_mask"], lang=batch["lang"])["text_tokens"]
    labels = batch["cmlm_labels"].clone()
    if condition == "image":
        fused = model.fuse(text, batch["attention_mask"], model.vision(batch["image"])["image_tokens"])
    else:
        pair = model.text(batch["pair_input_ids"], batch["pair_attention_mask"], lang=batch["pair_lang"])["text_tokens"]
        fused = model.fuse(text, batch["attention_mask"], pair, batch["pair_attention_mask"], context_type="text")
        labels[batch["pair_kind"] == 0] = -100
    logits = model.fusion_mlm_head(fused)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("condition", ["image", "translation"])
def test_loss_matches_reference(fused_model, condition):
    model = fused_model
    with torch.no_grad():
        model.fusion_mlm_head.bias.normal_()  # a non-trivial head
    obj = build_objective("cmlm", {"condition": condition, "span_probability": 0.5}, model=model)
    batch = caption_batch(model, EN, DE, pair_kind=[2, 0, 1])
    obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    got = obj(model(batch), batch)
    assert set(got) == {"cmlm_loss", "cmlm_acc"}
    ref = reference_loss(model, batch, condition)
    assert got["cmlm_loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    if condition == "translation":  # the pair_kind 0 row does not count
        assert ref.item() != pytest.approx(reference_loss(model, dict(batch, pair_kind=torch.tensor([2, 2, 1])),
                                                          condition).item(), rel=1e-4)


def test_auto_condition_picks_the_view(fused_model):
    model = fused_model
    batch = caption_batch(model, EN, DE)
    build_objective("cmlm", {}, model=model).input_preparer()(batch, model.tokenizer,
                                                               generator=torch.Generator().manual_seed(0))
    auto = build_objective("cmlm", {"condition": "auto"}, model=model)
    with torch.no_grad():
        on_image = auto(model(batch), batch)["cmlm_loss"]
        text_only = {k: v for k, v in batch.items() if k != "image"}  # a parallel-text batch
        on_text = auto(model(text_only), text_only)["cmlm_loss"]
    assert on_image.item() == pytest.approx(reference_loss(model, batch, "image").item(), rel=1e-5)
    assert on_text.item() == pytest.approx(reference_loss(model, batch, "translation").item(), rel=1e-5)
    image_only = build_objective("cmlm", {}, model=model)
    assert auto.applies({}, text_only) and not image_only.applies({}, text_only)
    assert not auto.applies({}, {k: v for k, v in text_only.items() if not k.startswith("pair_")})


def test_no_scored_rows_gives_a_zero_loss_with_a_graph(fused_model):
    model = fused_model
    obj = build_objective("cmlm", {"condition": "translation"}, model=model)
    batch = caption_batch(model, EN[:2], DE[:2], pair_kind=[0, 0])
    obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    loss = obj(model(batch), batch)["cmlm_loss"]
    assert loss.item() == 0.0 and loss.requires_grad


def _fixed_masked_color(model, captions):
    """The colour word (token 2) of each caption replaced by <mask>; only it is scored."""
    batch = caption_batch(model, captions, [DE[0]] * len(captions))
    ids = batch["input_ids"]
    batch["cmlm_input_ids"] = ids.clone()
    batch["cmlm_input_ids"][:, 2] = model.tokenizer.mask_token_id
    batch["cmlm_labels"] = torch.full_like(ids, -100)
    batch["cmlm_labels"][:, 2] = ids[:, 2]
    return batch


def _train(model, obj, batch, steps=30, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses, accs = [], []
    for _ in range(steps):
        out = obj(model(batch), batch)
        opt.zero_grad()
        out["cmlm_loss"].backward()
        opt.step()
        losses.append(out["cmlm_loss"].item())
        accs.append(out["cmlm_acc"].item())
    return losses, accs


def test_image_conditioning_is_used(fused_model):
    """The masked colour is the only difference between the captions and the images are the only
    other difference between the rows: only a model that reads the image gets both right."""
    model = fused_model
    obj = build_objective("cmlm", {}, model=model)
    batch = _fixed_masked_color(model, ["one red circle", "one blue circle"])
    assert torch.equal(batch["cmlm_input_ids"][0], batch["cmlm_input_ids"][1])
    out = obj(model(batch), batch)
    outputs = model(batch)
    outputs["image_tokens"].retain_grad()
    obj(outputs, batch)["cmlm_loss"].backward()
    assert outputs["image_tokens"].grad.abs().sum() > 0, "no gradient reaches the image tokens"
    model.zero_grad()
    torch.manual_seed(0)
    losses, accs = _train(model, obj, batch, steps=40)
    assert losses[-1] < 0.3 * losses[0] and losses[-1] < 0.3, (out, losses[0], losses[-1])
    assert accs[-1] == 1.0


def test_translation_conditioning_is_used(fused_model):
    model = fused_model
    obj = build_objective("cmlm", {"condition": "translation"}, model=model)
    batch = _fixed_masked_color(model, ["one red circle", "one blue circle"])
    b = model.tokenizer(["eins rot Kreis", "eins blau Kreis"], padding=True, return_tensors="pt")
    batch.update(pair_input_ids=b["input_ids"], pair_attention_mask=b["attention_mask"])
    batch["image"] = torch.zeros_like(batch["image"])  # the image says nothing
    outputs = model(batch)
    outputs["pair_tokens"].retain_grad()
    obj(outputs, batch)["cmlm_loss"].backward()
    assert outputs["pair_tokens"].grad.abs().sum() > 0
    model.zero_grad()
    losses, accs = _train(model, obj, batch, steps=40)
    assert losses[-1] < 0.3 * losses[0] and losses[-1] < 0.3 and accs[-1] == 1.0, (losses[0], losses[-1])


def test_loss_decreases_with_span_masking(fused_model):
    model = fused_model
    obj = build_objective("cmlm", {"span_probability": 0.5}, model=model)
    batch = caption_batch(model, EN, DE)
    obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    losses, _ = _train(model, obj, batch, steps=30)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, (losses[0], losses[-1])


def test_preparer_writes_only_cmlm_keys_next_to_mlm(fused_model):
    model = fused_model
    obj = build_objective("cmlm", {"span_probability": 1.0}, model=model)
    prep = obj.input_preparer()
    prep = pickle.loads(pickle.dumps(prep))  # data-loader workers
    batch = caption_batch(model, EN, DE)
    before = {k: v.clone() for k, v in batch.items()}
    add_mlm_inputs(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    mlm = {k: v.clone() for k, v in batch.items() if k.startswith("mlm_")}
    prep(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    assert set(batch) - set(before) - set(mlm) == {"cmlm_input_ids", "cmlm_labels"}
    assert all(torch.equal(batch[k], v) for k, v in {**before, **mlm}.items())
    assert obj.prepares == "cmlm" and obj.needs_pairs is False
    assert build_objective("cmlm", {"condition": "translation"}, model=model).needs_pairs


def test_args_validation(tiny_model):
    with pytest.raises(ValueError, match="mask_probability"):
        build_objective("cmlm", {"mask_probability": 0.0})
    with pytest.raises(ValueError, match="span_probability"):
        build_objective("cmlm", {"span_probability": 1.5})
    with pytest.raises(ValueError, match="span_lengths"):
        build_objective("cmlm", {"span_lengths": [0, 2]})
    with pytest.raises(ValueError):
        build_objective("cmlm", {"condition": "caption"})
    with pytest.raises(ValueError, match="fusion"):
        build_objective("cmlm", {}, model=tiny_model)  # no fusion encoder


def test_max_rows_predicts_only_the_first_rows_masks(monkeypatch):
    """cmlm max_rows=N equals the plain loss computed on the batch cut to its first N rows."""
    import torch

    from xvl.config import FusionConfig
    from xvl.models.model import XVLModel
    from xvl.objectives.base import build_objective
    from xvl.data.tokenizer import train_tokenizer
    from tests.conftest import TINY_TEXTS, tiny_model_config

    tok = train_tokenizer(TINY_TEXTS, vocab_size=300, max_length=16)
    torch.manual_seed(0)
    model = XVLModel(tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0)), tok).eval()
    texts = TINY_TEXTS[:6]
    enc = model.tokenize(texts)
    batch = {"image": torch.randn(6, 3, 32, 32), **enc, "lang": torch.zeros(6, dtype=torch.long)}
    full = build_objective("cmlm", {}, model=model)
    cut = build_objective("cmlm", {"max_rows": 3}, model=model)
    full.input_preparer()(batch, tok, generator=torch.Generator().manual_seed(0))
    small = {k: v[:3] for k, v in batch.items()}
    expect = full(model(small), small)["cmlm_loss"]
    got = cut(model(batch), batch)["cmlm_loss"]
    assert torch.allclose(got, expect, atol=1e-6)
    assert not torch.allclose(full(model(batch), batch)["cmlm_loss"], expect)
