"""GC10-DET class names and the single mapping from folder names and XML tags to them.

The canonical order below is the label order of every GC10 model in this project; it follows
the numbering of the original release (folder ``1`` .. ``10``, XML tags ``1_chongkong`` ..
``10_yaozhe``).
"""

from __future__ import annotations

import re

GC10_CLASSES: tuple[str, ...] = (
    "punching_hole",  # 1_chongkong
    "welding_line",  # 2_hanfeng
    "crescent_gap",  # 3_yueyawan
    "water_spot",  # 4_shuiban
    "oil_spot",  # 5_youban
    "silk_spot",  # 6_siban
    "inclusion",  # 7_yiwu
    "rolled_pit",  # 8_yahen
    "crease",  # 9_zhehen
    "waist_folding",  # 10_yaozhe
)

#: Pinyin XML tags of the original annotations, in canonical order.
GC10_TAGS: tuple[str, ...] = (
    "1_chongkong",
    "2_hanfeng",
    "3_yueyawan",
    "4_shuiban",
    "5_youban",
    "6_siban",
    "7_yiwu",
    "8_yahen",
    "9_zhehen",
    "10_yaozhe",
)

#: Known misspellings in the real data (``10_yaozhed`` occurs 131 times).
_TAG_TYPOS = {"10_yaozhed": "10_yaozhe"}


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


_LOOKUP: dict[str, str] = {}
for _i, (_cls, _tag) in enumerate(zip(GC10_CLASSES, GC10_TAGS, strict=True), start=1):
    _LOOKUP[_norm(_cls)] = _cls
    _LOOKUP[_norm(_tag)] = _cls
    _LOOKUP[str(_i)] = _cls
    _LOOKUP[_tag.split("_", 1)[1]] = _cls  # bare pinyin, e.g. "chongkong"
for _typo, _tag in _TAG_TYPOS.items():
    _LOOKUP[_norm(_typo)] = _LOOKUP[_norm(_tag)]


def canonical_gc10(name: str) -> str | None:
    """Map a GC10 folder name or XML tag to its canonical class, or ``None`` if unknown.

    Accepts canonical names, Kaggle folder names (``waist folding`` with a space), the numbered
    folders of the original release (``"1"`` .. ``"10"``) and the pinyin XML tags, including
    the real typo ``10_yaozhed``.
    """
    return _LOOKUP.get(_norm(name))


def is_gc10_name(name: str) -> bool:
    """True if ``name`` is any known spelling of a GC10 class."""
    return canonical_gc10(name) is not None
