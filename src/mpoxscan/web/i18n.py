"""Translations: one JSON catalogue per language, used by the templates and served to the JS."""

from __future__ import annotations

import json
from pathlib import Path

#: Languages offered, in the order the switch shows them; the first is the default.
LANGUAGES: tuple[str, ...] = ("en", "zh-CN")
DEFAULT_LANGUAGE = LANGUAGES[0]
#: The language names as their speakers write them (shown on the switch).
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "zh-CN": "中文"}
LANG_COOKIE = "mpoxscan_lang"
LOCALES_DIR = Path(__file__).parent / "locales"

Catalogue = dict[str, str]


def load_catalogues(locales_dir: Path = LOCALES_DIR) -> dict[str, Catalogue]:
    """Read ``<lang>.json`` for every language in ``LANGUAGES``, with its parts
    ``<lang>.<part>.json`` (e.g. ``en.questionnaire.json``) merged in.

    Raises:
        ValueError: when a catalogue lacks a key the default language has (a string would show
            untranslated).
    """
    catalogues = {lang: _read_catalogue(locales_dir, lang) for lang in LANGUAGES}
    reference = set(catalogues[DEFAULT_LANGUAGE])
    for lang, catalogue in catalogues.items():
        missing = reference - set(catalogue)
        if missing:
            raise ValueError(f"locales/{lang}.json lacks {sorted(missing)}; translate them.")
    return catalogues


def _read_catalogue(locales_dir: Path, lang: str) -> Catalogue:
    catalogue: Catalogue = json.loads((locales_dir / f"{lang}.json").read_text(encoding="utf-8"))
    for part in sorted(locales_dir.glob(f"{lang}.*.json")):
        texts = json.loads(part.read_text(encoding="utf-8"))
        clash = set(texts) & set(catalogue)
        if clash:
            raise ValueError(f"locales/{part.name} repeats {sorted(clash)}; keep each key once.")
        catalogue.update(texts)
    return catalogue


def normalise_language(tag: str | None) -> str | None:
    """Map a language tag to an offered language (``zh``, ``zh-Hans``, ``zh_CN`` -> ``zh-CN``).

    Every Chinese tag maps to Simplified Chinese, the only Chinese catalogue; ``None`` when
    the tag names no offered language.
    """
    if not tag:
        return None
    primary = tag.strip().replace("_", "-").split("-")[0].lower()
    if primary == "zh":
        return "zh-CN"
    if primary == "en":
        return "en"
    return None


def parse_accept_language(header: str | None) -> str | None:
    """Return the offered language the ``Accept-Language`` header prefers most, if any."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        lang = normalise_language(tag)
        if lang is not None and quality > 0:
            ranked.append((-quality, position, lang))
    return min(ranked)[2] if ranked else None


def choose_language(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """Pick the page language: ``?lang=`` first, then the cookie, then ``Accept-Language``."""
    return (
        normalise_language(query)
        or normalise_language(cookie)
        or parse_accept_language(accept_language)
        or DEFAULT_LANGUAGE
    )


def translate(catalogue: Catalogue, key: str, **params: object) -> str:
    """Look ``key`` up and fill ``{name}`` placeholders; a missing key shows as itself."""
    text = catalogue.get(key, key)
    return text.format(**params) if params else text
