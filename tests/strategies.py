"""Hypothesis strategies the property tests of both backends share."""

from __future__ import annotations

import json

from hypothesis import strategies as st

Call = tuple[str, str]  # (tool name, arguments as the model sent them)


def good_or_bad_call() -> st.SearchStrategy[Call]:
    """A call of the property tests' tools (``echo``, ``add``, ``explode``, ``slow``): good
    ones twice as often as bad ones (unknown tools, arguments that are not JSON, do not match
    the schema, or miss a required key; tools that raise or time out)."""
    word = st.text(alphabet="abcxyz", min_size=1, max_size=6)
    small = st.integers(min_value=-3, max_value=3)
    good = st.one_of(
        st.builds(lambda t: ("echo", json.dumps({"text": t})), word),
        st.builds(lambda a, b: ("add", json.dumps({"a": a, "b": b})), small, small),
    )
    bad = st.one_of(
        st.just(("explode", "{}")),
        st.just(("slow", "{}")),
        st.sampled_from(["no_such_tool", "get_weather"]).map(lambda n: (n, "{}")),
        st.sampled_from(["echo", "add"]).map(lambda n: (n, '{"text": "ab')),  # not JSON
        st.just(("add", json.dumps({"a": "one", "b": 2}))),  # does not match the schema
        st.just(("echo", json.dumps({"txt": "x"}))),  # missing a required key
    )
    # sampled_from weighs the repeated branch twice (one_of would merge it).
    return st.sampled_from([good, good, bad]).flatmap(lambda calls: calls)


#: A round's calls: one to four.
calls_st = st.lists(good_or_bad_call(), min_size=1, max_size=4).map(tuple)
