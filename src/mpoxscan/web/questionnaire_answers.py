"""The questionnaire in the web app: answers from a request, and the advice in the response.

The API takes the answers as one JSON text part named ``answers``; the no-JavaScript form sends
one field per question (``q.<id>``, ``q.<id>.<value>`` for a tick box). Answers are health data:
they live in memory for the one request and are never logged, stored or echoed in errors.
"""

from __future__ import annotations

import json

from mpoxscan.errors import InvalidAnswersError
from mpoxscan.inference.predictor import Predictor
from mpoxscan.questionnaire import Answers, advise, answers_from_form, default_rules, parse_answers
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.schemas import CombinedResult, FiredRule, PredictResponse, QuestionnaireResult
from mpoxscan.web.service import Analysis, model_info
from mpoxscan.web.uploads import UploadForm

#: The multipart text part that carries the answers as a JSON object.
ANSWERS_FIELD = "answers"


def has_answers(form: UploadForm) -> bool:
    """Whether a form carries questionnaire answers (JSON part or form fields), kept or not."""
    names = set(form.fields) | form.dropped
    return ANSWERS_FIELD in names or any(name.startswith("q.") for name in names)


def read_answers(form: UploadForm) -> Answers | None:
    """The checked answers of a request, or ``None`` when it has none.

    Raises:
        ApiError: ``invalid_answers`` (422) when the JSON does not parse, an answer is not one
            the questions allow, or the answers part was too long or sent as a file (rather
            than being ignored); the message never repeats what was sent.
    """
    rules = default_rules()
    fields = form.fields
    try:
        if ANSWERS_FIELD in form.dropped or any(n.startswith("q.") for n in form.dropped):
            raise InvalidAnswersError(
                f'The "{ANSWERS_FIELD}" part could not be read: send it as a text part (no '
                "file name) of at most 1 KiB, holding a JSON object of question id -> answer."
            )
        if ANSWERS_FIELD in fields:
            try:
                raw = json.loads(fields[ANSWERS_FIELD])
            except ValueError as exc:
                raise InvalidAnswersError(
                    f'The "{ANSWERS_FIELD}" part is not valid JSON; send a JSON object of '
                    "question id -> answer."
                ) from exc
        else:
            raw = answers_from_form(fields, rules)
            if raw is None:
                return None
        return parse_answers(raw, rules)
    except InvalidAnswersError as exc:
        raise ApiError(exc.code, exc.message) from None


def add_advice(response: PredictResponse, answers: Answers | None) -> None:
    """Set ``response.questionnaire`` from the answers and the combined photo band."""
    if answers is None:
        return
    band = response.combined.band if response.combined.status == "ok" else None
    advice = advise(answers, default_rules(), photo_band=band)
    response.questionnaire = QuestionnaireResult(
        category=advice.category,
        recommendation=advice.recommendation,
        rules=[
            FiredRule(
                id=r.id, category=r.category, recommendation=r.recommendation, sources=r.sources
            )
            for r in advice.fired
        ],
        version=advice.version,
    )


def answers_only(predictor: Predictor) -> Analysis:
    """The analysis of a request with answers and no photo: no photo results."""
    response = PredictResponse(
        model=model_info(predictor),
        results=[],
        combined=CombinedResult(status="no_photo", photos=0, assessed=0),
    )
    return Analysis(response=response, photos=[])
