"""The questionnaire's rule file and engine: every rule fires on answers written for it, the
photo band never lowers the advice, and answers are checked strictly."""

from __future__ import annotations

import itertools
import json

import pytest

from mpoxscan.errors import InvalidAnswersError, RuleSetError
from mpoxscan.questionnaire import (
    RULES_PATH,
    advise,
    answers_from_form,
    default_rules,
    load_rules,
    parse_answers,
)

RULES = default_rules()

#: rule id -> (answers, photo band, the advice's recommendation, the advice's category).
RULE_CASES: dict[str, tuple[dict, str | None, str, str | None]] = {
    "contact-with-symptoms": (
        {"contact_case": "yes", "symptoms": ["fever"]},
        None,
        "get_tested",
        "suspected_case",
    ),
    "rash-and-contact": (
        {"rash": "yes", "contact_case": "yes"},
        None,
        "get_tested",
        "suspected_case",
    ),
    "rash-and-new-partners": (
        {"rash": "yes", "new_partners": "yes"},
        None,
        "get_tested",
        "suspected_case",
    ),
    "rash-and-travel": ({"rash": "yes", "travel": "yes"}, None, "get_tested", "suspected_case"),
    "characteristic-rash": (
        {"rash": "yes", "progression": "yes"},
        None,
        "get_tested",
        "suspected_case",
    ),
    "anogenital-or-mouth-lesions": (
        {"rash": "yes", "sites": ["mouth"]},
        None,
        "get_tested",
        "unexplained_signs",
    ),
    "unexplained-rash": ({"rash": "yes"}, None, "see_doctor", "unexplained_signs"),
    "typical-lesions": ({"rash": "yes", "painful": "yes"}, None, "see_doctor", "unexplained_signs"),
    "widespread-rash": (
        {"rash": "yes", "lesion_count": "many", "sites": ["hands_feet", "trunk"]},
        None,
        "see_doctor",
        "unexplained_signs",
    ),
    "long-lasting-rash": (
        {"rash": "yes", "rash_days": "over_four_weeks"},
        None,
        "see_doctor",
        "unexplained_signs",
    ),
    "swollen-lymph-nodes": (
        {"symptoms": ["swollen_lymph_nodes"]},
        None,
        "see_doctor",
        "unexplained_signs",
    ),
    "contact-without-rash": ({"contact_case": "yes", "rash": "no"}, None, "watch", "contact"),
    "exposure-without-rash": ({"travel": "yes"}, None, "watch", None),
    "symptoms-without-rash": ({"symptoms": ["sore_throat"]}, None, "watch", None),
    "photo-high": ({"rash": "no"}, "high", "get_tested", None),
    "photo-uncertain": ({}, "uncertain", "see_doctor", None),
    "nothing-matched": ({"rash": "no", "contact_case": "no"}, "low", "watch", None),
}


def rank(recommendation: str) -> int:
    return RULES.recommendations.index(recommendation)


def test_every_rule_has_a_case_and_every_case_a_rule():
    assert set(RULE_CASES) == {rule.id for rule in RULES.rules}


@pytest.mark.parametrize("rule_id", sorted(RULE_CASES))
def test_each_rule_fires_on_its_answers_and_gives_its_advice(rule_id):
    raw, band, recommendation, category = RULE_CASES[rule_id]
    advice = advise(parse_answers(raw, RULES), RULES, photo_band=band)
    assert rule_id in [rule.id for rule in advice.fired]
    assert advice.recommendation == recommendation
    assert advice.category == category
    assert advice.version == RULES.version


def test_each_rule_cites_known_sources_with_a_title_date_and_link():
    for rule in RULES.rules:
        assert rule.sources and rule.basis
        for source_id in rule.sources:
            source = RULES.sources[source_id]
            assert source.title and source.date and source.url


def test_the_advice_is_the_most_urgent_fired_recommendation():
    advice = advise(parse_answers({"rash": "yes", "contact_case": "yes"}, RULES), RULES)
    assert {r.id for r in advice.fired} == {"rash-and-contact", "unexplained-rash"}
    assert advice.recommendation == "get_tested"
    # A contact with a rash is no longer told only to watch.
    assert "contact-without-rash" not in {r.id for r in advice.fired}


def test_a_rash_detail_implies_a_rash():
    advice = advise(parse_answers({"sites": ["anogenital"]}, RULES), RULES)
    assert "anogenital-or-mouth-lesions" in {r.id for r in advice.fired}
    assert advice.recommendation == "get_tested"


def _answer_samples() -> list[dict]:
    """Every single answer to every question, each rule's case, and pairs of exposures."""
    samples: list[dict] = [{}]
    for question in RULES.questions:
        for value in question.values:
            samples.append({question.id: [value] if question.kind == "multi" else value})
    samples += [case[0] for case in RULE_CASES.values()]
    exposures = ("contact_case", "new_partners", "travel")
    for first, second in itertools.combinations(exposures, 2):
        samples.append({first: "yes", second: "yes", "rash": "no"})
    return samples


@pytest.mark.parametrize("band", ["low", "uncertain", "high"])
def test_the_photo_band_never_lowers_the_answers_advice(band):
    for raw in _answer_samples():
        answers = parse_answers(raw, RULES)
        alone = advise(answers, RULES)
        combined = advise(answers, RULES, photo_band=band)
        assert rank(combined.recommendation) >= rank(alone.recommendation), raw
        # The photo changes the recommendation only, never the guidance category.
        assert combined.category == alone.category, raw
        if band == "high":
            assert combined.recommendation == "get_tested", raw
        if band == "low":
            assert combined.recommendation == alone.recommendation, raw


def test_answers_are_checked_strictly():
    with pytest.raises(InvalidAnswersError, match="JSON object"):
        parse_answers(["rash"], RULES)
    with pytest.raises(InvalidAnswersError, match="not a question") as caught:
        parse_answers({"rash": "yes", "my-name-is-jane": "yes"}, RULES)
    assert "jane" not in caught.value.message  # what was sent is never echoed
    with pytest.raises(InvalidAnswersError, match=r"answers\.rash must be one of"):
        parse_answers({"rash": True}, RULES)
    with pytest.raises(InvalidAnswersError, match=r"answers\.rash must be one of"):
        parse_answers({"rash": "maybe"}, RULES)
    with pytest.raises(InvalidAnswersError, match=r"answers\.sites must be a list"):
        parse_answers({"sites": "face"}, RULES)
    with pytest.raises(InvalidAnswersError, match=r"answers\.sites must be a list"):
        parse_answers({"sites": ["face", "elbow"]}, RULES)
    assert InvalidAnswersError("x").code == "invalid_answers"


def test_skipped_answers_and_lists_are_normalised():
    answers = parse_answers(
        {"rash": None, "symptoms": [], "sites": ["trunk", "face", "face"]}, RULES
    )
    assert answers == {"sites": ("face", "trunk")}


def test_answers_from_the_html_form():
    fields = {
        "explain": "on",
        "q.rash": "yes",
        "q.sites.anogenital": "on",
        "q.sites.face": "on",
        "q.symptoms.fever": "on",
    }
    raw = answers_from_form(fields, RULES)
    assert raw == {"rash": "yes", "sites": ["anogenital", "face"], "symptoms": ["fever"]}
    assert parse_answers(raw, RULES)["sites"] == ("anogenital", "face")
    assert answers_from_form({"explain": "on"}, RULES) is None
    with pytest.raises(InvalidAnswersError):
        parse_answers(answers_from_form({"q.rash.extra": "on"}, RULES), RULES)
    with pytest.raises(InvalidAnswersError):
        parse_answers(answers_from_form({"q.sites.elbow": "on"}, RULES), RULES)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["rules"][0].update(sources=["no-such-source"]), "unknown one"),
        (lambda d: d["rules"][0].update(sources=[]), "cites no source"),
        (lambda d: d["rules"][0].update(recommendation="panic"), "unknown recommendation"),
        (lambda d: d["rules"][0].update(category="doomed"), "unknown category"),
        (
            lambda d: d["rules"][0].update(when={"answer": "shoe_size", "is": "9"}),
            "unknown question",
        ),
        (lambda d: d["rules"][0].update(when={"answer": "rash", "is": "maybe"}), "not is/includes"),
        (lambda d: d["rules"][0].update(when={"photo_band": "purple"}), "photo band"),
        (lambda d: d["rules"][1].update(id=d["rules"][0]["id"]), "share an id"),
        (lambda d: d.pop("version"), "not a valid rule file"),
    ],
)
def test_a_bad_rule_file_is_refused(tmp_path, change, problem):
    data = json.loads(RULES_PATH.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(RuleSetError, match=problem):
        load_rules(path)
