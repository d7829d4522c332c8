"""The questionnaire beside the photo: questions and versioned rules from public-health guidance
(WHO, CDC, UKHSA; see docs/questionnaire.md), and the engine that turns answers into advice."""

from mpoxscan.questionnaire.engine import (
    RULES_PATH,
    Advice,
    Answers,
    Question,
    Rule,
    RuleSet,
    Source,
    advise,
    answers_from_form,
    answers_json_schema,
    default_rules,
    load_rules,
    parse_answers,
)

__all__ = [
    "RULES_PATH",
    "Advice",
    "Answers",
    "Question",
    "Rule",
    "RuleSet",
    "Source",
    "advise",
    "answers_from_form",
    "answers_json_schema",
    "default_rules",
    "load_rules",
    "parse_answers",
]
