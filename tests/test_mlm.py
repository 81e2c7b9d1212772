"""Masking (BERT 80/10/10, TLM concatenation) and the mlm / tlm objectives."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from xvl.data.masking import IGNORE_INDEX, add_mlm_inputs, build_tlm_inputs, mask_tokens
from xvl.objectives.base import build_objective
from conftest import tiny_model_config

SPECIALS = [0, 1, 2, 3, 4]  # <s> <pad> </s> <unk> <mask>


class FakeTokenizer:
    """Just what mask_tokens needs: 300 ids, XLM-R special ids."""

    mask_token_id, pad_token_id, all_special_ids = 4, 1, [0, 2, 3, 1, 4]

    def __len__(self):
        return 300


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def random_batch(bsz=256, length=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (bsz, length), generator=g)
    lengths = torch.randint(4, length + 1, (bsz,), generator=g)
    am = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(bsz), lengths - 1] = 2
    ids[am == 0] = 1
    ids[:, 5] = 3  # an <unk> in every row: special, never selected
    return ids, am


# --------------------------------------------------------------------------------- mask_tokens
def test_mask_tokens_rates_and_split():
    ids, am = random_batch()
    masked, labels = mask_tokens(ids, am, FakeTokenizer(), 0.15, generator=torch.Generator().manual_seed(1))
    maskable = (am == 1) & ~torch.isin(ids, torch.tensor(SPECIALS))
    sel = labels != IGNORE_INDEX
    # labels: the original id exactly at the selected positions, -100 elsewhere
    assert torch.equal(labels[sel], ids[sel]) and (labels[~sel] == IGNORE_INDEX).all()
    assert not (sel & ~maskable).any(), "a special token or padding was selected"
    assert torch.equal(masked[~sel], ids[~sel]), "unselected positions must stay unchanged"
    rate = sel.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) < 0.01
    n = sel.sum().item()
    to_mask = (masked[sel] == 4).float().sum().item() / n
    unchanged = (masked[sel] == ids[sel]).float().sum().item() / n
    replaced = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02
    # random replacements come from the non-special vocabulary
    repl = masked[sel][(masked[sel] != 4) & (masked[sel] != ids[sel])]
    assert repl.numel() > 0 and not torch.isin(repl, torch.tensor(SPECIALS)).any()
    assert int(repl.max()) < 300


def test_mask_tokens_is_deterministic_with_a_generator():
    ids, am = random_batch(32, 40)
    tok = FakeTokenizer()
    a = mask_tokens(ids, am, tok, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, am, tok, generator=torch.Generator().manual_seed(7))
    c = mask_tokens(ids, am, tok, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, random_batch(32, 40)[0]), "inputs must not be modified"


def test_mask_tokens_selects_at_least_one_per_row():
    ids = torch.tensor([[0, 7, 2, 1, 1], [0, 8, 9, 10, 2], [0, 2, 1, 1, 1]])
    am = (ids != 1).long()
    for seed in range(20):
        _, labels = mask_tokens(ids, am, FakeTokenizer(), 0.01, generator=torch.Generator().manual_seed(seed))
        n = (labels != IGNORE_INDEX).sum(1)
        assert n[0] == 1 and n[1] >= 1 and n[2] == 0  # row 2 has only specials
        assert labels[0, 1] == 7


# ---------------------------------------------------------------------------- build_tlm_inputs
def _tlm_fixture():
    ids = torch.tensor([[0, 10, 11, 2], [0, 12, 2, 1]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    pair = torch.tensor([[0, 20, 2, 1, 1], [0, 21, 22, 23, 2]])
    pm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return ids, am, pair, pm


def test_build_tlm_inputs_exact():
    ids, am, pair, pm = _tlm_fixture()
    out = build_tlm_inputs(ids, am, pair, pm, lang=torch.tensor([0, 1]), pair_lang=torch.tensor([1, 2]))
    assert out["mlm_input_ids"].tolist() == [[0, 10, 11, 2, 0, 20, 2, 1], [0, 12, 2, 0, 21, 22, 23, 2]]
    assert out["mlm_attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8]
    assert out["mlm_position_ids"].tolist() == [[2, 3, 4, 5, 2, 3, 4, 1], [2, 3, 4, 2, 3, 4, 5, 6]]
    assert out["mlm_token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0], [1, 1, 1, 2, 2, 2, 2, 2]]
    assert out["segment"].tolist() == [[False] * 4 + [True] * 3 + [False], [False] * 3 + [True] * 5]

    flat = build_tlm_inputs(ids, am, pair, pm, restart_positions=False)
    assert flat["mlm_position_ids"].tolist() == [[2, 3, 4, 5, 6, 7, 8, 1], list(range(2, 10))]
    assert "mlm_token_type_ids" not in flat
    assert torch.equal(flat["mlm_input_ids"], out["mlm_input_ids"])
    with pytest.raises(ValueError, match="both"):
        build_tlm_inputs(ids, am, pair, pm, lang=torch.tensor([0, 1]))


def test_add_mlm_inputs_modes_and_checks(tiny_model):
    ids, am, pair, pm = _tlm_fixture()
    tok = tiny_model.tokenizer
    batch = {"input_ids": ids, "attention_mask": am, "lang": torch.tensor([0, 1]),
             "pair_input_ids": pair, "pair_attention_mask": pm, "pair_lang": torch.tensor([1, 2])}
    m = add_mlm_inputs(dict(batch), tok, mode="mmlm", generator=torch.Generator().manual_seed(0))
    assert torch.equal(m["mlm_attention_mask"], am) and "mlm_position_ids" not in m
    assert torch.equal(m["mlm_lang"], batch["lang"])
    t = add_mlm_inputs(dict(batch), tok, mode="tlm", generator=torch.Generator().manual_seed(0))
    assert t["mlm_input_ids"].shape == (2, 8) and t["mlm_segment"].sum() == 8
    assert "mlm_token_type_ids" not in t
    sel = t["mlm_labels"] != IGNORE_INDEX
    assert sel.any(1).all() and not torch.isin(t["mlm_labels"][sel], torch.tensor(SPECIALS)).any()
    # language embeddings need type_vocab_size >= #languages: the tiny model has 1
    cfg = tiny_model.text.model.config
    with pytest.raises(ValueError, match="type_vocab_size"):
        add_mlm_inputs(dict(batch), tok, mode="tlm", language_embeddings=True, text_config=cfg)
    with pytest.raises(ValueError, match="type_vocab_size"):
        build_objective("tlm", {"language_embeddings": True}, model=tiny_model)
    with pytest.raises(ValueError, match="pair_input_ids"):
        add_mlm_inputs({"input_ids": ids, "attention_mask": am}, tok, mode="tlm")
    # without restarting, the concatenation runs past max_position_embeddings (18) -> clear error
    long = torch.cat([ids, torch.full((2, 8), 50)], 1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        add_mlm_inputs({"input_ids": long, "attention_mask": torch.ones_like(long), "pair_input_ids": long,
                        "pair_attention_mask": torch.ones_like(long)}, tok, mode="tlm",
                       restart_positions=False, text_config=cfg)


def test_language_embeddings_reach_a_model_with_enough_token_types(tiny_tokenizer):
    from xvl.models.model import XVLModel

    cfg = tiny_model_config()
    cfg.text.config = dict(cfg.text.config, type_vocab_size=len(cfg.languages))
    torch.manual_seed(0)
    model = XVLModel(cfg, tiny_tokenizer)
    obj = build_objective("tlm", {"language_embeddings": True}, model=model)
    batch = {"input_ids": torch.tensor([[0, 10, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "lang": torch.tensor([0]), "pair_input_ids": torch.tensor([[0, 11, 2]]),
             "pair_attention_mask": torch.ones(1, 3, dtype=torch.long), "pair_lang": torch.tensor([5])}
    obj.add_inputs(batch, tiny_tokenizer, generator=torch.Generator().manual_seed(0))
    assert batch["mlm_token_type_ids"].tolist() == [[0, 0, 0, 5, 5, 5]]
    out = obj(model(batch), batch)
    assert torch.isfinite(out["tlm_loss"])


def test_flat_positions_equal_the_models_default(tiny_model):
    ids, am, pair, pm = _tlm_fixture()
    t = build_tlm_inputs(ids + 10, am, pair + 10, pm, restart_positions=False)
    t["mlm_input_ids"][t["mlm_attention_mask"] == 0] = 1
    with torch.no_grad():
        a = tiny_model({"mlm_input_ids": t["mlm_input_ids"], "mlm_attention_mask": t["mlm_attention_mask"],
                        "mlm_position_ids": t["mlm_position_ids"]})["mlm_tokens"]
        b = tiny_model({"mlm_input_ids": t["mlm_input_ids"], "mlm_attention_mask": t["mlm_attention_mask"]})["mlm_tokens"]
    assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------- the objective
def _mlm_batch(model, seed=0):
    tok = model.tokenizer
    enc = tok(["one red circle", "zwei blau Quadrat", "trois vert"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return add_mlm_inputs(batch, tok, mlm_probability=0.3, generator=torch.Generator().manual_seed(seed))


def test_mlm_loss_matches_reference_and_reaches_the_text_tower(tiny_model):
    model = tiny_model.train()
    obj = build_objective("mlm", {}, model=model)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial head
        obj.bias.normal_()
    batch = _mlm_batch(model)
    outputs = model(batch)
    got = obj(outputs, batch)
    assert set(got) == {"mlm_loss", "mlm_acc"}

    h = outputs["mlm_tokens"]
    emb = model.text.model.get_input_embeddings().weight
    x = F.gelu(h @ obj.head.dense.weight.t() + obj.head.dense.bias)
    x = F.layer_norm(x, (x.shape[-1],), obj.head.layer_norm.weight, obj.head.layer_norm.bias,
                     obj.head.layer_norm.eps)
    logits = x @ emb.t() + obj.bias
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["mlm_labels"].reshape(-1), ignore_index=-100)
    assert got["mlm_loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    sel = batch["mlm_labels"] != -100
    acc = (logits.argmax(-1)[sel] == batch["mlm_labels"][sel]).float().mean()
    assert float(got["mlm_acc"]) == pytest.approx(float(acc))

    got["mlm_loss"].backward()
    layer = model.text.model.encoder.layer[0].attention.self.query.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    assert obj.head.dense.weight.grad.abs().sum() > 0


def test_tied_decoder_shares_the_input_embeddings(tiny_model):
    emb = tiny_model.text.model.get_input_embeddings().weight
    tied = build_objective("mlm", {}, model=tiny_model)
    assert tied.decoder_weight is emb and tied.decoder_weight.data_ptr() == emb.data_ptr()
    # owned by the model only: not duplicated in the objective's parameters / state dict
    assert all(p is not emb for p in tied.parameters())
    assert set(tied.state_dict()) == {"bias", "head.dense.weight", "head.dense.bias",
                                      "head.layer_norm.weight", "head.layer_norm.bias"}
    untied = build_objective("mlm", {"tie_embeddings": False}, model=tiny_model)
    assert untied.decoder_weight.data_ptr() != emb.data_ptr()
    assert "decoder.weight" in untied.state_dict()


def test_registry_names_and_validation(tiny_model):
    tlm = build_objective("tlm", {}, model=tiny_model)
    assert tlm.name == "tlm" and tlm.args.mode == "tlm"
    assert build_objective("mlm", {}).args.mode == "mmlm"  # model-less: config validation only
    with pytest.raises(Exception, match="tie_embedings|tie_embeddings"):
        build_objective("mlm", {"tie_embedings": False})
    with pytest.raises(ValueError, match="mlm_probability"):
        build_objective("mlm", {"mlm_probability": 0.0})
    no_model = build_objective("mlm", {})
    with pytest.raises(RuntimeError, match="without a model"):
        no_model.logits(torch.zeros(1, 32))
    batch = _mlm_batch(tiny_model)
    out = tlm(tiny_model(batch), batch)
    assert set(out) == {"tlm_loss", "tlm_acc"}


# ------------------------------------------------------------------------------ loss decreases
NUMS = {"en": ["one", "two", "three"], "de": ["eins", "zwei", "drei"]}
COLORS = {"en": ["red", "blue", "green"], "de": ["rot", "blau", "grün"]}
SHAPES = {"en": ["circle", "square"], "de": ["Kreis", "Quadrat"]}


def parallel_fixture(tok):
    """18 en-de sentence pairs; every word is one token, its translation is determined."""
    en, de = [], []
    for n, c, s in itertools.product(range(3), range(3), range(2)):
        en.append(f"{NUMS['en'][n]} {COLORS['en'][c]} {SHAPES['en'][s]}")
        de.append(f"{NUMS['de'][n]} {COLORS['de'][c]} {SHAPES['de'][s]}")
    a, b = tok(en, padding=True, return_tensors="pt"), tok(de, padding=True, return_tensors="pt")
    return {"input_ids": a["input_ids"], "attention_mask": a["attention_mask"], "lang": torch.zeros(len(en), dtype=torch.long),
            "pair_input_ids": b["input_ids"], "pair_attention_mask": b["attention_mask"],
            "pair_lang": torch.ones(len(de), dtype=torch.long)}


def _train(model, obj, data, steps, seed=0, lr=1e-2):
    params = list(model.text.parameters()) + list(obj.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        batch = obj.add_inputs(dict(data), model.tokenizer, generator=g)
        loss = obj(model(batch), batch)[f"{obj.name}_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["mlm", "tlm"])
def test_loss_decreases(tiny_model, name):
    torch.manual_seed(0)
    obj = build_objective(name, {"mlm_probability": 0.3}, model=tiny_model)
    data = parallel_fixture(tiny_model.tokenizer)
    losses = _train(tiny_model, obj, data, steps=60)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (name, first, last)


def test_tlm_lets_a_masked_word_see_the_translation(tiny_model):
    """In a TLM sequence the state at a masked English word depends on the German sentence (so
    the prediction can use it); with restarted positions the word's position is as if alone."""
    tok = tiny_model.tokenizer
    a = tok(["one red circle"], return_tensors="pt")
    states = []
    for german in ("eins rot Kreis", "eins blau Kreis"):
        b = tok([german], return_tensors="pt")
        t = build_tlm_inputs(a["input_ids"], a["attention_mask"], b["input_ids"], b["attention_mask"])
        t["mlm_input_ids"][0, 2] = tok.mask_token_id
        assert t["mlm_position_ids"][0, 2] == t["mlm_position_ids"][0, 7] == 4  # "red" / "rot"
        with torch.no_grad():
            states.append(tiny_model(t)["mlm_tokens"][0, 2])
    assert not torch.allclose(states[0], states[1], atol=1e-4)
