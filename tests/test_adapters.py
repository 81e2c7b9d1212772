"""X-Mod language adapters: routing, placement, adding a language without moving the others, persistence."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

import xvl
from xvl.config import AdapterConfig
from xvl.models.adapters import LanguageAdapters, freeze_all_but_language, language_adapters
from xvl.models.model import XVLModel

from conftest import tiny_model_config

EN = ["one red circle", "two blue squares", "three green circle"]
DE = ["eins rot Kreis", "zwei blau Quadrat", "drei grün Kreis"]
FR = ["un rouge cercle", "deux bleu carré", "trois vert cercle"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _model(tokenizer, languages=("en", "de"), adapter_languages=None, enabled=True, seed=0, layers=2):
    cfg = tiny_model_config(languages=list(languages))
    cfg.text.config = dict(cfg.text.config, num_hidden_layers=layers)
    cfg.text.adapters = AdapterConfig(enabled=enabled, bottleneck=8,
                                      languages=None if adapter_languages is None else list(adapter_languages))
    torch.manual_seed(seed)
    return XVLModel(cfg, tokenizer).eval()


def _perturb(model, code, seed, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in language_adapters(model):
            for p in a.adapters[code].parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


def _batch(model, texts, langs):
    tok = model.tokenize(texts)
    return {**tok, "lang": torch.tensor([model.lang_to_id[c] for c in langs])}


def _text(model, batch):
    with torch.no_grad():
        t = model.text(batch["input_ids"], batch["attention_mask"], lang=batch["lang"])
        return t["text_tokens"], model(batch)["text_embeds"]


def test_routing_parity_mixed_batch_equals_rows_alone(tiny_tokenizer):
    """Each row of a mixed-language batch equals that row run alone with its language.

    Up to float rounding only: on CPU even the plain HF tower is not batch-size invariant (its
    GEMM / attention kernels round differently for 1 row than for 6: ~2e-7 here), so the tower-level
    check uses a 1e-5 tolerance, while routing a row to another language's module moves it by O(1).
    The routing itself is checked bit-exactly in test_language_adapters_module_routes_rows.
    """
    model = _model(tiny_tokenizer, languages=("en", "de", "fr"))
    for i, code in enumerate(("en", "de", "fr")):
        _perturb(model, code, seed=i)
    texts = [FR[0], EN[0], DE[1], EN[2], FR[1], DE[0]]
    langs = ["fr", "en", "de", "en", "fr", "de"]
    b = _batch(model, texts, langs)
    tokens, embeds = _text(model, b)
    for i in range(len(texts)):
        row = {k: v[i:i + 1] for k, v in b.items()}  # same padded length, one row, its own language
        t1, e1 = _text(model, row)
        torch.testing.assert_close(t1[0], tokens[i], rtol=1e-5, atol=1e-5, msg=f"row {i} ({langs[i]})")
        torch.testing.assert_close(e1[0], embeds[i], rtol=1e-5, atol=1e-5, msg=f"row {i} ({langs[i]})")
        other = (row["lang"] + 1) % 3
        assert (_text(model, {**row, "lang": other})[0][0] - tokens[i]).abs().max() > 1e-2


def test_language_adapters_module_routes_rows():
    torch.manual_seed(0)
    la = LanguageAdapters(hidden=6, bottleneck=3, languages=["en", "fr"], vocab=["en", "de", "fr"]).eval()
    h = torch.randn(5, 4, 6)
    ids = torch.tensor([2, 0, 2, 0, 0])
    out = la(h, ids)
    for code, lang_id in (("en", 0), ("fr", 2)):  # bit-exact: each language's rows, as one chunk, in order
        rows = (ids == lang_id).nonzero(as_tuple=True)[0]
        assert torch.equal(out[rows], h[rows] + la.adapters[code](h[rows]))
    assert torch.equal(la(h, torch.zeros(5, dtype=torch.long)), h + la.adapters["en"](h))
    with pytest.raises(ValueError, match=r"no language adapter for 'de' \(language id 1\)"):
        la(h, torch.tensor([0, 1, 0, 0, 0]))
    # gradients reach only the modules of the languages present
    la(h, torch.tensor([0, 0, 0, 0, 0])).sum().backward()
    assert la.adapters["fr"].up.weight.grad is None and la.adapters["en"].up.weight.grad is not None
    # ... except in training mode, where idle trainable modules get an exact zero (DDP needs every parameter)
    la.train().zero_grad(set_to_none=True)
    la(h, torch.tensor([0, 0, 0, 0, 0])).sum().backward()
    assert torch.count_nonzero(la.adapters["fr"].up.weight.grad) == 0


def test_placement_after_ffn_sublayer(tiny_tokenizer):
    """Each layer's output is y + adapter[lang](y), y = the FFN sublayer's (post-LayerNorm) output."""
    model = _model(tiny_tokenizer)
    _perturb(model, "de", seed=1)
    raw = []
    hooks = [layer.output.register_forward_hook(lambda m, a, o: raw.append(o.detach().clone()), prepend=True)
             for layer in model.text.model.encoder.layer]
    b = _batch(model, DE, ["de"] * 3)
    with torch.no_grad():
        hs = model.text(b["input_ids"], b["attention_mask"], lang=b["lang"])["text_hidden_states"]
    for h in hooks:
        h.remove()
    assert len(raw) == 2
    for k, (y, a) in enumerate(zip(raw, model.text.adapters)):
        torch.testing.assert_close(hs[k + 1], y + a.adapters["de"](y), rtol=0, atol=1e-6)


def test_languages_differ_and_disabled_is_plain_tower(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    _perturb(model, "de", seed=1)
    tok = model.tokenize(EN)
    with torch.no_grad():
        en = model.text(**tok, lang=torch.zeros(3, dtype=torch.long))["text_pooled"]
        de = model.text(**tok, lang=torch.ones(3, dtype=torch.long))["text_pooled"]
    assert not torch.allclose(en, de, atol=1e-3)

    plain = _model(tiny_tokenizer, enabled=False)
    assert plain.text.adapters is None and not language_adapters(plain)
    assert not any("adapters" in k for k in plain.state_dict())
    with torch.no_grad():
        ref = plain.text.model(**tok).last_hidden_state
        assert torch.equal(plain.text(**tok)["text_tokens"], ref)
        assert torch.equal(plain.text(**tok, lang=torch.ones(3, dtype=torch.long))["text_tokens"], ref)
    # adapters whose up-projection is zero add exactly nothing: the same weights give the plain tower
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".adapters." in k for k in missing)
    with torch.no_grad():
        for a in language_adapters(model):
            for m in a.adapters.values():
                m.up.weight.zero_()
                m.up.bias.zero_()
        assert torch.equal(model.text(**tok, lang=torch.ones(3, dtype=torch.long))["text_tokens"], ref)


def _train(model, params, batches, steps, lr=1e-2, check=None):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    model.train()
    for step in range(steps):
        b = batches[step % len(batches)]
        target = torch.linspace(-1, 1, model.cfg.embed_dim)
        loss = F.mse_loss(model(b)["text_embeds"], target.expand(len(b["lang"]), -1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if check is not None:
            check()
        opt.step()
    model.eval()


def test_xmod_adding_a_language_leaves_the_others_bit_identical(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    text_params = [p for n, p in model.named_parameters() if n.startswith(("text.", "text_proj."))]
    _train(model, text_params, [_batch(model, EN + DE, ["en"] * 3 + ["de"] * 3)], steps=4)
    en_b, de_b = _batch(model, EN, ["en"] * 3), _batch(model, DE, ["de"] * 3)
    en0, de0 = _text(model, en_b), _text(model, de_b)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    new = model.add_language("fr", init_from="de")
    assert model.cfg.languages == ["en", "de", "fr"] and model.lang_to_id["fr"] == 2
    assert model.cfg.text.adapters.languages == ["en", "de", "fr"]
    assert len(new) == 4 * 2  # down/up weight+bias, 2 layers
    fr_b = _batch(model, FR, ["fr"] * 3)
    fr0 = _text(model, fr_b)
    assert torch.equal(fr0[1], _text(model, {**fr_b, "lang": torch.ones(3, dtype=torch.long)})[1])  # copy of de

    trainable = freeze_all_but_language(model, "fr")
    assert {id(p) for p in trainable} == {id(p) for p in new}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == \
        [n for n, _ in model.named_parameters() if ".adapters.fr." in n]
    fr_ids = {id(p) for p in new}

    def only_fr_has_grads():
        for n, p in model.named_parameters():
            if id(p) in fr_ids:
                assert p.grad is not None and p.grad.abs().sum() > 0, n
            else:
                assert p.grad is None, n

    # the optimizer sees every parameter (weight decay included): frozen ones get no grad, so no update
    _train(model, list(model.parameters()), [fr_b], steps=20, check=only_fr_has_grads)

    for n, p in model.named_parameters():
        if ".adapters.fr." not in n:
            assert torch.equal(p, before[n]), n
    en1, de1, fr1 = _text(model, en_b), _text(model, de_b), _text(model, fr_b)
    for a, b in ((en0, en1), (de0, de1)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(fr0[1], fr1[1], atol=1e-4)


def test_save_load_round_trip_with_added_language(tiny_tokenizer, tmp_path):
    model = _model(tiny_tokenizer)
    model.add_language("fr")  # random init
    _perturb(model, "fr", seed=3)
    b = _batch(model, [FR[0], EN[1], DE[2], FR[2]], ["fr", "en", "de", "fr"])
    tokens, embeds = _text(model, b)
    model.save_pretrained(str(tmp_path / "m"))
    with open(tmp_path / "m" / "xvl_config.json") as f:
        saved = json.load(f)["model"]
    assert saved["languages"] == ["en", "de", "fr"] and saved["text"]["adapters"]["languages"] == ["en", "de", "fr"]
    assert os.path.exists(tmp_path / "m" / "model.safetensors")
    loaded = xvl.load(str(tmp_path / "m"))
    assert loaded.lang_to_id == {"en": 0, "de": 1, "fr": 2}
    t2, e2 = _text(loaded, b)
    assert torch.equal(t2, tokens) and torch.equal(e2, embeds)


def test_language_in_vocabulary_without_module(tiny_tokenizer):
    model = _model(tiny_tokenizer, languages=("en", "de", "fr"), adapter_languages=("en", "de"))
    b = _batch(model, FR, ["fr"] * 3)
    with pytest.raises(ValueError, match=r"no language adapter for 'fr' \(language id 2\)"):
        _text(model, b)
    with pytest.raises(ValueError, match="no language adapter for 'fr'"):
        freeze_all_but_language(model, "fr")
    model.add_language("fr")
    assert model.cfg.languages == ["en", "de", "fr"] and model.cfg.text.adapters.languages == ["en", "de", "fr"]
    _text(model, b)


def test_errors(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    tok = model.tokenize(EN)
    with pytest.raises(ValueError, match=r"language id 5 is outside the language vocabulary \(2 languages"):
        model.text(**tok, lang=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="needs lang"):
        model.text(**tok)
    with pytest.raises(ValueError, match=r"lang must be \[B\]"):
        model.text(**tok, lang=torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="without language ids"):
        model.text.model(**tok)
    with pytest.raises(KeyError, match="no adapter for 'xx'"):
        model.add_language("fr", init_from="xx")
    assert model.cfg.languages == ["en", "de"]  # a failed add changes nothing
    with pytest.raises(ValueError, match="already has an adapter"):
        model.add_language("de")
    # the tower is usable again after an error (routing cleared)
    model.text(**tok, lang=torch.tensor([0, 1, 0]))
    plain = _model(tiny_tokenizer, enabled=False)
    with pytest.raises(ValueError, match="adapters.enabled is off"):
        plain.add_language("fr")
    with pytest.raises(ValueError, match="no language adapters"):
        freeze_all_but_language(plain, "en")


def test_deepcopy_rebinds_hooks(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    b = _batch(model, EN, ["en"] * 3)
    ref = _text(model, b)[0]
    clone = copy.deepcopy(model)
    _perturb(clone, "en", seed=5)
    assert torch.equal(_text(model, b)[0], ref)
    assert not torch.allclose(_text(clone, b)[0], ref, atol=1e-3)


def test_pair_and_mlm_paths_route_their_own_languages(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    _perturb(model, "de", seed=2)
    en, de = _batch(model, EN, ["en"] * 3), _batch(model, DE, ["de"] * 3)
    with torch.no_grad():
        out = model({**en, "pair_input_ids": de["input_ids"], "pair_attention_mask": de["attention_mask"],
                     "pair_lang": de["lang"], "mlm_input_ids": de["input_ids"],
                     "mlm_attention_mask": de["attention_mask"], "mlm_lang": de["lang"]})
        ref = model.text(de["input_ids"], de["attention_mask"], lang=de["lang"])["text_tokens"]
    assert torch.equal(out["pair_tokens"], ref) and torch.equal(out["mlm_tokens"], ref)


def test_evaluation_routes_languages_to_adapters(tiny_tokenizer, tmp_path):
    """Bitext eval on a model with language modules passes each side's language (deu -> de)."""
    from xvl.evaluation.bitext import evaluate_bitext
    from xvl.models.model import XVLModel

    cfg = tiny_model_config()
    cfg.text.adapters.enabled = True
    cfg.text.adapters.languages = ["en", "de"]
    model = XVLModel(cfg, tiny_tokenizer).eval()
    (tmp_path / "tatoeba.deu-eng.deu").write_text("zwei rote Kreise\nein blaues Quadrat\n")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("two red circles\na blue square\n")
    res = evaluate_bitext(model, tatoeba_dir=str(tmp_path), progress=False)
    assert res["per_pair"]["deu-eng"]["n"] == 2
    tok = model.tokenize(["zwei rote Kreise"])
    with torch.no_grad():
        de = model.encode_text(**tok, lang="de")
        en = model.encode_text(**tok, lang="en")
    assert de.shape == en.shape
    with pytest.raises(ValueError, match="unknown language"):
        model.encode_text(**tok, lang="xx")
