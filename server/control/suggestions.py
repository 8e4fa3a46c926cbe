"""Prompt help from `configs/suggestions.toml`: autocomplete, categories, random picks and enhance.

Everything is read once at start-up; lookups are plain Python over a hundred or so fragments.
"""

from __future__ import annotations

import random
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.config import CONFIGS
from server.fields import MAX_PROMPT, MAX_SEED

SUGGESTIONS_FILE = CONFIGS / "suggestions.toml"
MAX_FRAGMENT = 100
SEPARATOR = ", "


class UnknownCategoryError(LookupError):
    """No suggestion category with that name."""


class EnhanceRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: list[str]
    style: str
    style_words: list[str]
    lighting: str
    lighting_words: list[str]


class SuggestionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: dict[str, list[str]] = Field(min_length=1)
    enhance: EnhanceRules


@dataclass(frozen=True)
class Suggestion:
    text: str
    category: str


MatchType = Literal["prefix", "word", "substring"]
MATCH_ORDER: tuple[MatchType, ...] = ("prefix", "word", "substring")
# The categories a random prompt is composed from, by the component name it is given.
COMPONENTS = {"subject": "subjects", "style": "styles", "lighting": "lighting", "quality": "quality"}


@dataclass(frozen=True)
class Match:
    text: str
    category: str
    match_type: MatchType


@dataclass(frozen=True)
class ComposedPrompt:
    prompt: str
    components: dict[str, str]  # subject, style, lighting, quality


def _words_pattern(phrase: str) -> re.Pattern[str]:
    """`phrase` as whole words anywhere in a lower-cased text."""
    return re.compile(r"(?<![a-z0-9])" + re.escape(phrase.lower()) + r"(?![a-z0-9])")


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


class PromptSuggestions:
    def __init__(self, categories: dict[str, list[str]], rules: EnhanceRules) -> None:
        self._categories = {name: list(texts) for name, texts in categories.items()}
        seen: set[str] = set()
        self._all: list[Suggestion] = []  # file order, each text once
        for name, texts in categories.items():
            for text in texts:
                if text.lower() not in seen:
                    seen.add(text.lower())
                    self._all.append(Suggestion(text, name))
        self._lowered = [s.text.lower() for s in self._all]
        self._rules = rules
        self._style_markers = [_words_pattern(p) for p in [*rules.style_words, *categories.get("styles", [])]]
        self._lighting_markers = [_words_pattern(p) for p in [*rules.lighting_words, *categories.get("lighting", [])]]

    @classmethod
    def load(cls, path: Path = SUGGESTIONS_FILE) -> PromptSuggestions:
        """Read and validate the suggestions file (blocking: call it off the event loop)."""
        with path.open("rb") as f:
            data = SuggestionsFile.model_validate(tomllib.load(f))
        for name, texts in data.categories.items():
            too_long = [text for text in texts if not 0 < len(text) <= MAX_FRAGMENT]
            if too_long:
                raise ValueError(f"{path}: category {name!r} has fragments of bad length: {too_long}")
        missing = [name for name in COMPONENTS.values() if not data.categories.get(name)]
        if missing:
            raise ValueError(f"{path}: random prompts need the categories {missing}")
        return cls(data.categories, data.enhance)

    def categories(self) -> dict[str, int]:
        """Category names in file order, with how many fragments each has."""
        return {name: len(texts) for name, texts in self._categories.items()}

    def by_category(self, name: str) -> list[str]:
        try:
            return list(self._categories[name])
        except KeyError:
            raise UnknownCategoryError(f"no suggestion category {name!r}") from None

    def autocomplete(self, query: str, limit: int) -> list[Match]:
        """Fragments starting with `query`, then with a word starting with it, then holding it; each group A-Z."""
        needle = _normalize(query)
        if not needle:
            return []
        word_start = re.compile(r"(?<![a-z0-9])" + re.escape(needle))
        ranked: list[tuple[int, str, Suggestion]] = []
        for suggestion, lowered in zip(self._all, self._lowered, strict=True):
            if lowered.startswith(needle):
                ranked.append((0, lowered, suggestion))
            elif word_start.search(lowered):
                ranked.append((1, lowered, suggestion))
            elif needle in lowered:
                ranked.append((2, lowered, suggestion))
        ranked.sort(key=lambda item: (item[0], item[1]))
        return [Match(s.text, s.category, MATCH_ORDER[rank]) for rank, _, s in ranked[:limit]]

    def random(self, count: int, seed: int | None = None) -> tuple[int, list[ComposedPrompt]]:
        """`count` distinct prompts, each a subject, style, lighting and quality fragment; the same seed
        gives the same prompts. Returns the seed used."""
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        rng = random.Random(seed)
        pools = {component: self._categories[category] for component, category in COMPONENTS.items()}
        possible = 1
        for pool in pools.values():
            possible *= len(pool)
        picks: dict[str, ComposedPrompt] = {}
        while len(picks) < min(count, possible):
            components = {component: rng.choice(pool) for component, pool in pools.items()}
            prompt = SEPARATOR.join(components.values())[:MAX_PROMPT]
            picks.setdefault(prompt, ComposedPrompt(prompt, components))
        return seed, list(picks.values())

    def enhance(self, prompt: str, *, quality: bool = True, style: bool = True) -> tuple[str, list[str]]:
        """Append the quality terms (`quality`), a style and a lighting (`style`) the prompt lacks, within
        MAX_PROMPT.

        Returns the new prompt and the terms added.
        """
        lowered = prompt.lower()
        wanted = [term for term in self._rules.quality if quality and not _words_pattern(term).search(lowered)]
        if style and not any(marker.search(lowered) for marker in self._style_markers):
            wanted.append(self._rules.style)
        if style and not any(marker.search(lowered) for marker in self._lighting_markers):
            wanted.append(self._rules.lighting)
        result = prompt.strip().rstrip(",").rstrip()
        added: list[str] = []
        for term in wanted:
            candidate = f"{result}{SEPARATOR}{term}" if result else term
            if len(candidate) <= MAX_PROMPT:
                result = candidate
                added.append(term)
        return result, added
