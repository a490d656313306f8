"""A matcher's `url` test answers from the URLs it has seen (`Matcher.known_urls`) exactly as the
glob over the URL's path does, and the cache stays bounded whatever URLs arrive."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.config.glob import Glob
from streams.core.config.matching import MAX_KNOWN_URLS, Matcher
from streams.core.config.model import Match
from streams.core.input.event import url_path
from streams.core.journeys.journey import _rest
from tests.helpers import click

URLS = st.sampled_from(
    [
        "https://shop.example/pricing",
        "https://shop.example/pricing/team?utm_source=x",
        "https://shop.example/p/7",
        "https://shop.example/",
        "http://[::1",  # no path: urlsplit refuses it
        "",
    ]
)


@given(urls=st.lists(st.one_of(URLS, st.none()), min_size=1, max_size=30))
def test_a_url_test_answers_as_the_glob_over_its_path_on_every_repeat(urls: list[str | None]) -> None:
    matcher = Matcher.compile(Match.model_validate({"url": "/pricing*"}))
    for url in urls:
        page = {"url": url} if url is not None else None
        event = click("page_view", "10:00", page=page)
        path = url_path(url)
        assert matcher.matches(event) == (path is not None and Glob("/pricing*").matches(path))
    assert set(matcher.known_urls) <= set(urls)


def test_the_urls_a_matcher_keeps_are_bounded() -> None:
    matcher = Matcher.compile(Match.model_validate({"url": "/p/*"}))
    for n in range(MAX_KNOWN_URLS + 10):
        assert matcher.matches(click("page_view", "10:00", page={"url": f"https://shop.example/p/{n}"}))
    assert 0 < len(matcher.known_urls) <= MAX_KNOWN_URLS
    assert not matcher.matches(click("page_view", "10:00", page={"url": "https://shop.example/q/1"}))


def test_an_event_names_plan_shares_its_matchers_url_answers() -> None:
    """Each event name gets a plan whose matchers are copies; their URL answers stay one cache
    per configured matcher, however many names producers send."""
    matcher = Matcher.compile(Match.model_validate({"url": "/pricing*"}))
    copies = [_rest(matcher) for _ in range(3)]
    assert all(c is not None and c.known_urls is matcher.known_urls for c in copies)
