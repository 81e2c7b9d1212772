"""Tokenizer texts of streamed sources (source_texts): an equal share per source, thinned evenly
over a source's whole extent, not its head."""
from __future__ import annotations

from xvl.data.parallel import ParallelPair
from xvl.data.stream_sources import ResolvedSource, source_texts


def _pairs_source(n_per_pair: int) -> ResolvedSource:
    # grouped by language pair, as load_parallel_sources returns them
    pairs = [ParallelPair(f"{lang} {i}", f"en {lang} {i}", lang, "en")
             for lang in ("cs", "de", "fr") for i in range(n_per_pair)]
    return ResolvedSource("m30k", "text_pair", 1.0, config=None, pairs=pairs)


def test_a_share_of_grouped_pairs_covers_every_language_pair():
    texts = list(source_texts([_pairs_source(100)], limit=60))
    assert len(texts) == 60
    firsts = {t.split()[0] for t in texts if not t.startswith("en ")}
    assert firsts == {"cs", "de", "fr"}  # the head (60 of 600 texts) would be Czech only


def test_a_small_source_gives_all_its_texts_and_shares_are_equal():
    small, big = _pairs_source(2), _pairs_source(100)
    texts = list(source_texts([small, big], limit=40))
    assert texts[:12] == [t for p in small.pairs for t in (p.src_text, p.tgt_text)]  # 12 < its share of 20
    assert len(texts) == 12 + 20


def test_shards_are_thinned_by_their_index_counts(tmp_path):
    from xvl.config import StreamSourceConfig
    from xvl.data.shard_format import Example
    from xvl.data.shards import read_index, write_shards
    from xvl.data.streaming import expand_shard_spec

    examples = [Example(f"g{i}", {"id": f"g{i}", "texts": {"en": f"en {i}", "de": f"de {i}"}}) for i in range(50)]
    write_shards(examples, str(tmp_path), max_samples=10, shuffle=False, progress=False, kind="parallel")
    index = read_index(str(tmp_path))
    src = ResolvedSource("pt", "text_pair", 1.0, StreamSourceConfig(type="shards", path=str(tmp_path)),
                         urls=expand_shard_spec(str(tmp_path)), index=index)
    texts = list(source_texts([src], limit=20))
    assert len(texts) == 20
    numbers = sorted({int(t.split()[1]) for t in texts})
    assert numbers[0] < 5 and numbers[-1] >= 45  # from the first shard to the last, not the first two
