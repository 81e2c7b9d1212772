"""Co-masking (xvl.data.masking.co_mask_selection) and UC2's visual translation LM (vtlm)."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from xvl.align import Lexicon
from xvl.config import FusionConfig
from xvl.data.masking import IGNORE_INDEX, co_mask_selection
from xvl.objectives.base import build_objective
from xvl.objectives.vtlm import VTLM, lexicon_word_pairs  # noqa: F401  (registers "vtlm")
from conftest import tiny_model_config


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture
def fused_model(tiny_tokenizer):
    from xvl.models.model import XVLModel

    torch.manual_seed(0)
    return XVLModel(tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0)), tiny_tokenizer).eval()


@pytest.fixture
def lang_model(tiny_tokenizer):
    """A fused model whose token-type table holds every language (XLM's language embeddings)."""
    from xvl.models.model import XVLModel

    cfg = tiny_model_config(fusion=FusionConfig(layers=1, heads=2, dropout=0.0))
    cfg.text.config = dict(cfg.text.config, type_vocab_size=len(cfg.languages))
    torch.manual_seed(0)
    return XVLModel(cfg, tiny_tokenizer).eval()


@pytest.fixture
def lexicon_file(tmp_path):
    path = tmp_path / "lex.txt"
    path.write_text("# langs: en de\nred rot\nblue blau\n", encoding="utf-8")
    return str(path)


def pair_batch(model, captions, translations, langs=None, pair_kind=None, seed=0):
    tok = model.tokenizer
    a = tok(captions, padding=True, return_tensors="pt")
    b = tok(translations, padding=True, return_tensors="pt")
    n = len(captions)
    langs = langs or [("en", "de")] * n
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "input_ids": a["input_ids"],
            "attention_mask": a["attention_mask"], "pair_input_ids": b["input_ids"],
            "pair_attention_mask": b["attention_mask"],
            "lang": torch.tensor([model.lang_to_id[x] for x, _ in langs]),
            "pair_lang": torch.tensor([model.lang_to_id[y] for _, y in langs]),
            "pair_kind": torch.tensor(pair_kind if pair_kind is not None else [2] * n)}


# ------------------------------------------------------------------------------ word alignment
def test_lexicon_word_pairs_one_to_one_by_position():
    lex = Lexicon([("red", "rot"), ("ball", "Ball")])
    assert lexicon_word_pairs(["red", "ball", "red"], ["rot", "Ball", "rot"], lex) == [(0, 0), (1, 1), (2, 2)]
    assert lexicon_word_pairs(["the", "Red."], ["ein", "x", "rot"], lex) == [(1, 2)]
    assert lexicon_word_pairs(["blue"], ["rot"], lex) == []


# ----------------------------------------------------------------------------------- co-masking
def test_aligned_words_are_masked_together(fused_model, lexicon_file):
    """en 'one red circle' / de 'eins rot Kreis' with a lexicon red<->rot: with the whole budget on
    co-masking, red and rot are masked in every draw; specials and padding never are."""
    model = fused_model
    obj = build_objective("vtlm", {"lexicon": lexicon_file, "mask_probability": 0.34,
                                   "co_mask_probability": 1.0}, model=model)
    prep = obj.input_preparer()
    for seed in range(20):
        batch = pair_batch(model, ["one red circle", "two circle"], ["eins rot Kreis", "zwei Kreis"])
        prep(batch, model.tokenizer, generator=torch.Generator().manual_seed(seed))
        ids, lab, co = batch["vtlm_input_ids"], batch["vtlm_labels"], batch["vtlm_co_masked"]
        # row 0: <s> one red circle </s> <s> eins rot Kreis </s>  (red at 2, rot at 7)
        assert co[0].nonzero().flatten().tolist() == [2, 7]
        assert lab[0, 2] == batch["input_ids"][0, 2] and lab[0, 7] == batch["pair_input_ids"][0, 2]
        # no aligned words in row 1: nothing co-masked, but still at least one masked token
        assert not co[1].any() and (lab[1] != IGNORE_INDEX).any()
        # budget: 6 maskable tokens in row 0 -> floor(0.34 * 6 + u) in {2, 3}
        assert (lab[0] != IGNORE_INDEX).sum() in (2, 3)
        special = torch.isin(ids, torch.tensor([0, 1, 2])) | (batch["vtlm_attention_mask"] == 0)
        assert not ((lab != IGNORE_INDEX) & special).any(), "a special token or padding was masked"
        assert batch["vtlm_attention_mask"][1].tolist() == [1] * 8 + [0, 0]


def test_no_co_masking_without_the_share_or_the_languages(fused_model, lexicon_file):
    model = fused_model
    plain = build_objective("vtlm", {"lexicon": lexicon_file, "co_mask_probability": 0.0}, model=model)
    batch = pair_batch(model, ["one red circle"], ["eins rot Kreis"])
    plain.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    assert not batch["vtlm_co_masked"].any()
    full = build_objective("vtlm", {"lexicon": lexicon_file, "co_mask_probability": 1.0,
                                    "mask_probability": 0.34}, model=model).input_preparer()
    # the lexicon is used in both directions (de caption, en translation) ...
    batch = pair_batch(model, ["eins rot Kreis"], ["one red circle"], langs=[("de", "en")])
    full(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    assert batch["vtlm_co_masked"][0].nonzero().flatten().tolist() == [2, 7]
    # ... but not for a language pair it does not cover, nor for a row without a real pair
    batch = pair_batch(model, ["one red circle", "one red circle"], ["un rouge cercle", "eins rot Kreis"],
                       langs=[("en", "fr"), ("en", "de")], pair_kind=[2, 0])
    full(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    assert not batch["vtlm_co_masked"].any()
    assert (batch["vtlm_labels"][1] == IGNORE_INDEX).all()  # pair_kind 0: nothing masked / scored
    assert (batch["vtlm_labels"][0] != IGNORE_INDEX).any()


def test_co_mask_selection_statistics():
    """Synthetic [20 ; 20] rows, 18 aligned one-token pairs (i, 20 + i): exactly the budget is
    masked, about co_mask_probability of it on pairs, always both sides of a pair."""
    bsz, half = 400, 20
    maskable = torch.ones(bsz, 2 * half, dtype=torch.bool)
    maskable[:, [0, half - 1, half, 2 * half - 1]] = False  # the special tokens
    pairs = [[((i, i + 1), (half + i, half + i + 1)) for i in range(1, half - 1)]] * bsz
    sel, co = co_mask_selection(maskable, pairs, 0.3, 0.5, generator=torch.Generator().manual_seed(0))
    n = 36
    k = sel.sum(1)
    assert ((k == int(0.3 * n)) | (k == int(0.3 * n) + 1)).all()
    assert abs(k.double().mean().item() - 0.3 * n) < 0.1
    assert not (sel & ~maskable).any() and not (co & ~sel).any()
    assert torch.equal(co[:, 1:half - 1], co[:, half + 1:2 * half - 1]), "a co-masked word without its pair"
    share = co.sum().item() / sel.sum().item()
    assert 0.45 < share < 0.65, share
    sel0, co0 = co_mask_selection(maskable, pairs, 0.3, 0.0, generator=torch.Generator().manual_seed(0))
    assert not co0.any() and torch.equal(sel0.sum(1) >= 1, torch.ones(bsz, dtype=torch.bool))


# ------------------------------------------------------------------------------------ objective
def reference_loss(model, batch):
    """Plain VTLM: text tower on the masked concatenation, fusion with the image patches, head."""
    text = model.text(batch["vtlm_input_ids"], batch["vtlm_attention_mask"], lang=batch["lang"],
                      position_ids=batch["vtlm_position_ids"],
                      token_type_ids=batch.get("vtlm_token_type_ids"))["text_tokens"]
    fused = model.fuse(text, batch["vtlm_attention_mask"], model.vision(batch["image"])["image_tokens"])
    logits = model.fusion_mlm_head(fused)
    labels = batch["vtlm_labels"].clone()
    labels[batch["pair_kind"] == 0] = -100
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("language_embeddings", [False, True])
def test_loss_matches_reference(lang_model, lexicon_file, language_embeddings):
    model = lang_model
    with torch.no_grad():
        model.fusion_mlm_head.bias.normal_()
    obj = build_objective("vtlm", {"lexicon": lexicon_file, "mask_probability": 0.3,
                                   "language_embeddings": language_embeddings}, model=model)
    batch = pair_batch(model, ["one red circle", "two blue square", "three green circle"],
                       ["eins rot Kreis", "zwei blau Quadrat", "drei grün Kreis"])
    obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    # the concatenation restarts positions for the translation
    assert batch["vtlm_position_ids"][0].tolist() == [2, 3, 4, 5, 6, 2, 3, 4, 5, 6]
    if language_embeddings:
        de = model.lang_to_id["de"]
        assert batch["vtlm_token_type_ids"][0].tolist() == [0] * 5 + [de] * 5
    else:
        assert "vtlm_token_type_ids" not in batch
    got = obj(model(batch), batch)
    assert set(got) == {"vtlm_loss", "vtlm_acc", "vtlm_co_masked"}
    assert got["vtlm_loss"].item() == pytest.approx(reference_loss(model, batch).item(), rel=1e-5)
    # a pair_kind 0 row is left out even if its labels say otherwise
    batch["pair_kind"] = torch.tensor([2, 0, 2])
    got = obj(model(batch), batch)
    assert got["vtlm_loss"].item() == pytest.approx(reference_loss(model, batch).item(), rel=1e-5)


def test_co_masked_pair_needs_something_to_tell_the_sentences_apart(fused_model, lang_model, lexicon_file):
    """With restarted positions and no language embeddings, a co-masked pair at the same index of
    both sentences gets bit-identical states (so 'red' vs 'rot' is a coin flip); language
    embeddings or straight positions separate them."""
    def states(model, args):
        obj = build_objective("vtlm", {"lexicon": lexicon_file, "co_mask_probability": 1.0,
                                       "mask_probability": 0.34, **args}, model=model)
        batch = pair_batch(model, ["one red circle"], ["eins rot Kreis"])
        obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
        ids = torch.where(batch["vtlm_labels"] != -100, batch["vtlm_labels"], batch["vtlm_input_ids"])
        ids[0, [2, 7]] = model.tokenizer.mask_token_id
        with torch.no_grad():
            h = model.text(ids, batch["vtlm_attention_mask"], position_ids=batch["vtlm_position_ids"],
                           token_type_ids=batch.get("vtlm_token_type_ids"))["text_tokens"]
        return h[0, 2], h[0, 7]

    a, b = states(fused_model, {})
    assert torch.equal(a, b)
    a, b = states(fused_model, {"restart_positions": False})
    assert not torch.allclose(a, b, atol=1e-3)
    a, b = states(lang_model, {"language_embeddings": True})
    assert not torch.allclose(a, b, atol=1e-3)


def test_co_masked_word_is_learned_from_the_image(lang_model, lexicon_file):
    """The colour is co-masked in both sentences and the two rows differ only in the image: the
    loss can only go to ~0 by reading the image (and the image tokens get a gradient)."""
    model = lang_model
    obj = build_objective("vtlm", {"lexicon": lexicon_file, "mask_probability": 0.34,
                                   "co_mask_probability": 1.0, "language_embeddings": True}, model=model)
    batch = pair_batch(model, ["one red circle", "one blue circle"], ["eins rot Kreis", "eins blau Kreis"])
    obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    # fixed inputs: exactly the co-masked colour words (and nothing else) replaced by <mask>
    co, labels = batch["vtlm_co_masked"], batch["vtlm_labels"]
    assert co.nonzero().tolist() == [[0, 2], [0, 7], [1, 2], [1, 7]]
    clean = torch.where(labels != -100, labels, batch["vtlm_input_ids"])
    batch["vtlm_labels"] = labels.masked_fill(~co, -100)
    batch["vtlm_input_ids"] = clean.masked_fill(co, model.tokenizer.mask_token_id)
    assert torch.equal(batch["vtlm_input_ids"][0], batch["vtlm_input_ids"][1])

    outputs = model(batch)
    outputs["image_tokens"].retain_grad()
    obj(outputs, batch)["vtlm_loss"].backward()
    assert outputs["image_tokens"].grad.abs().sum() > 0
    model.zero_grad()

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(40):
        out = obj(model(batch), batch)
        opt.zero_grad()
        out["vtlm_loss"].backward()
        opt.step()
        losses.append(out["vtlm_loss"].item())
    assert losses[-1] < 0.3 * losses[0] and losses[-1] < 0.3, (losses[0], losses[-1])
    assert out["vtlm_acc"].item() == 1.0 and out["vtlm_co_masked"].item() == 1.0


def test_loss_decreases(fused_model, lexicon_file):
    model = fused_model
    obj = build_objective("vtlm", {"lexicon": lexicon_file, "mask_probability": 0.3}, model=model)
    batch = pair_batch(model, ["one red circle", "two blue square", "three green circle"],
                       ["eins rot Kreis", "zwei blau Quadrat", "drei grün Kreis"])
    obj.input_preparer()(batch, model.tokenizer, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        loss = obj(model(batch), batch)["vtlm_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, (losses[0], losses[-1])


def test_preparer_keys_pickling_and_skips(fused_model, lexicon_file):
    model = fused_model
    obj = build_objective("vtlm", {"lexicon": lexicon_file}, model=model)
    prep = pickle.loads(pickle.dumps(obj.input_preparer()))
    batch = pair_batch(model, ["one red circle"], ["eins rot Kreis"])
    before = {k: v.clone() for k, v in batch.items()}
    prep(batch, model.tokenizer, generator=torch.Generator().manual_seed(0))
    new = set(batch) - set(before)
    assert new and all(k.startswith("vtlm_") for k in new)
    assert all(torch.equal(batch[k], v) for k, v in before.items())
    # no translation: nothing prepared, the objective is skipped
    mono = {k: v for k, v in before.items() if not k.startswith("pair_")}
    assert set(prep(dict(mono), model.tokenizer)) == set(mono) and not obj.applies({}, mono)
    # no image (a parallel-text batch): skipped too
    text = {k: v for k, v in batch.items() if k != "image"}
    assert not obj.applies({}, text) and obj.applies({}, batch)
    assert obj.needs_pairs and obj.prepares == "vtlm"
    # without co-masking no lexicon is needed
    plain = build_objective("vtlm", {"alignment": "none"}, model=model).input_preparer()
    plain(dict(before), model.tokenizer, generator=torch.Generator().manual_seed(0))


def test_args_validation(tiny_model, fused_model, lexicon_file, tmp_path):
    with pytest.raises(ValueError, match="lexicon"):
        build_objective("vtlm", {})  # alignment=lexicon by default
    with pytest.raises(ValueError, match="alignment=none"):
        build_objective("vtlm", {"alignment": "none", "lexicon": lexicon_file})
    with pytest.raises(FileNotFoundError):
        build_objective("vtlm", {"lexicon": str(tmp_path / "missing.txt")})
    nolang = tmp_path / "words.txt"
    nolang.write_text("red rot\n")
    with pytest.raises(ValueError, match="languages"):
        build_objective("vtlm", {"lexicon": str(nolang)})
    with pytest.raises(ValueError, match="co_mask_probability"):
        build_objective("vtlm", {"lexicon": lexicon_file, "co_mask_probability": 1.5})
    with pytest.raises(ValueError, match="mask_probability"):
        build_objective("vtlm", {"lexicon": lexicon_file, "mask_probability": 0.0})
    with pytest.raises(ValueError, match="fusion"):
        build_objective("vtlm", {"lexicon": lexicon_file}, model=tiny_model)
    with pytest.raises(ValueError, match="type_vocab_size"):
        build_objective("vtlm", {"lexicon": lexicon_file, "language_embeddings": True}, model=fused_model)
    # straight positions past the text model's table: a clear error in the preparer
    long = build_objective("vtlm", {"alignment": "none", "restart_positions": False}, model=fused_model)
    words = " ".join(["one red circle"] * 4)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        long.input_preparer()(pair_batch(fused_model, [words], [words]), fused_model.tokenizer)
    # a directory of lexicons, languages from the file names
    d = tmp_path / "lexicons"
    d.mkdir()
    (d / "en-de.txt").write_text("red rot\n")
    (d / "fr-en.txt").write_text("rouge red\n")
    obj = build_objective("vtlm", {"lexicon": str(d)}, model=fused_model)
    assert set(obj.lexicons) == {("en", "de"), ("fr", "en")}
