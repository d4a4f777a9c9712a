"""ALMA-R-Preference → K=3 ranked translations, on rows in the dataset's exact schema (tests/fixtures)."""

import json
import logging
import math
from pathlib import Path

import pytest
from datasets import Dataset

from trl_rankalign.data import convert
from trl_rankalign.data.converters import from_alma_r


FIXTURE = Path(__file__).parent / "fixtures" / "alma_r_de_en.json"


def fixture_rows():
    return json.loads(FIXTURE.read_text())


def test_de_to_en_kiwi_xcomet():
    ranked = from_alma_r(Dataset.from_list(fixture_rows()), "de", "en")
    first = ranked[0]
    assert first["prompt"] == "Translate this from German to English:\nGerman: Der Hund schläft im Garten.\nEnglish:"
    assert first["completions"] == [
        " The dog sleeps in the garden.",  # GPT-4
        " The dog sleeping in garden.",  # ALMA
        " The dog is sleeping in the garden.",  # reference
    ]
    assert first["scores"] == pytest.approx([0.90, 0.755, 0.88])
    assert ranked[1]["scores"][0] == ranked[1]["scores"][2]  # GPT-4 ties the reference: a tie, not an order


def test_required_directions_skips_other_direction(caplog):
    with caplog.at_level(logging.WARNING):
        ranked = from_alma_r(Dataset.from_list(fixture_rows()), "de", "en")
    assert len(ranked) == 2
    assert "skipped 1 rows" in caplog.text
    en_de = from_alma_r(Dataset.from_list(fixture_rows()), "en", "de", score="kiwi")
    assert len(en_de) == 3
    assert en_de[2]["prompt"] == "Translate this from English to German:\nEnglish: We meet at eight.\nGerman:"
    assert en_de[2]["completions"][2] == " Wir treffen uns um acht."  # the German reference
    assert en_de[2]["scores"] == pytest.approx([0.83, 0.62, 0.84])


@pytest.mark.parametrize("score, expected", [("kiwi", [0.84, 0.71, 0.82]), ("xcomet", [0.96, 0.80, 0.94])])
def test_each_score_choice_and_the_registry(score, expected):
    ranked = convert(Dataset.from_list(fixture_rows()), "alma_r", source_lang="de", target_lang="en", score=score)
    assert ranked[0]["scores"] == pytest.approx(expected)


def test_bad_rows_fail_loudly():
    rows = fixture_rows()
    rows[1]["translation"]["alma_en_kiwi_xcomet"] = math.nan
    with pytest.raises(ValueError, match="row 1, field 'translation.alma_en_kiwi_xcomet'"):
        from_alma_r(Dataset.from_list(rows), "de", "en")
    rows = fixture_rows()
    rows[0]["translation"]["gpt4_en"] = None
    with pytest.raises(ValueError, match="row 0, field 'translation.gpt4_en': missing or null"):
        from_alma_r(Dataset.from_list(rows), "de", "en")
    with pytest.raises(ValueError, match="unknown score"):
        from_alma_r(Dataset.from_list(fixture_rows()), "de", "en", score="bleu")
    with pytest.raises(ValueError, match="unknown language"):
        from_alma_r(Dataset.from_list(fixture_rows()), "de", "xx")
