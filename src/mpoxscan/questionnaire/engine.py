"""A small, transparent rule engine: questionnaire answers (and the photo band) to advice.

The rules are data (``rules.json``, shipped with the package, versioned); each names the
category the guidance defines, a recommendation, the condition on the answers and its sources.
The advice is the most urgent recommendation among the rules that fired, so a rule (the photo
band's included) can raise the advice but never lower it. No probability is computed here.

Conditions (``when``) are JSON objects of one of these forms:
``{"answer": id, "is": value}`` (a ``choice`` question), ``{"answer": id, "includes_any": [...]}``
(a ``multi`` question), ``{"photo_band": "high"}``, ``{"all": [...]}``, ``{"any": [...]}``,
``{"not": {...}}``, and ``{"otherwise": true}``, which fires only when no other rule did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mpoxscan.errors import InvalidAnswersError, RuleSetError

#: The rule file shipped with the package.
RULES_PATH = Path(__file__).with_name("rules.json")
#: Photo bands a rule may test (``mpoxscan.inference.predictor.screening_band``).
PHOTO_BANDS = ("low", "uncertain", "high")
#: Answering any other question of the rash section means there is a rash: someone who ticks
#: where their sores are has sores, even if they skipped the first question.
RASH_QUESTION = "rash"
RASH_SECTION = "rash"

Answers = dict[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class Question:
    """One question: ``kind`` ``choice`` takes one of ``values``, ``multi`` a list of them."""

    id: str
    section: str
    kind: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """A guidance document a rule cites."""

    id: str
    title: str
    publisher: str
    date: str
    reference: str
    url: str


@dataclass(frozen=True)
class Rule:
    """``when`` holds, so the person is in ``category`` (or none) and gets ``recommendation``."""

    id: str
    category: str | None
    recommendation: str
    when: Mapping[str, Any]
    sources: tuple[str, ...]
    basis: str


@dataclass(frozen=True)
class RuleSet:
    """A versioned rule file: sources, questions, recommendations (least urgent first),
    categories (least specific first) and rules."""

    version: str
    date: str
    sources: Mapping[str, Source]
    questions: tuple[Question, ...]
    recommendations: tuple[str, ...]
    categories: tuple[str, ...]
    rules: tuple[Rule, ...]

    def question(self, question_id: str) -> Question | None:
        """The question with this id, or ``None``."""
        return next((q for q in self.questions if q.id == question_id), None)


@dataclass(frozen=True)
class Advice:
    """What the rules say: the category (``None`` when the answers place the person in none),
    the recommendation, the rules that fired (in file order) and the rule-set version."""

    category: str | None
    recommendation: str
    fired: tuple[Rule, ...]
    version: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (rule ids and their sources, not their conditions)."""
        return {
            "category": self.category,
            "recommendation": self.recommendation,
            "rules": [
                {
                    "id": r.id,
                    "category": r.category,
                    "recommendation": r.recommendation,
                    "sources": list(r.sources),
                }
                for r in self.fired
            ],
            "version": self.version,
        }


def load_rules(path: Path | None = None) -> RuleSet:
    """Read and check a rule file (the packaged ``rules.json`` by default).

    Raises:
        RuleSetError: when a rule names an unknown question, value, source, category or
            recommendation, or the file is not valid JSON.
    """
    path = path or RULES_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rule_set = RuleSet(
            version=str(data["version"]),
            date=str(data["date"]),
            sources={k: Source(id=k, **v) for k, v in data["sources"].items()},
            questions=tuple(
                Question(q["id"], q["section"], q["kind"], tuple(q["values"]))
                for q in data["questions"]
            ),
            recommendations=tuple(data["recommendations"]),
            categories=tuple(data["categories"]),
            rules=tuple(
                Rule(
                    id=r["id"],
                    category=r["category"],
                    recommendation=r["recommendation"],
                    when=r["when"],
                    sources=tuple(r["sources"]),
                    basis=r["basis"],
                )
                for r in data["rules"]
            ),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise RuleSetError(f"{path} is not a valid rule file ({exc!r}); fix its JSON.") from exc
    _check_rule_set(rule_set, path)
    return rule_set


@cache
def default_rules() -> RuleSet:
    """The packaged rule set, read once per process (it never changes while running)."""
    return load_rules()


def parse_answers(raw: object, rules: RuleSet) -> Answers:
    """Check answers sent by a client and return them normalised.

    ``raw`` is a JSON object: question id -> one allowed value (``choice``) or a list of
    allowed values (``multi``); ``null`` or an empty list counts as skipped. Error messages
    name question ids and allowed values only, never what was sent (answers are health data).

    Raises:
        InvalidAnswersError: for anything but a JSON object, a key that is not a question,
            or a value of the wrong type or outside the question's values.
    """
    if not isinstance(raw, dict):
        raise InvalidAnswersError(
            "answers must be a JSON object of question id -> answer; "
            f"the questions are {', '.join(q.id for q in rules.questions)}."
        )
    answers: Answers = {}
    for key, value in raw.items():
        question = rules.question(key) if isinstance(key, str) else None
        if question is None:
            raise InvalidAnswersError(
                "answers has a key that is not a question; the questions are "
                f"{', '.join(q.id for q in rules.questions)}."
            )
        if value is None or value == []:
            continue
        answers[key] = _check_value(question, value)
    return answers


def answers_json_schema(rules: RuleSet) -> dict[str, Any]:
    """The JSON Schema of the answers object ``parse_answers`` accepts (for the OpenAPI doc)."""
    properties: dict[str, Any] = {}
    for q in rules.questions:
        choice = {"type": "string", "enum": list(q.values)}
        if q.kind == "multi":
            properties[q.id] = {"type": ["array", "null"], "items": choice, "uniqueItems": True}
        else:
            properties[q.id] = {"type": ["string", "null"], "enum": [*q.values, None]}
        properties[q.id]["description"] = f"section {q.section}; skipped when absent or null"
    return {"type": "object", "properties": properties, "additionalProperties": False}


def answers_from_form(fields: Mapping[str, str], rules: RuleSet) -> dict[str, Any] | None:
    """Answers from the HTML form's fields, ``None`` when no question was answered.

    A ``choice`` question is the field ``q.<id>`` (a radio group); each value of a ``multi``
    question is its own checkbox ``q.<id>.<value>``. Unknown ``q.`` fields are passed on so
    ``parse_answers`` refuses them.
    """
    raw: dict[str, Any] = {}
    for name, value in fields.items():
        if not name.startswith("q."):
            continue
        key, _, option = name[2:].partition(".")
        question = rules.question(key)
        if question is not None and question.kind == "multi" and option:
            raw.setdefault(key, []).append(option)
        elif option:
            raw[name[2:]] = value  # an unknown question (or a choice with a suffix)
        else:
            raw[key] = value
    return raw or None


def advise(answers: Mapping[str, Any], rules: RuleSet, photo_band: str | None = None) -> Advice:
    """Run every rule on the answers (and the photo band); return the resulting advice.

    Args:
        answers: checked answers (``parse_answers``).
        rules: the rule set.
        photo_band: the combined photo result's band (``low``/``uncertain``/``high``), or
            ``None`` without an assessed photo.

    Returns:
        The most urgent recommendation among the fired rules, the most specific category
        among them, the fired rules and the rule-set version.
    """
    facts = _with_implied_rash(answers, rules)
    regular = [r for r in rules.rules if not r.when.get("otherwise")]
    fired = [r for r in regular if _holds(r.when, facts, photo_band)]
    if not fired:
        fired = [r for r in rules.rules if r.when.get("otherwise")]
    recommendation = max(
        (r.recommendation for r in fired), key=rules.recommendations.index, default="watch"
    )
    categories = [r.category for r in fired if r.category is not None]
    category = max(categories, key=rules.categories.index, default=None)
    return Advice(
        category=category, recommendation=recommendation, fired=tuple(fired), version=rules.version
    )


def _check_value(question: Question, value: object) -> str | tuple[str, ...]:
    allowed = ", ".join(f'"{v}"' for v in question.values)
    if question.kind == "choice":
        if not isinstance(value, str) or value not in question.values:
            raise InvalidAnswersError(f"answers.{question.id} must be one of {allowed}.")
        return value
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v in question.values for v in value
    ):
        raise InvalidAnswersError(
            f"answers.{question.id} must be a list of values among {allowed}."
        )
    return tuple(v for v in question.values if v in value)


def _with_implied_rash(answers: Mapping[str, Any], rules: RuleSet) -> Mapping[str, Any]:
    if RASH_QUESTION in answers:
        return answers
    details = [q.id for q in rules.questions if q.section == RASH_SECTION and q.id != RASH_QUESTION]
    if any(answers.get(q) for q in details):
        return {**answers, RASH_QUESTION: "yes"}
    return answers


def _holds(when: Mapping[str, Any], answers: Mapping[str, Any], photo_band: str | None) -> bool:
    if "all" in when:
        return all(_holds(c, answers, photo_band) for c in when["all"])
    if "any" in when:
        return any(_holds(c, answers, photo_band) for c in when["any"])
    if "not" in when:
        return not _holds(when["not"], answers, photo_band)
    if "photo_band" in when:
        return photo_band == when["photo_band"]
    given = answers.get(when["answer"])
    if "is" in when:
        return given == when["is"]
    return bool(set(given or ()) & set(when["includes_any"]))


def _check_rule_set(rules: RuleSet, path: Path) -> None:
    def fail(problem: str) -> None:
        raise RuleSetError(f"{path}: {problem}; fix the rule file.")

    ids = [r.id for r in rules.rules]
    if len(set(ids)) != len(ids):
        fail("two rules share an id")
    for rule in rules.rules:
        if rule.recommendation not in rules.recommendations:
            fail(f"rule {rule.id} has an unknown recommendation")
        if rule.category is not None and rule.category not in rules.categories:
            fail(f"rule {rule.id} has an unknown category")
        if not rule.sources or any(s not in rules.sources for s in rule.sources):
            fail(f"rule {rule.id} cites no source or an unknown one")
        problem = _condition_problem(rule.when, rules)
        if problem:
            fail(f"rule {rule.id}: {problem}")


def _condition_problem(when: object, rules: RuleSet) -> str | None:
    if not isinstance(when, dict):
        return "a condition is not an object"
    if "all" in when or "any" in when:
        parts = when.get("all", when.get("any"))
        if not isinstance(parts, list) or not parts:
            return "all/any needs a non-empty list"
        return next(filter(None, (_condition_problem(c, rules) for c in parts)), None)
    if "not" in when:
        return _condition_problem(when["not"], rules)
    if "photo_band" in when:
        return None if when["photo_band"] in PHOTO_BANDS else "unknown photo band"
    if when == {"otherwise": True}:
        return None
    question = rules.question(when.get("answer", ""))
    if question is None:
        return "a condition names an unknown question"
    if "is" in when and question.kind == "choice" and when["is"] in question.values:
        return None
    wanted = when.get("includes_any")
    if (
        question.kind == "multi"
        and isinstance(wanted, list)
        and set(wanted) <= set(question.values)
    ):
        return None
    return f"the condition on {question.id} is not is/includes_any with its own values"


def _subset(values: object, allowed: tuple[str, ...]) -> bool:
    return isinstance(values, list) and set(values) <= set(allowed)
