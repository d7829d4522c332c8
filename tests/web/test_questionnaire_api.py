"""The questionnaire through the API and the no-JS form: schema, advice with and without a
photo, clear 422s for bad answers, and no trace of the answers in the server's logs."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from web_support import lesion_jpeg, load_benchmark

from mpoxscan.questionnaire import advise, default_rules, parse_answers
from mpoxscan.web.questionnaire_answers import add_advice
from mpoxscan.web.schemas import CombinedResult, ModelInfo, PredictResponse

RULES = default_rules()
ANSWERS = {
    "contact_case": "no",
    "new_partners": "yes",
    "symptoms": ["swollen_lymph_nodes"],
    "rash": "yes",
    "sites": ["anogenital"],
    "rash_days": "under_week",
}


def text_parts(fields: dict[str, str]) -> list[tuple[str, tuple]]:
    """Multipart text parts (no file name), as a browser's form sends them."""
    return [(name, (None, value)) for name, value in fields.items()]


def answers_part(answers: object) -> list[tuple[str, tuple]]:
    """The ``answers`` part: a JSON text part."""
    text = answers if isinstance(answers, str) else json.dumps(answers)
    return [("answers", (None, text, "application/json"))]


def assert_invalid_answers(response) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "invalid_answers"
    return body["error"]["message"]


def test_openapi_documents_the_answers_part_and_the_advice(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]
    assert "required" not in form["schema"]  # a photo or answers, or both
    answers = form["schema"]["properties"]["answers"]
    assert answers["additionalProperties"] is False
    assert set(answers["properties"]) == {q.id for q in RULES.questions}
    assert answers["properties"]["rash"]["enum"] == ["yes", "no", None]
    assert answers["properties"]["sites"]["items"]["enum"] == list(RULES.question("sites").values)
    assert form["encoding"]["answers"]["contentType"] == "application/json"
    schemas = spec["components"]["schemas"]
    assert "questionnaire" in schemas["PredictResponse"]["properties"]
    assert set(schemas["QuestionnaireResult"]["required"]) == {
        "category",
        "recommendation",
        "rules",
        "version",
    }


def test_answers_without_a_photo_get_advice_from_the_answers_alone(client):
    response = client.post("/api/v1/predict", files=answers_part(ANSWERS))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == []
    assert body["combined"]["status"] == "no_photo"
    assert body["combined"]["probability"] is None
    advice = body["questionnaire"]
    assert advice["category"] == "suspected_case"
    assert advice["recommendation"] == "get_tested"
    assert advice["version"] == RULES.version
    fired = [rule["id"] for rule in advice["rules"]]
    assert fired == [
        "rash-and-new-partners",
        "anogenital-or-mouth-lesions",
        "unexplained-rash",
        "swollen-lymph-nodes",
    ]
    assert all(rule["sources"] for rule in advice["rules"])


def test_answers_with_a_photo_combine_with_its_band(client):
    answers = {"contact_case": "yes", "rash": "no"}
    response = client.post(
        "/api/v1/predict",
        files=[*answers_part(answers), ("file", ("photo.jpg", lesion_jpeg(seed=3), "image/jpeg"))],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["status"] == "ok"
    band = body["combined"]["band"]
    expected = advise(parse_answers(answers, RULES), RULES, photo_band=band)
    assert body["questionnaire"]["recommendation"] == expected.recommendation
    assert body["questionnaire"]["category"] == "contact"
    assert [r["id"] for r in body["questionnaire"]["rules"]] == [r.id for r in expected.fired]


def test_a_photo_without_answers_has_no_questionnaire(client):
    files = [("file", ("photo.jpg", lesion_jpeg(seed=4), "image/jpeg"))]
    body = client.post("/api/v1/predict", files=files).json()
    assert body["questionnaire"] is None
    assert body["combined"]["status"] == "ok"


def _response_with_band(band: str | None) -> PredictResponse:
    info = ModelInfo(
        version="x",
        architecture="x",
        classes=["a", "b"],
        positive_class="b",
        threshold=0.5,
        backend="onnx",
        intended_use="x",
    )
    status = "ok" if band else "retake"
    combined = CombinedResult(status=status, band=band, photos=1, assessed=int(bool(band)))
    return PredictResponse(model=info, results=[], combined=combined)


@pytest.mark.parametrize(
    ("band", "recommendation"),
    [(None, "watch"), ("low", "watch"), ("uncertain", "see_doctor"), ("high", "get_tested")],
)
def test_the_combined_band_raises_the_advice_and_never_lowers_it(band, recommendation):
    for answers, alone in (
        ({"travel": "yes"}, "watch"),
        ({"rash": "yes", "travel": "yes"}, "get_tested"),
    ):
        response = _response_with_band(band)
        add_advice(response, parse_answers(answers, RULES))
        rank = RULES.recommendations.index
        got = response.questionnaire.recommendation
        assert rank(got) == max(rank(alone), rank(recommendation))


@pytest.mark.parametrize(
    "answers",
    [
        {"rash": "yes", "favourite_colour": "blue"},  # an unknown key
        {"rash": True},  # a wrong type
        {"rash": "sometimes"},  # a value the question does not allow
        {"sites": "face"},  # a string where a list belongs
        {"symptoms": [1, 2]},
        ["rash", "yes"],  # not an object
        '{"rash": "yes"',  # not JSON
    ],
)
def test_bad_answers_get_a_clear_422(client, answers):
    message = assert_invalid_answers(client.post("/api/v1/predict", files=answers_part(answers)))
    assert "answers" in message
    for sent in ("favourite_colour", "blue", "sometimes"):
        assert sent not in message  # what was sent is never echoed


def test_answers_too_long_or_sent_as_a_file_are_refused_not_ignored(client):
    long_text = json.dumps({"rash": "yes", "padding": "x" * 2000})
    assert_invalid_answers(client.post("/api/v1/predict", files=[("answers", (None, long_text))]))
    as_file = [("answers", ("answers.json", json.dumps({"rash": "yes"}), "application/json"))]
    message = assert_invalid_answers(client.post("/api/v1/predict", files=as_file))
    assert "text part" in message


def test_bad_answers_are_refused_before_any_photo_is_analysed(client):
    files = [("file", ("photo.jpg", b"not even a photo", "image/jpeg"))]
    response = client.post("/api/v1/predict", files=[*answers_part({"rash": 1}), *files])
    assert_invalid_answers(response)


def test_no_photo_and_no_answers_is_still_no_file(client):
    response = client.post("/api/v1/predict", files=text_parts({"explain": "on"}))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_file"


def test_the_no_js_form_sends_one_field_per_question(client):
    data = {"q.rash": "yes", "q.sites.mouth": "on", "q.symptoms.fever": "on"}
    page = client.post("/result?lang=en", files=text_parts(data))
    assert page.status_code == 200
    assert 'data-recommendation="get_tested"' in page.text
    assert 'data-rule="anogenital-or-mouth-lesions"' in page.text
    bad = client.post("/result?lang=en", files=text_parts({"q.rash": "perhaps"}))
    assert bad.status_code == 422
    assert "text/html" in bad.headers["content-type"]


# --- privacy: nothing of the answers in the logs ---------------------------------------------

SECRET_KEY = "JaneDoe4471Key"
SECRET_JSON = "PatientNote4471"
TELLING = ("new_partners", "anogenital", "swollen_lymph_nodes", "rash-and-new-partners")
TELLING_ADVICE = ("suspected_case", "get_tested", "anogenital-or-mouth-lesions")


@pytest.fixture(scope="module")
def answer_logs(web_bundle) -> str:
    """Everything a debug-level ``mpoxscan serve`` wrote while it answered questionnaires."""
    load_test = load_benchmark("load_test")
    server = load_test.ServerProcess(
        web_bundle, env={"MPOXSCAN_RATE_LIMIT_PER_MINUTE": "0"}, log_level="debug"
    )
    photo = [("file", ("photo.jpg", lesion_jpeg(seed=5), "image/jpeg"))]
    with server:
        url = f"{server.url}/api/v1/predict"
        responses = [
            httpx.post(url, files=answers_part(ANSWERS), timeout=60),
            httpx.post(url, files=[*answers_part(ANSWERS), *photo], timeout=60),
            httpx.post(url, files=answers_part({SECRET_KEY: "yes"}), timeout=60),
            httpx.post(url, files=answers_part('{"rash": "' + SECRET_JSON), timeout=60),
            httpx.post(
                f"{server.url}/result?lang=en",
                files=text_parts({"q.new_partners": "yes", "q.sites.anogenital": "on"}),
                timeout=60,
            ),
        ]
        assert [r.status_code for r in responses] == [200, 200, 422, 422, 200]
        assert responses[0].json()["questionnaire"]["recommendation"] == "get_tested"
        assert server.stop() in (0, -signal.SIGTERM)
        logs = server.logs()
    assert "/api/v1/predict" in logs  # the debug-level server did log the requests
    return logs


@pytest.mark.slow  # starts a real server (about 40 s on a busy 2-core machine)
def test_logs_hold_nothing_of_the_answers_or_the_advice(answer_logs):
    for secret in (SECRET_KEY, SECRET_JSON, *TELLING, *TELLING_ADVICE, '"answers"', "q.sites"):
        assert secret not in answer_logs
