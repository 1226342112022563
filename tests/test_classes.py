import pytest

from gc10lib.classes import GC10_CLASSES, canonical_gc10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1_chongkong", "punching_hole"),
        ("2_hanfeng", "welding_line"),
        ("3_yueyawan", "crescent_gap"),
        ("4_shuiban", "water_spot"),
        ("5_youban", "oil_spot"),
        ("6_siban", "silk_spot"),
        ("7_yiwu", "inclusion"),
        ("8_yahen", "rolled_pit"),
        ("9_zhehen", "crease"),
        ("10_yaozhe", "waist_folding"),
        ("10_yaozhed", "waist_folding"),  # the real typo, 131 times in the Kaggle XMLs
        ("waist folding", "waist_folding"),  # the Kaggle folder name has a space
        ("Waist_Folding", "waist_folding"),
        ("10", "waist_folding"),  # original release: numbered folders
        ("1", "punching_hole"),
        ("d", None),  # the real stray tag
        ("scratch", None),
    ],
)
def test_mapping(name, expected):
    assert canonical_gc10(name) == expected


def test_canonical_order_is_numbering_of_release():
    assert [canonical_gc10(str(i)) for i in range(1, 11)] == list(GC10_CLASSES)
    assert len(set(GC10_CLASSES)) == 10
