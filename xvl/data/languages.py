"""Language codes: one canonical code per language for everything downstream.

Corpora name languages in many ways: ISO 639-1 (``de``), ISO 639-3 / 639-2T (``deu``), the
bibliographic 639-2B variants (``ger``), locale tags (``de_DE``, ``zh-CN``, ``pt-BR``), and
individual-language codes of macrolanguages (LASER's Tatoeba uses ``cmn``, ``pes``, ``swh``,
``zsm``, ``lvs``). :func:`normalize_lang` maps all of them to the ISO 639-1 code, or to the ISO
639-3 code when the language has no 639-1 code (``yue``, ``ast``, ``ber``...). Region and script
subtags are dropped (``zh-Hant`` -> ``zh``): the model has one id per language, not per variety.

Conventions for macrolanguages: the dominant standard variety maps to the macrolanguage's 639-1
code (``cmn``->``zh``, ``pes``->``fa``, ``swh``->``sw``, ``zsm``->``ms``, ``lvs``->``lv``,
``ekk``->``et``, ``khk``->``mn``, ``arb``->``ar``, ...). Distinct varieties that corpora keep
apart stay separate (``yue``, ``wuu``, ``arz``, ``arq``, ``gsw``, ``swg``, ``nds``).

:func:`to_iso639_3` gives the 639-3 (639-2T) code, e.g. for pair names like ``"deu-eng"``;
:func:`tatoeba_code` gives the code LASER's Tatoeba files use (``zh`` -> ``cmn``).
"""
from __future__ import annotations

import difflib
import functools
import re
from typing import Dict

# ISO 639-1 -> ISO 639-3 (= 639-2/T for these); every current 639-1 code except the collective
# "bh" (Bihari, no 639-3 code).
_ISO1_TO_3_TABLE = """
aa aar  ab abk  ae ave  af afr  ak aka  am amh  an arg  ar ara  as asm  av ava  ay aym  az aze
ba bak  be bel  bg bul  bi bis  bm bam  bn ben  bo bod  br bre  bs bos  ca cat  ce che  ch cha
co cos  cr cre  cs ces  cu chu  cv chv  cy cym  da dan  de deu  dv div  dz dzo  ee ewe  el ell
en eng  eo epo  es spa  et est  eu eus  fa fas  ff ful  fi fin  fj fij  fo fao  fr fra  fy fry
ga gle  gd gla  gl glg  gn grn  gu guj  gv glv  ha hau  he heb  hi hin  ho hmo  hr hrv  ht hat
hu hun  hy hye  hz her  ia ina  id ind  ie ile  ig ibo  ii iii  ik ipk  io ido  is isl  it ita
iu iku  ja jpn  jv jav  ka kat  kg kon  ki kik  kj kua  kk kaz  kl kal  km khm  kn kan  ko kor
kr kau  ks kas  ku kur  kv kom  kw cor  ky kir  la lat  lb ltz  lg lug  li lim  ln lin  lo lao
lt lit  lu lub  lv lav  mg mlg  mh mah  mi mri  mk mkd  ml mal  mn mon  mr mar  ms msa  mt mlt
my mya  na nau  nb nob  nd nde  ne nep  ng ndo  nl nld  nn nno  no nor  nr nbl  nv nav  ny nya
oc oci  oj oji  om orm  or ori  os oss  pa pan  pi pli  pl pol  ps pus  pt por  qu que  rm roh
rn run  ro ron  ru rus  rw kin  sa san  sc srd  sd snd  se sme  sg sag  si sin  sk slk  sl slv
sm smo  sn sna  so som  sq sqi  sr srp  ss ssw  st sot  su sun  sv swe  sw swa  ta tam  te tel
tg tgk  th tha  ti tir  tk tuk  tl tgl  tn tsn  to ton  tr tur  ts tso  tt tat  tw twi  ty tah
ug uig  uk ukr  ur urd  uz uzb  ve ven  vi vie  vo vol  wa wln  wo wol  xh xho  yi yid  yo yor
za zha  zh zho  zu zul
"""

# Languages without a 639-1 code (canonical code = their 639-3 code). Includes every such
# language of LASER's Tatoeba set, plus a few common in multilingual V&L / MT benchmarks.
_ISO3_ONLY = """
ang arq arz ast awa ber cbk ceb csb dsb dtp gsw hsb kab kzj lfn max mhr nds nov orv pam pms swg
tzl war wuu yue
ace ban bho bjn bug ckb crh fil fur grc hak haw hmn ilo jbo kbd lij lmo ltg mai min mni nan nso
pap quz sah scn sco szl tet tpi vec
"""

# 639-2/B (bibliographic) -> 639-2/T codes.
_BIBLIOGRAPHIC = {
    "alb": "sqi", "arm": "hye", "baq": "eus", "bur": "mya", "chi": "zho", "cze": "ces",
    "dut": "nld", "fre": "fra", "geo": "kat", "ger": "deu", "gre": "ell", "ice": "isl",
    "mac": "mkd", "mao": "mri", "may": "msa", "per": "fas", "rum": "ron", "slo": "slk",
    "tib": "bod", "wel": "cym",
}

# Individual languages of a macrolanguage that corpora use for the macrolanguage itself, and
# deprecated 639-1 codes.
_ALIASES = {
    "cmn": "zh", "pes": "fa", "swh": "sw", "zsm": "ms", "lvs": "lv", "ekk": "et", "khk": "mn",
    "arb": "ar", "azj": "az", "uzn": "uz", "ydd": "yi", "npi": "ne", "ory": "or", "gaz": "om",
    "plt": "mg", "kmr": "ku", "als": "sq",
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro",
}

# LASER Tatoeba v1 (the 112 languages of "tatoeba.xxx-eng.xxx").
TATOEBA_LANGUAGES = tuple("""
afr amh ang ara arq arz ast awa aze bel ben ber bos bre bul cat cbk ceb ces cha cmn cor csb cym
dan deu dsb dtp ell epo est eus fao fin fra fry gla gle glg gsw heb hin hrv hsb hun hye ido ile
ina ind isl ita jav jpn kab kat kaz khm kor kur kzj lat lfn lit lvs mal mar max mhr mkd mon nds
nld nno nob nov oci orv pam pes pms pol por ron rus slk slv spa sqi srp swe swg swh tam tat tel
tgl tha tuk tur tzl uig ukr urd uzb vie war wuu xho yid yue zsm eng
""".split())


def _build():
    to3: Dict[str, str] = {}
    canon: Dict[str, str] = {}
    toks = _ISO1_TO_3_TABLE.split()
    for two, three in zip(toks[::2], toks[1::2]):
        to3[two] = three
        canon[two] = two
        canon[three] = two
    for three in _ISO3_ONLY.split():
        to3[three] = three
        canon[three] = three
    for b, t in _BIBLIOGRAPHIC.items():
        canon[b] = canon[t]
    for alias, target in _ALIASES.items():
        canon[alias] = canon[target]
    return to3, canon


_TO_ISO3, _CANON = _build()
_TATOEBA_BY_CANON = {}
for _code in TATOEBA_LANGUAGES:
    _TATOEBA_BY_CANON.setdefault(_CANON[_code], _code)

#: every canonical code :func:`normalize_lang` can return
KNOWN_LANGUAGES = tuple(sorted(set(_CANON.values())))

_SPLIT = re.compile(r"[-_@.\s]")


@functools.lru_cache(maxsize=4096)
def _normalize_cached(code: str) -> str:
    primary = _SPLIT.split(code.strip().lower(), 1)[0]
    canon = _CANON.get(primary)
    if canon is None:
        close = difflib.get_close_matches(primary, list(_CANON), n=1, cutoff=0.6) if primary else []
        hint = f"; did you mean '{close[0]}' ({_CANON[close[0]]})?" if close else ""
        raise ValueError(f"unknown language code {code!r}{hint}")
    return canon


def normalize_lang(code: str) -> str:
    """The canonical code of ``code``: ISO 639-1, or ISO 639-3 where no 639-1 code exists.

    Case-insensitive; accepts 639-1 (``de``), 639-3 / 639-2T (``deu``), 639-2B (``ger``), locale
    forms (``de_DE``, ``zh-CN``, ``pt-BR``, ``sr-Latn-RS``: region/script are dropped) and common
    macrolanguage members (``cmn`` -> ``zh``). Unknown codes raise ``ValueError`` naming the code
    (and the closest known code, if any).
    """
    if not isinstance(code, str):
        raise ValueError(f"language code must be a string, got {code!r}")
    return _normalize_cached(code)


def to_iso639_3(code: str) -> str:
    """The ISO 639-3 (639-2/T) code of ``code`` (any form :func:`normalize_lang` accepts):
    ``de`` -> ``deu``, ``ger`` -> ``deu``, ``zh-CN`` -> ``zho``, ``yue`` -> ``yue``."""
    return _TO_ISO3[normalize_lang(code)]


def tatoeba_code(code: str) -> str:
    """The code LASER's Tatoeba files use for ``code`` (``zh`` -> ``cmn``, ``fa`` -> ``pes``,
    ``sw`` -> ``swh``); the 639-3 code for a language outside that set."""
    canon = normalize_lang(code)
    return _TATOEBA_BY_CANON.get(canon, _TO_ISO3[canon])


def same_language(a: str, b: str) -> bool:
    return normalize_lang(a) == normalize_lang(b)
